package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Run(append([]string{"netdoctor"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestNodeCollectBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"netns and pid", []string{"node", "collect", "--netns", "x", "--pid", "1"}, "choose one"},
		{"negative pid", []string{"node", "collect", "--pid", "-3"}, "positive"},
		{"zero pid", []string{"node", "collect", "--pid", "0"}, "positive"},
		{"unknown netns", []string{"node", "collect", "--netns", "ndt-no-such-netns"}, `"ndt-no-such-netns" not found`},
		{"unknown pid", []string{"node", "collect", "--pid", "999999999"}, `"pid:999999999" not found`},
		{"pid not a number", []string{"node", "collect", "--pid", "abc"}, "invalid argument"},
		{"unknown section", []string{"node", "collect", "--sections", "links,bogus"}, `unknown section "bogus"`},
		{"extra argument", []string{"node", "collect", "extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCLI(tt.args...)
			if code != ExitError {
				t.Errorf("exit code %d, want %d", code, ExitError)
			}
			if !strings.Contains(errs, tt.want) || out != "" {
				t.Errorf("stderr %q (want %q), stdout %q", errs, tt.want, out)
			}
		})
	}
}

func TestNodeCollectWritesSnapshot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "snap.json")
	code, out, errs := runCLI("node", "collect", "--sections", "kernel,softnet", "-f", file)
	if code != ExitOK || out != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var s facts.NodeSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Version != facts.NodeSnapshotVersion || s.Kernel == "" || len(s.Softnet) == 0 {
		t.Errorf("snapshot: %+v", s)
	}
}

func TestNodeCollectNetnsAndPID(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "clinode")
	testutil.MustRun(t, ns, "ip", "link", "add", "cx0", "type", "veth", "peer", "name", "cx1")
	code, out, errs := runCLI("node", "collect", "--netns", ns, "--sections", "links")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var s facts.NodeSnapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Netns != ns || len(s.Links) != 3 { // lo cx0 cx1
		t.Errorf("netns %q, links %+v", s.Netns, s.Links)
	}
	// By PID: this test process's own namespace.
	code, out, errs = runCLI("node", "collect", "--pid", strconv.Itoa(os.Getpid()), "--sections", "kernel")
	if code != ExitOK || !strings.Contains(out, `"netns": "pid:`) {
		t.Errorf("--pid: exit %d, stderr %s, stdout %s", code, errs, out)
	}
}
