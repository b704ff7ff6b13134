package controlplane

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

var updateFixtures = flag.Bool("update-netfilter-fixtures", false,
	"write the real kube-proxy dumps to internal/netfilter/testdata (kube-proxy-iptables.save, kube-proxy-nftables.json)")

const fixtureDir = "../../netfilter/testdata"

// k8sBin returns the lab binary or skips the test.
func k8sBin(t testing.TB) string {
	t.Helper()
	p := os.Getenv(K8sBinEnv)
	if p == "" {
		t.Skipf("skipped: %s not set (build the lab binary with `make labbins`; `make test` sets it)", K8sBinEnv)
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("skipped: %s=%s: %v (run `make labbins`)", K8sBinEnv, p, err)
	}
	return p
}

// eventually polls cond every 250 ms until it returns true or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// underlay makes a bridge in a hub namespace and attaches each member namespace with a veth
// whose member end is eth0 with the given address (/24).
func underlay(t *testing.T, members map[string]string) {
	t.Helper()
	hub := testutil.NewNetns(t, "cphub")
	testutil.MustRun(t, hub, "ip", "link", "add", "br0", "type", "bridge")
	testutil.MustRun(t, hub, "ip", "link", "set", "br0", "up")
	i := 0
	for ns, addr := range members {
		port := "p" + strconv.Itoa(i)
		i++
		testutil.MustRun(t, hub, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		testutil.MustRun(t, hub, "ip", "link", "set", port, "master", "br0", "up")
		testutil.MustRun(t, ns, "ip", "addr", "add", addr+"/24", "dev", "eth0")
		testutil.MustRun(t, ns, "ip", "link", "set", "eth0", "up")
	}
}

// registerNode creates a Ready Node with an InternalIP, as a kubelet would, and keeps its
// lease renewed until ctx ends so that the node lifecycle controller keeps it Ready.
func registerNode(ctx context.Context, t *testing.T, cs kubernetes.Interface, name, ip string) {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}}
	created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("2"),
		corev1.ResourceMemory: resource.MustParse("4Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: ip},
			{Type: corev1.NodeHostName, Address: name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update status of node %s: %v", name, err)
	}
	holder, dur := name, int32(40)
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-node-lease"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur},
	}
	go func() {
		for {
			now := metav1.NewMicroTime(time.Now())
			cur, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				l := lease.DeepCopy()
				l.Spec.RenewTime = &now
				_, _ = cs.CoordinationV1().Leases("kube-node-lease").Create(ctx, l, metav1.CreateOptions{})
			} else {
				cur.Spec.RenewTime = &now
				_, _ = cs.CoordinationV1().Leases("kube-node-lease").Update(ctx, cur, metav1.UpdateOptions{})
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()
}

// fixtureServices are the services whose kube-proxy rules the fixtures show, with fixed
// cluster IPs and node port so that regenerated dumps are comparable.
type fixtureService struct {
	name      string
	clusterIP string
	nodePort  int32
	endpoints []string // pod IPs on port 8080
}

var fixtureServices = []fixtureService{
	{name: "web", clusterIP: "198.19.0.80", endpoints: []string{"198.18.128.10", "198.18.129.10", "198.18.130.10"}},
	{name: "web-nodeport", clusterIP: "198.19.0.81", nodePort: 30080, endpoints: []string{"198.18.128.20"}},
	{name: "no-endpoints", clusterIP: "198.19.0.82"},
}

func createFixtureServices(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	for _, fs := range fixtureServices {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fs.name, Namespace: "default"},
			Spec: corev1.ServiceSpec{
				ClusterIP: fs.clusterIP,
				Type:      corev1.ServiceTypeClusterIP,
				Ports:     []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
			},
		}
		if fs.nodePort != 0 {
			svc.Spec.Type = corev1.ServiceTypeNodePort
			svc.Spec.Ports[0].NodePort = fs.nodePort
		}
		if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service %s: %v", fs.name, err)
		}
		if len(fs.endpoints) == 0 {
			continue
		}
		ready := true
		portName, port, proto := "http", int32(8080), corev1.ProtocolTCP
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fs.name + "-lab", Namespace: "default", Labels: map[string]string{
				discoveryv1.LabelServiceName: fs.name, discoveryv1.LabelManagedBy: "netdoctor-lab-test"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
		}
		for i, ip := range fs.endpoints {
			node := "node" + strconv.Itoa(i%2+1)
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{ip}, NodeName: &node,
				Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create endpointslice of %s: %v", fs.name, err)
		}
	}
}

// startKubeProxy runs the real kube-proxy in a node namespace with the KubeProxyConfiguration
// of this package.
func startKubeProxy(t *testing.T, cp *ControlPlane, bin, nodeNS, node, mode string) *proc.Info {
	t.Helper()
	dir := filepath.Join(cp.Config.StateDir, "kube-proxy-"+node)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "config.conf")
	if err := os.WriteFile(conf, []byte(KubeProxyConfig(cp.Config.ClusterCIDR, mode, cp.ComponentKubeconfig("kube-proxy"))), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := proc.Start(proc.Spec{
		Name: "kube-proxy-" + node, Path: bin, Argv0: "kube-proxy",
		Args:  []string{"--config=" + conf, "--hostname-override=" + node},
		Netns: testutil.Path(nodeNS), LogFile: filepath.Join(dir, "kube-proxy.log"),
	})
	if err != nil {
		t.Fatalf("start kube-proxy on %s: %v", node, err)
	}
	t.Cleanup(func() { _ = proc.Stop(info, 5*time.Second) })
	return info
}

// pidsIn lists the processes whose network namespace is the given one.
func pidsIn(t *testing.T, nsPath string) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatalf("stat %s: %v", nsPath, err)
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out
}

// TestRealControlPlane starts the real control plane in a fresh namespace and checks that it
// does its job: node IPAM, Deployments, the scheduler, service IPs, DaemonSets; then runs the
// real kube-proxy in iptables and nftables mode in two node namespaces and checks its rules.
// With -update-netfilter-fixtures it saves those rules as the netfilter package's fixtures.
func TestRealControlPlane(t *testing.T) {
	testutil.RequireRoot(t)
	if testing.Short() {
		t.Skip("skipped in -short mode: starts the real control plane")
	}
	bin := k8sBin(t)
	testutil.RequireProgram(t, "iptables-save")
	testutil.RequireProgram(t, "nft")
	testutil.RequireProgram(t, "dig")

	cpNS := testutil.NewNetns(t, "cp")
	n1NS := testutil.NewNetns(t, "cpn1")
	n2NS := testutil.NewNetns(t, "cpn2")
	underlay(t, map[string]string{cpNS: "198.18.0.2", n1NS: "198.18.0.11", n2NS: "198.18.0.12"})

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	stateDir := t.TempDir()
	cp, err := Start(ctx, Config{StateDir: stateDir, K8sBin: bin, Netns: testutil.Path(cpNS)})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cp.Stop()
		}
	})
	t.Logf("control plane healthy after %v (%v)", cp.StartupTime.Round(10*time.Millisecond), cp.ComponentStartup)
	for _, c := range Components {
		if !cp.Running()[c] {
			t.Fatalf("%s not running after Start", c)
		}
	}
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := cs.Discovery().ServerVersion(); err != nil {
		t.Fatalf("server version: %v", err)
	} else {
		t.Logf("API server version %s", v.GitVersion)
	}

	// Node IPAM: the controller-manager gives every node a pod CIDR out of the cluster CIDR.
	nodeCtx, stopLeases := context.WithCancel(ctx)
	defer stopLeases()
	registerNode(nodeCtx, t, cs, "node1", "198.18.0.11")
	registerNode(nodeCtx, t, cs, "node2", "198.18.0.12")
	clusterCIDR := netip.MustParsePrefix(cp.Config.ClusterCIDR)
	for _, n := range []string{"node1", "node2"} {
		eventually(t, 60*time.Second, "pod CIDR of "+n, func() (bool, string) {
			node, err := cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if node.Spec.PodCIDR == "" {
				return false, "no podCIDR yet"
			}
			p, err := netip.ParsePrefix(node.Spec.PodCIDR)
			if err != nil || p.Bits() != 24 || !clusterCIDR.Contains(p.Addr()) {
				t.Fatalf("node %s got pod CIDR %q, want a /24 inside %s", n, node.Spec.PodCIDR, clusterCIDR)
			}
			return true, ""
		})
	}

	// Deployment -> ReplicaSet -> Pods bound to the nodes by the scheduler.
	replicas := int32(3)
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	eventually(t, 90*time.Second, "3 web pods bound to nodes", func() (bool, string) {
		rss, err := cs.AppsV1().ReplicaSets("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(rss.Items) == 0 {
			return false, fmt.Sprintf("replicasets: %v %v", rss, err)
		}
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error()
		}
		bound := 0
		var state []string
		for _, p := range pods.Items {
			state = append(state, p.Name+"@"+p.Spec.NodeName)
			if p.Spec.NodeName == "node1" || p.Spec.NodeName == "node2" {
				bound++
			}
		}
		return bound == 3, strings.Join(state, " ")
	})

	// A Service gets a cluster IP from the service CIDR.
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web-selected", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err != nil || !netip.MustParsePrefix(cp.Config.ServiceCIDR).Contains(ip) {
		t.Fatalf("service got cluster IP %q, want one inside %s", svc.Spec.ClusterIP, cp.Config.ServiceCIDR)
	}
	// Its IP is random: delete it so that the fixtures below stay the same from run to run.
	if err := cs.CoreV1().Services("default").Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete service: %v", err)
	}

	// The add-ons as kubeadm makes them: the DaemonSet controller creates a kube-proxy pod
	// for each node (system-node-critical exists), CoreDNS gets its Service at 198.19.0.10.
	if err := Apply(ctx, cs, cp.KubeProxyManifests("iptables")); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, cs, CoreDNSManifests("", "")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "a kube-proxy pod on each node", func() (bool, string) {
		pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
		if err != nil {
			return false, err.Error()
		}
		nodes := map[string]bool{}
		for _, p := range pods.Items {
			if p.Spec.PriorityClassName != "system-node-critical" || p.Spec.Priority == nil || *p.Spec.Priority < 2000000000 {
				t.Fatalf("kube-proxy pod %s: priority class %q priority %v", p.Name, p.Spec.PriorityClassName, p.Spec.Priority)
			}
			nodes[p.Spec.NodeName] = true
		}
		return nodes["node1"] && nodes["node2"], fmt.Sprint(nodes)
	})
	dns, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil || dns.Spec.ClusterIP != DefaultDNSServiceIP {
		t.Fatalf("kube-dns service: %v, %v", dns, err)
	}

	// The real kube-proxy in both modes, on the fixture services.
	createFixtureServices(ctx, t, cs)
	kp1 := startKubeProxy(t, cp, bin, n1NS, "node1", "iptables")
	var iptDump string
	eventually(t, 90*time.Second, "kube-proxy iptables rules in node1", func() (bool, string) {
		out, err := testutil.Run(t, n1NS, "iptables-save")
		if err != nil {
			return false, err.Error()
		}
		iptDump = out
		for _, want := range []string{"KUBE-SVC-", "KUBE-SEP-", "-d 198.19.0.80/32", "--dport 30080",
			"198.19.0.82/32", "has no endpoints", "-j KUBE-MARK-MASQ", "198.18.130.10:8080"} {
			if !strings.Contains(out, want) {
				return false, "missing " + want + "; kube-proxy log:\n" + tail(kp1.LogFile, 5)
			}
		}
		return true, ""
	})
	if n := strings.Count(iptDump, "-A KUBE-SEP-"); n < 5 {
		t.Fatalf("want at least 5 KUBE-SEP rules (3 web, 1 nodeport, 1 kubernetes), got %d:\n%s", n, iptDump)
	}

	kp2 := startKubeProxy(t, cp, bin, n2NS, "node2", "nftables")
	var nftDump string
	eventually(t, 90*time.Second, "kube-proxy nftables rules in node2", func() (bool, string) {
		out, err := testutil.Run(t, n2NS, "nft", "-j", "list", "ruleset")
		if err != nil {
			return false, err.Error()
		}
		nftDump = out
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return false, "nft -j output: " + err.Error()
		}
		table := false
		for _, o := range doc.Nftables {
			if raw, ok := o["table"]; ok {
				var tb struct{ Family, Name string }
				_ = json.Unmarshal(raw, &tb)
				table = table || (tb.Family == "ip" && tb.Name == "kube-proxy")
			}
		}
		if !table {
			return false, "no table ip kube-proxy; kube-proxy log:\n" + tail(kp2.LogFile, 5)
		}
		for _, want := range []string{"198.19.0.80", "198.19.0.82", "30080", "198.18.130.10", "service-ips"} {
			if !strings.Contains(out, want) {
				return false, "missing " + want
			}
		}
		return true, ""
	})

	if *updateFixtures {
		if err := os.WriteFile(filepath.Join(fixtureDir, "kube-proxy-iptables.save"), []byte(iptDump+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fixtureDir, "kube-proxy-nftables.json"), []byte(nftDump+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s/kube-proxy-iptables.save and kube-proxy-nftables.json", fixtureDir)
	}

	// Real CoreDNS with the kubeadm-style Corefile, as the coredns service account (the
	// ClusterRole of CoreDNSManifests must suffice), answering for services in node1.
	dnsKubeconfig := filepath.Join(stateDir, "coredns.conf")
	if err := cp.WriteKubeconfig(dnsKubeconfig, ServiceAccountIdentity("kube-system", "coredns")); err != nil {
		t.Fatal(err)
	}
	corefile := filepath.Join(stateDir, "Corefile")
	if err := os.WriteFile(corefile, []byte(CorefileWithKubeconfig(Corefile(DefaultClusterDomain, DefaultUpstreamDNS), dnsKubeconfig, "lab")), 0o644); err != nil {
		t.Fatal(err)
	}
	dnsProc, err := proc.Start(proc.Spec{Name: "coredns", Path: bin, Argv0: "coredns", Args: []string{"-conf", corefile},
		Netns: testutil.Path(n1NS), LogFile: filepath.Join(stateDir, "coredns.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Stop(dnsProc, 5*time.Second) })
	for name, want := range map[string]string{"kubernetes.default.svc.cluster.local": "198.19.0.1", "web.default.svc.cluster.local": "198.19.0.80"} {
		eventually(t, 60*time.Second, "CoreDNS answer for "+name, func() (bool, string) {
			out, err := testutil.Run(t, n1NS, "dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", name)
			if err == nil && strings.TrimSpace(out) == want {
				return true, ""
			}
			return false, fmt.Sprintf("dig: %q %v; coredns log:\n%s", out, err, tail(dnsProc.LogFile, 5))
		})
	}

	// Restart a component with other flags (what faults do), then back.
	oldCM, _ := cp.Proc(ControllerManager)
	oldPID := oldCM.PID
	if err := cp.Restart(ctx, ControllerManager, []string{"--concurrent-deployment-syncs=2"}); err != nil {
		t.Fatal(err)
	}
	newCM, _ := cp.Proc(ControllerManager)
	if newCM.PID == oldPID || !strings.Contains(strings.Join(newCM.Args, " "), "--concurrent-deployment-syncs=2") {
		t.Fatalf("restart: pid %d -> %d, args %v", oldPID, newCM.PID, newCM.Args)
	}

	// The node-pod-cidr-missing fault: a cluster CIDR with room for two /24s only. The real
	// controller-manager keeps running and leaves a third node without a pod CIDR; restored
	// to its own flags, it allocates one.
	if err := cp.Restart(ctx, ControllerManager, []string{"--cluster-cidr=198.18.128.0/23"}); err != nil {
		t.Fatal(err)
	}
	registerNode(nodeCtx, t, cs, "node3", "198.18.0.13")
	time.Sleep(5 * time.Second)
	if n3, err := cs.CoreV1().Nodes().Get(ctx, "node3", metav1.GetOptions{}); err != nil || n3.Spec.PodCIDR != "" {
		t.Fatalf("node3 with a full cluster CIDR: podCIDR %q, %v", n3.Spec.PodCIDR, err)
	}
	if !cp.Running()[ControllerManager] {
		t.Fatal("controller-manager died with a full cluster CIDR")
	}
	if err := cp.Restart(ctx, ControllerManager, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "pod CIDR of node3 after healing", func() (bool, string) {
		n3, err := cs.CoreV1().Nodes().Get(ctx, "node3", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return n3.Spec.PodCIDR != "", "no podCIDR"
	})
	if err := cp.Restart(ctx, ControllerManager, []string{"--concurrent-deployment-syncs=2"}); err != nil {
		t.Fatal(err)
	}

	loaded, err := Load(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := loaded.ExtraArgs[ControllerManager]; len(got) != 1 || got[0] != "--concurrent-deployment-syncs=2" {
		t.Fatalf("recorded extra args = %v", got)
	}

	// Memory of the control plane after this workload, for docs/performance.md.
	var total int
	var mem []string
	for _, p := range loaded.Procs {
		kb := pssKB(p.PID)
		total += kb
		mem = append(mem, fmt.Sprintf("%s %d MiB", p.Name, kb/1024))
	}
	t.Logf("control plane memory (PSS): %s; total %d MiB", strings.Join(mem, ", "), total/1024)

	// Stop everything; nothing may be left in the namespaces.
	stopLeases()
	for _, kp := range []*proc.Info{kp1, kp2, dnsProc} {
		if err := proc.Stop(kp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	begin := time.Now()
	if err := loaded.Stop(); err != nil { // a ControlPlane read back from its state file
		t.Fatal(err)
	}
	stopped = true
	t.Logf("control plane stopped in %v", time.Since(begin).Round(10*time.Millisecond))
	for _, p := range loaded.Procs {
		if proc.Alive(&p) {
			t.Errorf("%s (pid %d) still alive after Stop", p.Name, p.PID)
		}
	}
	for _, ns := range []string{cpNS, n1NS, n2NS} {
		if pids := pidsIn(t, testutil.Path(ns)); len(pids) > 0 {
			t.Errorf("processes left in %s: %v", ns, pids)
		}
	}
	if err := loaded.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// BenchmarkControlPlaneStart measures Start (PKI, etcd, API server ready with its default
// namespaces, controller-manager and scheduler healthy) and Stop of the real control plane in
// a fresh namespace. Run it with -benchtime=3x: each iteration takes seconds.
func BenchmarkControlPlaneStart(b *testing.B) {
	testutil.RequireRoot(b)
	bin := k8sBin(b)
	ns := testutil.NewNetns(b, "cpbench")
	// The advertise address lives on a veth whose peer stays in the same namespace.
	testutil.MustRun(b, ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	testutil.MustRun(b, ns, "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
	testutil.MustRun(b, ns, "ip", "link", "set", "eth0", "up")
	testutil.MustRun(b, ns, "ip", "link", "set", "eth0p", "up")
	var start, stop time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		cp, err := Start(context.Background(), Config{StateDir: b.TempDir(), K8sBin: bin, Netns: testutil.Path(ns)})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := cp.Stop(); err != nil {
			b.Fatal(err)
		}
		start += t1.Sub(t0)
		stop += time.Since(t1)
	}
	b.ReportMetric(start.Seconds()/float64(b.N), "start-s/op")
	b.ReportMetric(stop.Seconds()/float64(b.N), "stop-s/op")
}

// pssKB returns a process's proportional set size in KiB (0 if unknown): its private memory
// plus its share of pages it shares with others (the one binary's text is mapped by all).
func pssKB(pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}
