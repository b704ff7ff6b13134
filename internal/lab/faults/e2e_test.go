package faults_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// binaries returns the netdoctor-k8s and netdoctor binaries, building netdoctor if
// NETDOCTOR_BIN is not set; it skips when netdoctor-k8s is not built.
func binaries(t *testing.T) (k8s, self string) {
	t.Helper()
	k8s = os.Getenv("NETDOCTOR_K8S_BIN")
	if k8s == "" {
		if root, err := filepath.Abs("../../.."); err == nil {
			k8s = filepath.Join(root, "bin", "netdoctor-k8s")
		}
	}
	if _, err := os.Stat(k8s); err != nil {
		t.Skipf("skipped: lab Kubernetes binary not built (%v): run `make labbins` or set NETDOCTOR_K8S_BIN", err)
	}
	self = os.Getenv("NETDOCTOR_BIN")
	if self == "" {
		self = filepath.Join(t.TempDir(), "netdoctor")
		out, err := exec.Command("go", "build", "-o", self, "github.com/netdoctor/netdoctor/cmd/netdoctor").CombinedOutput()
		if err != nil {
			t.Fatalf("build netdoctor for the lab's kubelets: %v\n%s", err, out)
		}
	}
	return k8s, self
}

// TestLab is the lab end to end: up (iptables mode), a healthy cluster proven by probes from
// pod namespaces, every datapath fault injected, proven and healed, `lab down` leaving
// nothing; then the same cluster in nftables mode.
func TestLab(t *testing.T) {
	testutil.RequireRoot(t)
	for _, p := range []string{"ping", "iptables", "iptables-save", "nft"} {
		testutil.RequireProgram(t, p)
	}
	if testing.Short() {
		t.Skip("skipped in -short: brings up a whole cluster")
	}
	k8s, self := binaries(t)
	root := t.TempDir()

	for _, mode := range []string{"iptables", "nftables"} {
		name := "e2e" + mode[:3]
		c := lab.Config{Name: name, Nodes: 3, ProxyMode: mode, StateRoot: root, K8sBin: k8s, SelfBin: self}.WithDefaults()
		ok := t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			begin := time.Now()
			l, err := lab.Up(ctx, c, lab.UpOptions{Progress: func(s string) { t.Log(s) }})
			if err != nil {
				t.Fatal(err)
			}
			// Only now: a lab this run did not bring up (another run's, live) is not this test's to remove.
			t.Cleanup(func() { _, _ = lab.Down(name, root) })
			t.Logf("lab up in %s", time.Since(begin).Round(100*time.Millisecond))
			healthy(t, ctx, l)
			if mode == "iptables" {
				statusJSON(t, self, root, name)
				for _, f := range faults.All() {
					if f.Group != "datapath" {
						continue // the other groups have their own end-to-end test (e2e_more_test.go)
					}
					t.Run(f.ID, func(t *testing.T) { faultCycle(t, ctx, l, f) })
				}
				t.Run("container-restarted", func(t *testing.T) { containerRestarted(t, ctx, l) })
				t.Run("pod-replaced", func(t *testing.T) { podReplaced(t, ctx, l) })
			}
			downLeavesNothing(t, l, root)
		})
		if !ok {
			break
		}
	}
}

func healthy(t *testing.T, ctx context.Context, l *lab.Lab) {
	t.Helper()
	pods, err := l.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodesWithWeb := map[string]map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			t.Errorf("pod %s/%s: phase %s ip %q", p.Namespace, p.Name, p.Status.Phase, p.Status.PodIP)
		}
		if p.Labels["app"] == lab.SampleName {
			if nodesWithWeb[p.Namespace] == nil {
				nodesWithWeb[p.Namespace] = map[string]bool{}
			}
			nodesWithWeb[p.Namespace][p.Spec.NodeName] = true
		}
	}
	for _, ns := range lab.SampleNamespaces {
		if len(nodesWithWeb[ns]) != len(l.State.Nodes) {
			t.Errorf("web pods of %s on %v, want every node", ns, nodesWithWeb[ns])
		}
	}
	// Flannel's lease on every node, and subnet.env.
	for _, n := range l.State.Nodes {
		node, err := l.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := flannel.PeerFromNode(node.Name, node.Spec.PodCIDR, node.Annotations); !ok || node.Annotations[flannel.AnnoPublicIP] != n.IP {
			t.Errorf("node %s flannel annotations %v", n.Name, node.Annotations)
		}
		env, err := os.ReadFile(kubelet.SubnetEnvPath(l.State.Config.StateDir(), n.Name))
		if err != nil || !strings.Contains(string(env), "FLANNEL_NETWORK="+l.State.Config.ClusterCIDR.String()) {
			t.Errorf("subnet.env of %s: %q, %v", n.Name, env, err)
		}
	}

	p := faults.NewProber(l)
	webs := map[string]faults.PodRef{}
	for _, n := range l.State.Nodes {
		w, err := p.WebPod(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		webs[n.Name] = w
	}
	// Pod to pod across nodes, ICMP and TCP, every ordered pair.
	for _, a := range l.State.Nodes {
		for _, b := range l.State.Nodes {
			if a.Name == b.Name {
				continue
			}
			src, dst := webs[a.Name], webs[b.Name]
			if err := faults.Ping(ctx, src.Netns, dst.IP, 0); err != nil {
				t.Errorf("ping %s -> %s: %v", a.Name, b.Name, err)
			}
			if err := faults.HTTPGet(ctx, src.Netns, dst.IP+":80", "pod "+dst.Name); err != nil {
				t.Errorf("tcp %s -> %s: %v", a.Name, b.Name, err)
			}
		}
	}
	src := webs[l.State.Nodes[0].Name]
	// Pod to ClusterIP through kube-proxy's rules, both namespaces; DNS through CoreDNS.
	for _, ns := range lab.SampleNamespaces {
		svc, err := l.Client.CoreV1().Services(ns).Get(ctx, lab.SampleName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 6; i++ {
			if err := faults.HTTPGet(ctx, src.Netns, svc.Spec.ClusterIP+":80", "pod web-"); err != nil {
				t.Errorf("pod -> ClusterIP %s (%s/web): %v", svc.Spec.ClusterIP, ns, err)
			}
		}
		ips, err := faults.LookupA(ctx, src.Netns, l.State.Config.ClusterDNSIP().String(), "web."+ns+".svc.cluster.local.")
		if err != nil || len(ips) != 1 || ips[0] != svc.Spec.ClusterIP {
			t.Errorf("DNS web.%s.svc.cluster.local = %v, %v; want %s", ns, ips, err, svc.Spec.ClusterIP)
		}
	}
	ips, err := faults.LookupA(ctx, src.Netns, l.State.Config.ClusterDNSIP().String(), lab.ExtHostName)
	if err != nil || len(ips) != 1 || ips[0] != l.State.Config.ExtIP().String() {
		t.Errorf("DNS %s through CoreDNS and the upstream = %v, %v", lab.ExtHostName, ips, err)
	}
	// Pod to the external host: masqueraded by flannel's FLANNEL-POSTRTG (the external host has
	// no route to the pod network).
	if err := faults.Ping(ctx, src.Netns, l.State.Config.ExtIP().String(), 0); err != nil {
		t.Errorf("pod -> external host: %v", err)
	}
	if err := faults.HTTPGet(ctx, src.Netns, l.State.Config.ExtIP().String()+":80", "pod "+lab.ExtServeName); err != nil {
		t.Errorf("pod -> external host's server: %v", err)
	}
	// Nodes: InternalIP, and their Lease renewed by the lab kubelet.
	for _, n := range l.State.Nodes {
		node, err := l.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Type != corev1.NodeInternalIP || node.Status.Addresses[0].Address != n.IP {
			t.Errorf("node %s addresses %v, want InternalIP %s", n.Name, node.Status.Addresses, n.IP)
		}
		lease, err := l.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil || lease.Spec.RenewTime == nil || time.Since(lease.Spec.RenewTime.Time) > time.Minute {
			t.Errorf("lease of %s: %+v, %v", n.Name, lease, err)
		}
	}
	// Every pod's IP is inside its node's pod CIDR (hostNetwork pods: the node's IP).
	for _, p := range pods.Items {
		ns, err := l.State.Node(p.Spec.NodeName)
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.HostNetwork {
			if p.Status.PodIP != ns.IP {
				t.Errorf("hostNetwork pod %s/%s has IP %s, want node IP %s", p.Namespace, p.Name, p.Status.PodIP, ns.IP)
			}
			continue
		}
		cidr, err := netip.ParsePrefix(ns.PodCIDR)
		ip, err2 := netip.ParseAddr(p.Status.PodIP)
		if err != nil || err2 != nil || !cidr.Contains(ip) {
			t.Errorf("pod %s/%s IP %s not in %s's pod CIDR %s", p.Namespace, p.Name, p.Status.PodIP, ns.Name, ns.PodCIDR)
		}
	}
	// A pod process sees its own resolv.conf at /etc/resolv.conf (private mount namespace).
	c, err := cri.Dial(ctx, kubelet.CRISocket(l.State.Config.StateDir(), src.Node))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	found, err := c.FindPod(ctx, src.Namespace, src.Name)
	if err != nil || found.PID == 0 {
		t.Fatalf("CRI FindPod: %+v, %v", found, err)
	}
	rc, err := os.ReadFile(filepath.Join("/proc", itoa(found.PID), "root", "etc", "resolv.conf"))
	want := "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver " + l.State.Config.ClusterDNSIP().String() + "\noptions ndots:5\n"
	if err != nil || string(rc) != want {
		t.Errorf("resolv.conf seen by pod process %d: %q, %v; want %q", found.PID, rc, err, want)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func faultCycle(t *testing.T, ctx context.Context, l *lab.Lab, f faults.Fault) {
	in, err := faults.Inject(ctx, l, f.ID, "node2")
	if err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_, _ = faults.Heal(ctx, l, f.ID)
		}
	}()
	tg, err := faults.NewTarget(l, in.Node)
	if err != nil {
		t.Fatal(err)
	}
	p := faults.NewProber(l)
	for _, r := range p.Verify(ctx, f, tg, true) {
		if !r.Pass {
			t.Errorf("injected: %s from %s to %s: traffic ok=%v (%s)", r.Check, r.From, r.To, r.OK, r.Err)
		}
	}
	h, err := faults.Heal(ctx, l, f.ID)
	if err != nil || len(h) != 1 {
		t.Fatalf("heal: %v, %v", h, err)
	}
	healed = true
	for _, r := range p.Verify(ctx, f, tg, false) {
		if !r.Pass {
			t.Errorf("healed: %s from %s to %s still fails: %s", r.Check, r.From, r.To, r.Err)
		}
	}
	if act, _ := faults.Active(l); len(act) != 0 {
		t.Errorf("still recorded as injected: %v", act)
	}
}

func statusJSON(t *testing.T, self, root, name string) {
	// A container the kubelet is restarting shows as not alive for a moment:
	// every process must be alive in one of a few reads.
	var dead []string
	var deadProcs []lab.ProcessStatus
	for attempt := 0; attempt < 10; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Second)
		}
		cmd := exec.Command(self, "lab", "status", "--name", name, "-o", "json")
		cmd.Env = append(os.Environ(), "NETDOCTOR_LAB_STATE="+root)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("lab status: %v", err)
		}
		var s lab.Status
		if err := json.Unmarshal(out, &s); err != nil {
			t.Fatalf("lab status -o json: %v\n%s", err, out)
		}
		if s.Kubeconfig == "" || len(s.Nodes) != 3 || s.Nodes[0].Netns == "" || s.Nodes[0].PodCIDR == "" || len(s.Processes) < 10 {
			t.Fatalf("lab status: %+v", s)
		}
		dead, deadProcs = dead[:0], deadProcs[:0]
		for _, p := range s.Processes {
			if !p.Alive || p.LogFile == "" {
				dead = append(dead, fmt.Sprintf("%+v", p))
				deadProcs = append(deadProcs, p)
			}
		}
		if len(dead) == 0 {
			return
		}
	}
	t.Errorf("processes not alive or without a log file after 10 reads of lab status: %v", dead)
	// The evidence for whoever reads the failure: the end of each one's log, and what the
	// kubelets said about it.
	for _, p := range deadProcs {
		if b, err := os.ReadFile(p.LogFile); err == nil {
			t.Logf("end of %s:\n%s", p.LogFile, tail(string(b), 20))
		}
	}
	kubeletLogs, _ := filepath.Glob(filepath.Join(root, name, "logs", "kubelet-*.log"))
	for _, f := range kubeletLogs {
		if b, err := os.ReadFile(f); err == nil {
			t.Logf("end of %s:\n%s", f, tail(string(b), 30))
		}
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func downLeavesNothing(t *testing.T, l *lab.Lab, root string) {
	t.Helper()
	name := l.State.Config.Name
	procs := lab.AllProcs(l.State.Config.StateDir())
	if len(procs) == 0 {
		t.Fatal("no lab processes recorded")
	}
	// Every lab process carries the lab's mark: the control plane, kubelets, the pods'
	// containers, the outside hosts' servers.
	marked, err := proc.FindOwned(name)
	if err != nil {
		t.Error(err)
	}
	for _, p := range procs {
		if proc.Alive(p) && !slices.Contains(marked, p.PID) {
			t.Errorf("lab process %s (%d) is not marked as lab %s's (marked: %v)", p.Name, p.PID, name, marked)
		}
	}
	begin := time.Now()
	if _, err := lab.Down(name, root); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab down in %s", time.Since(begin).Round(10*time.Millisecond))
	if left, _ := proc.FindOwned(name); len(left) != 0 {
		t.Errorf("processes marked as lab %s's still run after down: %v", name, left)
	}
	for _, p := range procs {
		if proc.Alive(p) {
			t.Errorf("process %s (%d) still alive", p.Name, p.PID)
		}
		// Killed orphans may stay zombies for a moment, until init reaps them.
		if st, err := proc.ReadStat(p.PID); err == nil && st.StartTime == p.StartTime && st.State != 'Z' {
			t.Errorf("process %s (%d) still exists in state %c", p.Name, p.PID, st.State)
		}
	}
	if left, _ := lab.ListOwnedNetns(name); len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if namespace.Exists(lab.NetnsPrefix(name) + "hub") {
		t.Error("hub namespace left")
	}
	if _, err := exec.Command("ip", "link", "show", lab.RootLinkName(name)).CombinedOutput(); err == nil {
		t.Errorf("root link %s left", lab.RootLinkName(name))
	}
	if _, err := os.Stat(l.State.Config.StateDir()); err == nil {
		t.Error("state directory left")
	}
	if _, err := lab.Down(name, root); err != nil {
		t.Errorf("second down: %v", err)
	}
}

// podReplaced deletes a web pod: the kubelet stops it, removes its namespace and finalizes the
// deletion; the Deployment's replacement (wherever the scheduler puts it) runs and serves.
func podReplaced(t *testing.T, ctx context.Context, l *lab.Lab) {
	p := faults.NewProber(l)
	old, err := p.WebPodIn(ctx, "shop", "node3")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Client.CoreV1().Pods("shop").Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := p.WebPod(ctx, "node1")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, getErr := l.Client.CoreV1().Pods("shop").Get(ctx, old.Name, metav1.GetOptions{})
		gone := getErr != nil && !namespace.Exists(filepath.Base(old.Netns))
		served := 0
		pods, err := l.Client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{LabelSelector: "app=" + lab.SampleName})
		if err == nil {
			for _, np := range pods.Items {
				if np.Name != old.Name && np.Status.PodIP != "" && np.DeletionTimestamp == nil &&
					faults.HTTPGet(ctx, src.Netns, np.Status.PodIP+":80", "pod "+np.Name) == nil {
					served++
				}
			}
		}
		if gone && served == len(l.State.Nodes) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("old pod %s gone=%v (get: %v, netns %s exists=%v); %d of %d shop web pods serve (%v)", old.Name, gone, getErr,
				old.Netns, namespace.Exists(filepath.Base(old.Netns)), served, len(l.State.Nodes), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// containerRestarted kills a web pod's process: the kubelet restarts it (restartPolicy
// Always), reports restartCount 1 and the pod serves again.
func containerRestarted(t *testing.T, ctx context.Context, l *lab.Lab) {
	p := faults.NewProber(l)
	w, err := p.WebPodIn(ctx, "shop", "node1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cri.Dial(ctx, kubelet.CRISocket(l.State.Config.StateDir(), "node1"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	found, err := c.FindPod(ctx, w.Namespace, w.Name)
	if err != nil || found.PID == 0 {
		t.Fatalf("CRI FindPod: %+v, %v", found, err)
	}
	if err := syscall.Kill(found.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	src, err := p.WebPod(ctx, "node2")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pod, err := l.Client.CoreV1().Pods(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		if err == nil && len(pod.Status.ContainerStatuses) == 1 {
			cs := pod.Status.ContainerStatuses[0]
			if cs.RestartCount == 1 && cs.Ready && cs.LastTerminationState.Terminated != nil &&
				faults.HTTPGet(ctx, src.Netns, w.IP+":80", "pod "+w.Name) == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not restarted: %+v, %v", w.Name, pod.Status.ContainerStatuses, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
