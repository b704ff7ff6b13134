package lab

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRemoveRecordedMountpoints: recorded mountpoints are removed newest first if still
// empty; anything with content stays; the registry goes.
func TestRemoveRecordedMountpoints(t *testing.T) {
	dir := t.TempDir()
	old := MountpointRegistry
	MountpointRegistry = filepath.Join(dir, "reg", "mountpoints")
	t.Cleanup(func() { MountpointRegistry = old })

	emptyParent := filepath.Join(dir, "var-lib")
	emptyChild := filepath.Join(emptyParent, "kube-proxy")
	busy := filepath.Join(dir, "etc-coredns")
	emptyFile := filepath.Join(dir, "empty-file")
	fullFile := filepath.Join(dir, "full-file")
	for _, d := range []string{emptyChild, busy} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(busy, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fullFile, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RecordMountpoints([]string{emptyParent, emptyChild}); err != nil {
		t.Fatal(err)
	}
	if err := RecordMountpoints([]string{busy, emptyFile, fullFile, "relative/ignored"}); err != nil {
		t.Fatal(err)
	}
	removeRecordedMountpoints()
	tests := []struct {
		path string
		gone bool
	}{
		{emptyChild, true}, {emptyParent, true}, {busy, false}, {emptyFile, true}, {fullFile, false},
		{MountpointRegistry, true}, {filepath.Dir(MountpointRegistry), true},
	}
	for _, tt := range tests {
		_, err := os.Stat(tt.path)
		if gone := os.IsNotExist(err); gone != tt.gone {
			t.Errorf("%s: gone=%v, want %v", tt.path, gone, tt.gone)
		}
	}
}
