package agent

import (
	"os/exec"
	"testing"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

// Two namespaces hold the same pod IP; only the one whose veth peer is in
// the node's namespace is the node's pod.
func TestFindNetnsByAddrPicksTheAttachedOne(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetns(t, "cd-node")
	pod := testutil.NewNetns(t, "cd-pod")
	decoy := testutil.NewNetns(t, "cd-decoy")
	other := testutil.NewNetns(t, "cd-othr")
	testutil.MustRun(t, node, "ip", "link", "add", "cdv0", "type", "veth", "peer", "name", "eth0", "netns", pod)
	testutil.MustRun(t, pod, "ip", "addr", "add", "198.18.201.5/24", "dev", "eth0")
	testutil.MustRun(t, other, "ip", "link", "add", "cdv0", "type", "veth", "peer", "name", "eth0", "netns", decoy)
	testutil.MustRun(t, decoy, "ip", "addr", "add", "198.18.201.5/24", "dev", "eth0")
	// /proc finds namespaces through their processes.
	var procs []*exec.Cmd
	for _, ns := range []string{decoy, pod} {
		c := exec.Command("ip", "netns", "exec", ns, "sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
	}
	t.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	want := new(statIno)
	if !want.of(testutil.Path(pod)) {
		t.Fatal("stat pod netns")
	}
	var p string
	var err error
	for i := 0; i < 50; i++ { // the sleeps need a moment to enter their namespaces
		p, err = FindNetnsByAddr("/proc", "198.18.201.5", testutil.Path(node))
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	got := new(statIno)
	if !got.of(p) || got.ino != want.ino {
		t.Errorf("found %s (inode %d), want the pod's namespace (inode %d)", p, got.ino, want.ino)
	}
	if _, err := FindNetnsByAddr("/proc", "198.18.201.5", testutil.Path(other)); err != nil {
		t.Logf("from the other node: %v", err)
	}
}
