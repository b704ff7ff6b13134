package agent

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/cri/critest"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// The pod namespace to probe from comes from the CRI first (containerd's
// verbose sandbox info), before any /proc scan.
func TestFindPodNetnsThroughCRI(t *testing.T) {
	ns := testutil.NewNetns(t, "cd-cri") // the runtime names an existing namespace
	sock := filepath.Join(t.TempDir(), "cri.sock")
	critest.Start(t, sock, []critest.Pod{
		{ID: "sb1", Namespace: "netdoctor", Name: "netdoctor-target-abc", UID: "u1", IP: "198.18.64.7", PID: 4242, NetnsPath: testutil.Path(ns)},
		{ID: "sb2", Namespace: "default", Name: "web", UID: "u2", IP: "198.18.64.8", PID: 4243, NetnsPath: "/var/run/netns/cni-5678"},
	})
	a := &Agent{Node: "node1", CRIEndpoint: "unix://" + sock}
	got, err := a.findPodNetns(context.Background(), cluster.NodeTarget{Node: "node1", Pod: "netdoctor/netdoctor-target-abc", PodIP: "198.18.64.7"})
	if err != nil {
		t.Fatal(err)
	}
	if got != testutil.Path(ns) {
		t.Errorf("netns %q, want the CRI's %s", got, testutil.Path(ns))
	}
}
