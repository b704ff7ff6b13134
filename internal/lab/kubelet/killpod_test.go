package kubelet

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestKillPodStopsUnadoptedContainers removes a pod whose container an earlier kubelet started
// and this one never adopted (it knows no process of the pod): the process must end with the
// pod's namespace, not run on unseen in a namespace without a name.
func TestKillPodStopsUnadoptedContainers(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	uid := types.UID("0badc0de-kill-pod-test")
	id := SandboxID(uid)
	ns := lab.PodNetns("tkp", id[:8])
	if err := namespace.Create(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = namespace.Delete(ns) })
	info, err := proc.Start(proc.Spec{Name: "earlier container", Path: "sleep", Args: []string{"300"},
		Netns: lab.NetnsPath(ns), LogFile: filepath.Join(t.TempDir(), "ctr.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Stop(info, time.Second) })

	nh, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	k := &Kubelet{opts: Options{Lab: "tkp", Node: "node1"}, nh: nh, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", UID: uid}}
	k.killPod(&podRuntime{pod: pod, id: id, dir: t.TempDir(), containers: map[string]*ctrRuntime{}}, pod)

	if proc.Alive(info) {
		t.Fatalf("container process %d outlived its pod", info.PID)
	}
	if namespace.Exists(ns) {
		t.Fatalf("pod namespace %s left", ns)
	}
}
