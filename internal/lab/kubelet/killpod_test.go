package kubelet

import (
	"context"
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

// startMarked starts `sleep 300` marked as container ctr of the pod with sandbox id, as the
// kubelet marks a container's processes, in the current (host) namespace.
func startMarked(t *testing.T, k *Kubelet, r *podRuntime, ctr string) *proc.Info {
	t.Helper()
	info, err := proc.Start(proc.Spec{Name: "marked " + ctr, Path: "sleep", Args: []string{"300"},
		Env: []string{k.containerMark(r, ctr)}, LogFile: filepath.Join(t.TempDir(), ctr+".log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Stop(info, time.Second) })
	return info
}

// testKubelet is a kubelet of lab labName with no API server, enough for killPod and
// syncContainer on processes the test starts (root, sleep).
func testKubelet(t *testing.T, labName string) *Kubelet {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	return &Kubelet{opts: Options{Lab: labName, Node: "node1"}, stateDir: t.TempDir(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// hostNetworkPod is a host-network pod of one container named ctr, and the kubelet's
// record of it before any sync.
func hostNetworkPod(t *testing.T, uid types.UID, ctr string, restart corev1.RestartPolicy) (*corev1.Pod, *podRuntime) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: ctr, UID: uid},
		Spec: corev1.PodSpec{HostNetwork: true, RestartPolicy: restart, Containers: []corev1.Container{{Name: ctr, Image: "netdoctor"}}}}
	return pod, &podRuntime{pod: pod, id: SandboxID(uid), dir: t.TempDir(), containers: map[string]*ctrRuntime{}}
}

// TestKillPodStopsHostNetworkProcesses removes a host-network pod (no namespace of its own)
// whose container this kubelet does not track: its marked process must end with the pod.
func TestKillPodStopsHostNetworkProcesses(t *testing.T) {
	k := testKubelet(t, "tkh")
	pod, r := hostNetworkPod(t, "0badc0de-kill-hostnet-test", "agent", corev1.RestartPolicyAlways)
	info := startMarked(t, k, r, "agent")
	other := &podRuntime{id: SandboxID("another-pod")}
	keep := startMarked(t, k, other, "agent")

	k.killPod(r, pod)
	if proc.Alive(info) {
		t.Fatalf("host-network container process %d outlived its pod", info.PID)
	}
	if !proc.Alive(keep) {
		t.Fatalf("another pod's process %d was stopped too", keep.PID)
	}
}

// TestSyncContainerAdoptsUntrackedProcess: a container's process runs but this kubelet
// has no record of it (no state file): it adopts it instead of starting a second one.
func TestSyncContainerAdoptsUntrackedProcess(t *testing.T) {
	k := testKubelet(t, "tka")
	pod, r := hostNetworkPod(t, "0badc0de-adopt-test", "agent", corev1.RestartPolicyAlways)
	info := startMarked(t, k, r, "agent")
	// A second run of the same container (started later): the oldest stays, this one goes.
	second := startMarked(t, k, r, "agent")

	k.syncContainer(context.Background(), r, pod, &pod.Spec.Containers[0])
	cr := r.containers["agent"]
	if cr == nil || cr.info == nil {
		t.Fatal("the kubelet does not track the running container process")
	}
	if cr.info.PID != info.PID || cr.info.StartTime != info.StartTime {
		t.Errorf("tracks pid %d, want the oldest running process %d", cr.info.PID, info.PID)
	}
	if proc.Alive(second) {
		t.Errorf("a second process of the container (pid %d) still runs", second.PID)
	}
	if saved, err := proc.Load(k.ctrStateFile(r, "agent")); err != nil || saved.PID != info.PID || saved.LogFile != filepath.Join(r.dir, "agent.log") {
		t.Errorf("state file of the adopted process: %v %+v", err, saved)
	}
}

// TestSyncContainerEndedStopsLeftovers: a container's process ended; what it started (marked
// by inheritance) goes with it, as with a container's cgroup.
func TestSyncContainerEndedStopsLeftovers(t *testing.T) {
	k := testKubelet(t, "tke")
	pod, r := hostNetworkPod(t, "0badc0de-ended-test", "job", corev1.RestartPolicyNever)
	main, err := proc.Start(proc.Spec{Name: "main", Path: "true", LogFile: filepath.Join(t.TempDir(), "main.log")})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; proc.Alive(main) && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	left := startMarked(t, k, r, "job")
	r.containers["job"] = &ctrRuntime{name: "job", info: main, everStart: true}

	k.syncContainer(context.Background(), r, pod, &pod.Spec.Containers[0])
	if cr := r.containers["job"]; cr.lastExit == nil {
		t.Error("the container's exit was not recorded")
	}
	if proc.Alive(left) {
		t.Errorf("process %d of the ended container still runs", left.PID)
	}
}
