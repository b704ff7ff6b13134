package cri

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cri/critest"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestParseVerboseInfo(t *testing.T) {
	var crio map[string]string
	b, err := os.ReadFile("testdata/crio-info.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &crio); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		info map[string]string
		want VerboseInfo
	}{
		{"containerd", map[string]string{"info": critest.ContainerdInfo(critest.Pod{ID: "a", PID: 77, NetnsPath: "/var/run/netns/cni-1"})},
			VerboseInfo{PID: 77, NetnsPath: "/var/run/netns/cni-1"}},
		{"containerd pid only", map[string]string{"info": critest.ContainerdInfo(critest.Pod{ID: "a", PID: 77})}, VerboseInfo{PID: 77}},
		{"crio", crio, VerboseInfo{PID: 4242, NetnsPath: "/var/run/netns/7d1c9a0e-5b3f-4a8e-9c2d-1f0e6b7a8c9d"}},
		{"no info", map[string]string{}, VerboseInfo{}},
		{"malformed", map[string]string{"info": "{not json"}, VerboseInfo{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseVerboseInfo(tt.info); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseVerboseInfo(f *testing.F) {
	f.Add(critest.ContainerdInfo(critest.Pod{ID: "x", PID: 1, NetnsPath: "/x"}))
	f.Add(`{"pid":"nope","runtimeSpec":{"linux":{"namespaces":null}}}`)
	f.Fuzz(func(_ *testing.T, s string) {
		_ = ParseVerboseInfo(map[string]string{"info": s})
	})
}

func TestSplitPodRef(t *testing.T) {
	tests := []struct{ in, ns, name string }{
		{"kube-system/coredns-1", "kube-system", "coredns-1"},
		{"web", "default", "web"},
		{"/web", "", ""}, {"ns/", "", ""}, {"a/b/c", "", ""},
	}
	for _, tt := range tests {
		ns, n, err := SplitPodRef(tt.in)
		if ns != tt.ns || n != tt.name || (err != nil) != (tt.ns == "") {
			t.Errorf("SplitPodRef(%q) = %q %q %v", tt.in, ns, n, err)
		}
	}
}

func TestFindPIDByPodUID(t *testing.T) {
	root := t.TempDir()
	write := func(pid, content string) {
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1", "0::/init.scope\n")
	write("300", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_0000_1111_2222_333344445555.slice/cri-containerd-abc.scope\n")
	write("400", "12:memory:/kubepods/burstable/pod9f8e7d6c-0000-1111-2222-333344445555/def\n")
	tests := []struct {
		uid  string
		want int
	}{
		{"1a2b3c4d-0000-1111-2222-333344445555", 300},
		{"9f8e7d6c-0000-1111-2222-333344445555", 400},
		{"00000000-0000-0000-0000-000000000000", 0},
	}
	for _, tt := range tests {
		got, err := FindPIDByPodUID(root, tt.uid)
		if got != tt.want || (err != nil) != (tt.want == 0) {
			t.Errorf("FindPIDByPodUID(%s) = %d, %v; want %d", tt.uid, got, err, tt.want)
		}
	}
}

func TestFindPodThroughCRI(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "cri")
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	self := os.Getpid()
	procRoot := t.TempDir()
	// A fake /proc for the cgroup fallback: pid 1 of it is this process, whose ns/net is real.
	if err := os.MkdirAll(filepath.Join(procRoot, strconv.Itoa(self), "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/proc/self/ns/net", filepath.Join(procRoot, strconv.Itoa(self), "ns", "net")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(procRoot, strconv.Itoa(self), "cgroup"),
		[]byte("0::/kubepods/besteffort/podcafe0000-0000-0000-0000-000000000003/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	critest.Start(t, sock, []critest.Pod{
		{ID: "sb1", Namespace: "default", Name: "web", UID: "cafe0000-0000-0000-0000-000000000001", IP: "198.18.20.5", PID: self, NetnsPath: testutil.Path(ns)},
		{ID: "sb2", Namespace: "default", Name: "pidonly", UID: "cafe0000-0000-0000-0000-000000000002", PID: self},
		{ID: "sb3", Namespace: "kube-system", Name: "noinfo", UID: "cafe0000-0000-0000-0000-000000000003"},
		{ID: "sb4", Namespace: "default", Name: "gone", UID: "cafe0000-0000-0000-0000-000000000004", NotReady: true},
		{ID: "sb5", Namespace: "kube-system", Name: "kube-proxy-x", UID: "cafe0000-0000-0000-0000-000000000005", PID: self, HostNetwork: true},
	})
	ctx := context.Background()
	c, err := Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	c.ProcRoot = procRoot
	tests := []struct {
		ns, name   string
		wantNetns  string
		wantSource string
		wantErr    error
	}{
		{"default", "web", testutil.Path(ns), "runtimeSpec", nil},
		{"default", "pidonly", filepath.Join(procRoot, strconv.Itoa(self), "ns", "net"), "pid", nil},
		{"kube-system", "noinfo", filepath.Join(procRoot, strconv.Itoa(self), "ns", "net"), "proc-cgroup", nil},
		{"kube-system", "kube-proxy-x", filepath.Join(procRoot, strconv.Itoa(self), "ns", "net"), "hostNetwork", nil},
		{"default", "gone", "", "", ErrPodNotFound},
		{"default", "missing", "", "", ErrPodNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := c.FindPod(ctx, tt.ns, tt.name)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Netns != tt.wantNetns || p.Source != tt.wantSource {
				t.Errorf("got netns %q via %s, want %q via %s", p.Netns, p.Source, tt.wantNetns, tt.wantSource)
			}
		})
	}
	if _, err := DialAny(ctx, filepath.Join(t.TempDir(), "nothing.sock")); err == nil {
		t.Error("dial of a missing socket succeeded")
	}
}
