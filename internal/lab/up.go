package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab/controlplane"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// UpOptions tune Up.
type UpOptions struct {
	// HostNetns is the namespace whose addresses and routes the safety check reads;
	// "" = the caller's (the host's).
	HostNetns string
	// Progress, if set, receives one line per step.
	Progress func(string)
	// KeepOnFailure leaves a failed lab in place (for debugging) instead of removing it.
	KeepOnFailure bool
	// ReadyTimeout bounds the wait for every pod and kube-proxy rule; default 3 minutes.
	ReadyTimeout time.Duration
}

// Lab is a running lab: its state and an admin client.
type Lab struct {
	State  *State
	CP     *controlplane.ControlPlane
	Client kubernetes.Interface

	progress func(string) // reports what WaitReady still waits for, when it changes
}

// CPStateDir is the control plane's state directory inside the lab's.
func CPStateDir(stateDir string) string { return filepath.Join(stateDir, "cp") }

// Up builds a lab: safety check, topology, upstream DNS, control plane, kubelets, kube-proxy
// and CoreDNS add-ons, sample workloads; it returns once every pod runs and is ready and
// every node's kube-proxy has written the sample services' rules. On failure the half-built
// lab is removed unless KeepOnFailure.
func Up(ctx context.Context, c Config, o UpOptions) (l *Lab, err error) {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 3 * time.Minute
	}
	begin := time.Now()
	say := func(f string, a ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf("[%5.1fs] ", time.Since(begin).Seconds()) + fmt.Sprintf(f, a...))
		}
	}
	for _, b := range []struct{ what, path string }{{"netdoctor-k8s", c.K8sBin}, {"netdoctor", c.SelfBin}} {
		if b.path == "" {
			return nil, fmt.Errorf("lab: path of the %s binary not set", b.what)
		}
		if _, err := os.Stat(b.path); err != nil {
			return nil, fmt.Errorf("lab: %s binary: %w", b.what, err)
		}
	}
	if _, err := LoadState(c.StateDir()); err == nil {
		return nil, fmt.Errorf("lab %s already exists (state in %s): run `netdoctor lab down --name %s` first", c.Name, c.StateDir(), c.Name)
	}
	if err := reclaimStale(c, say); err != nil {
		return nil, err
	}
	// Safety first: nothing is created before this check passes.
	if err := c.CheckHost(o.HostNetns); err != nil {
		return nil, err
	}
	st := &State{Config: c, Created: begin.UTC(), Phase: "building"}
	if err := st.Save(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && !o.KeepOnFailure {
			if _, derr := Down(c.Name, c.StateRoot); derr != nil {
				err = errors.Join(err, fmt.Errorf("clean up the failed lab: %w", derr))
			}
		}
	}()

	say("topology: %d nodes on %s, root link %s %s", c.Nodes, c.UnderlayCIDR, RootLinkName(c.Name), c.RootIP())
	if err := BuildTopology(c, st); err != nil {
		return nil, err
	}
	say("upstream DNS %s (zone %s)", c.DNSIP(), ExtZone)
	if err := startUpstreamDNS(c); err != nil {
		return nil, err
	}
	say("external host %s: test server on port %d", c.ExtIP(), ExtPort)
	if _, err := proc.Start(proc.Spec{
		Name: "external-web", Path: c.SelfBin, Args: []string{"lab", "serve", "--name", ExtServeName, "--ports", fmt.Sprintf("%d/TCP", ExtPort)},
		Netns:     NetnsPath(c.ExtNetns()),
		LogFile:   filepath.Join(LogDir(c.StateDir()), "external-web.log"),
		StateFile: filepath.Join(ProcDir(c.StateDir()), "external-web.json"),
		Owner:     c.Name,
	}); err != nil {
		return nil, err
	}
	say("control plane in %s (API server https://%s:%d)", c.CPNetns(), c.CPIP(), controlplane.APIServerPort)
	cp, err := controlplane.Start(ctx, controlplane.Config{
		StateDir: CPStateDir(c.StateDir()), K8sBin: c.K8sBin, Netns: NetnsPath(c.CPNetns()),
		AdvertiseIP: c.CPIP().String(), ServiceCIDR: c.ServiceCIDR.String(), ClusterCIDR: c.ClusterCIDR.String(),
		NodeCIDRMaskSize: c.NodeCIDRMaskSize, Owner: c.Name,
	})
	if err != nil {
		return nil, err
	}
	st.Kubeconfig = cp.Kubeconfig
	client, err := cp.Client()
	if err != nil {
		return nil, err
	}
	if st.FlannelKubeconfig, err = setupFlannelIdentity(ctx, cp, client); err != nil {
		return nil, err
	}
	for i := 1; i <= c.Nodes; i++ {
		kc, err := cp.NodeKubeconfig(NodeName(i))
		if err != nil {
			return nil, err
		}
		st.Nodes = append(st.Nodes, NodeState{Name: NodeName(i), Netns: c.NodeNetns(i), IP: c.NodeIP(i).String(), Kubeconfig: kc})
	}
	if err := st.Save(); err != nil {
		return nil, err
	}
	say("kubelets on %d nodes", c.Nodes)
	for _, n := range st.Nodes {
		if err := StartKubelet(c, n.Name); err != nil {
			return nil, err
		}
	}
	say("add-on: kube-proxy (%s mode)", c.ProxyMode)
	if err := controlplane.Apply(ctx, client, cp.KubeProxyManifests(c.ProxyMode)); err != nil {
		return nil, fmt.Errorf("apply kube-proxy: %w", err)
	}
	say("sample workloads: web Deployment + Service in %s", strings.Join(SampleNamespaces, ", "))
	if err := ApplySamples(ctx, client, c.Nodes); err != nil {
		return nil, err
	}
	l = &Lab{State: st, CP: cp, Client: client}
	// CoreDNS reaches the API server through the kubernetes Service: start it once kube-proxy
	// serves that Service on every node, as in a real cluster where CoreDNS waits for the
	// network add-on (otherwise client-go's back-off delays its readiness by half a minute).
	kctx, kcancel := context.WithTimeout(ctx, o.ReadyTimeout)
	err = l.waitServiceRules(kctx, apiServiceIP(c))
	kcancel()
	if err != nil {
		return nil, err
	}
	say("add-on: CoreDNS at %s", c.ClusterDNSIP())
	if err := controlplane.Apply(ctx, client, controlplane.CoreDNSManifests(c.ClusterDNSIP().String(), c.DNSIP().String())); err != nil {
		return nil, fmt.Errorf("apply CoreDNS: %w", err)
	}
	say("waiting for nodes, pods and kube-proxy rules")
	wctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	l.progress = func(why string) { say("  waiting: %s", why) }
	if err := l.WaitReady(wctx); err != nil {
		return nil, err
	}
	st.Phase = "running"
	if err := st.Save(); err != nil {
		return nil, err
	}
	say("lab %s up in %s", c.Name, time.Since(begin).Round(100*time.Millisecond))
	return l, nil
}

// FlannelUser is the identity of the nodes' flannel reconcilers, bound to flannel's ClusterRole.
const FlannelUser = "system:netdoctor-lab:flannel"

// setupFlannelIdentity creates flannel's ClusterRole (as kube-flannel.yml has it) bound to
// FlannelUser and writes a kubeconfig for that user.
func setupFlannelIdentity(ctx context.Context, cp *controlplane.ControlPlane, cs kubernetes.Interface) (string, error) {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		},
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create clusterrole flannel: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "flannel"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: FlannelUser}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create clusterrolebinding flannel: %w", err)
	}
	p := filepath.Join(cp.Config.StateDir, "kubeconfigs", "flannel.conf")
	if err := cp.WriteKubeconfig(p, controlplane.Identity{User: FlannelUser}); err != nil {
		return "", err
	}
	return p, nil
}

// StartKubelet starts node's lab kubelet (`netdoctor lab kubelet`) detached in its namespace.
func StartKubelet(c Config, node string) error {
	dir := c.StateDir()
	_, err := proc.Start(proc.Spec{
		Name:      "kubelet-" + node,
		Path:      c.SelfBin,
		Args:      []string{"-v", "lab", "kubelet", "--lab", c.Name, "--node", node, "--state-root", c.StateRoot},
		Netns:     NetnsPath(NetnsPrefix(c.Name) + node),
		LogFile:   filepath.Join(LogDir(dir), "kubelet-"+node+".log"),
		StateFile: filepath.Join(ProcDir(dir), "kubelet-"+node+".json"),
		Owner:     c.Name,
	})
	return err
}

// The external host's test server: it answers "pod external" on TCP port 80.
const (
	ExtServeName = "external"
	ExtPort      = 80
)

// UpstreamCorefile is the upstream DNS server's configuration: authoritative for ExtZone
// only (REFUSED for every other name: the lab never forwards to the internet).
func UpstreamCorefile(zoneFile string) string {
	return ExtZone + ":53 {\n    file " + zoneFile + "\n    errors\n    log\n}\n"
}

// UpstreamZone is the zone file of ExtZone.
func (c Config) UpstreamZone() string {
	return "$ORIGIN " + ExtZone + "\n" +
		"@\t3600\tIN\tSOA\tns." + ExtZone + " admin." + ExtZone + " 1 7200 3600 1209600 60\n" +
		"@\t3600\tIN\tNS\tns." + ExtZone + "\n" +
		"ns\t3600\tIN\tA\t" + c.DNSIP().String() + "\n" +
		"www\t3600\tIN\tA\t" + c.ExtIP().String() + "\n"
}

func startUpstreamDNS(c Config) error {
	dir := filepath.Join(c.StateDir(), "dns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("upstream DNS directory: %w", err)
	}
	zone := filepath.Join(dir, "db."+strings.TrimSuffix(ExtZone, "."))
	if err := os.WriteFile(zone, []byte(c.UpstreamZone()), 0o644); err != nil {
		return fmt.Errorf("write zone file: %w", err)
	}
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(UpstreamCorefile(zone)), 0o644); err != nil {
		return fmt.Errorf("write Corefile: %w", err)
	}
	_, err := proc.Start(proc.Spec{
		Name: "upstream-dns", Path: c.K8sBin, Args: []string{"coredns", "-conf", corefile},
		Dir: dir, Netns: NetnsPath(c.DNSNetns()),
		LogFile:   filepath.Join(LogDir(c.StateDir()), "upstream-dns.log"),
		StateFile: filepath.Join(ProcDir(c.StateDir()), "upstream-dns.json"),
		Owner:     c.Name,
	})
	return err
}

// Open loads a running lab for commands other than up (status, inject, heal, tests).
func Open(name, stateRoot string) (*Lab, error) {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot()
	}
	st, err := LoadState(filepath.Join(stateRoot, name))
	if err != nil {
		return nil, err
	}
	cp, err := controlplane.Load(CPStateDir(st.Config.StateDir()))
	if err != nil {
		return nil, err
	}
	client, err := cp.Client()
	if err != nil {
		return nil, err
	}
	return &Lab{State: st, CP: cp, Client: client}, nil
}

// WaitReady waits until every node is Ready with a pod CIDR, every pod runs and is ready, and
// every node's kube-proxy has programmed the sample services. It records pod CIDRs in the state.
func (l *Lab) WaitReady(ctx context.Context) error {
	var last string
	for {
		why, err := l.notReady(ctx)
		if err == nil && why == "" {
			return l.recordPodCIDRs(ctx)
		}
		if err != nil {
			why = err.Error()
		}
		if why != last && l.progress != nil {
			l.progress(why)
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab %s not ready: %s: %w", l.State.Config.Name, last, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func (l *Lab) recordPodCIDRs(ctx context.Context) error {
	nodes, err := l.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		if ns, err := l.State.Node(n.Name); err == nil {
			ns.PodCIDR = n.Spec.PodCIDR
		}
	}
	return l.State.Save()
}

func (l *Lab) notReady(ctx context.Context) (string, error) {
	c := l.State.Config
	nodes, err := l.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list nodes: %w", err)
	}
	ready := 0
	for _, n := range nodes.Items {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue && n.Spec.PodCIDR != "" {
				ready++
			}
		}
	}
	if ready < c.Nodes {
		return fmt.Sprintf("%d of %d nodes ready with a pod CIDR", ready, c.Nodes), nil
	}
	pods, err := l.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list pods: %w", err)
	}
	want := 2 + c.Nodes + len(SampleNamespaces)*c.Nodes // CoreDNS, kube-proxy per node, web per node per namespace
	if len(pods.Items) < want {
		return fmt.Sprintf("%d of %d pods exist", len(pods.Items), want), nil
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !podReady(&p) {
			return fmt.Sprintf("pod %s/%s is %s (ready=%v, ip %q)", p.Namespace, p.Name, p.Status.Phase, podReady(&p), p.Status.PodIP), nil
		}
	}
	var svcIPs []string
	for _, ns := range SampleNamespaces {
		s, err := l.Client.CoreV1().Services(ns).Get(ctx, SampleName, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("get service %s/%s: %w", ns, SampleName, err)
		}
		svcIPs = append(svcIPs, s.Spec.ClusterIP)
	}
	svcIPs = append(svcIPs, c.ClusterDNSIP().String())
	for _, n := range l.State.Nodes {
		if got, err := overlayRoutes(n.Netns); err != nil || got < c.Nodes-1 {
			return fmt.Sprintf("flannel on %s has %d of %d peer routes (%v)", n.Name, got, c.Nodes-1, err), nil
		}
		rules, err := ProxyRules(ctx, n.Netns, c.ProxyMode)
		if err != nil {
			return "", err
		}
		for _, ip := range svcIPs {
			if !ServiceHasEndpoints(rules, c.ProxyMode, ip) {
				return fmt.Sprintf("kube-proxy on %s has no endpoint rules for %s yet", n.Name, ip), nil
			}
		}
	}
	return "", nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ProxyRules dumps kube-proxy's rules in a node namespace: `iptables-save -t nat` in iptables
// mode, `nft list table ip kube-proxy` in nftables mode.
func ProxyRules(ctx context.Context, netnsName, mode string) (string, error) {
	var out []byte
	var err error
	if mode == "nftables" {
		out, err = command.Output(ctx, NetnsPath(netnsName), "nft", "list", "table", "ip", "kube-proxy")
		if err != nil && strings.Contains(err.Error(), "No such file") {
			return "", nil
		}
	} else {
		out, err = command.Output(ctx, NetnsPath(netnsName), "iptables-save", "-t", "nat")
	}
	if err != nil {
		return "", fmt.Errorf("read kube-proxy rules in %s: %w", netnsName, err)
	}
	return string(out), nil
}

// ServiceHasEndpoints reports whether a kube-proxy dump (ProxyRules) sends the ClusterIP ip
// to endpoints: in iptables mode a "-d IP/32 ... -j KUBE-SVC-" jump of the nat table, in
// nftables mode a service-ips element "IP . PROTO . PORT : goto service-..." (a Service
// without endpoints only has a reject rule, which a plain search for the IP would also find).
func ServiceHasEndpoints(rules, mode, ip string) bool {
	var re *regexp.Regexp
	if mode == "nftables" {
		re = regexp.MustCompile(regexp.QuoteMeta(ip) + ` \. (tcp|udp|sctp) \. [0-9]+ : goto service-`)
	} else {
		re = regexp.MustCompile(`-d ` + regexp.QuoteMeta(ip) + `/32 .*-j KUBE-SVC-`)
	}
	return re.MatchString(rules)
}

// Exists reports whether a lab of that name has state or namespaces on this machine.
func Exists(name, stateRoot string) bool {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot()
	}
	if _, err := LoadState(filepath.Join(stateRoot, name)); err == nil {
		return true
	}
	left, _ := ListOwnedNetns(name)
	return len(left) > 0 || namespace.Exists(NetnsPrefix(name)+"hub")
}

// overlayRoutes counts the routes on flannel.1 in a node namespace (one per programmed peer).
func overlayRoutes(netnsName string) (int, error) {
	h, err := Handle(netnsName)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName("flannel.1")
	if err != nil {
		return 0, fmt.Errorf("flannel.1 in %s: %w", netnsName, err)
	}
	rs, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("routes of flannel.1 in %s: %w", netnsName, err)
	}
	n := 0
	for _, r := range rs {
		if r.Dst != nil && r.Gw != nil {
			n++
		}
	}
	return n, nil
}

// apiServiceIP is the kubernetes Service's ClusterIP: the first address of the service CIDR.
func apiServiceIP(c Config) string { return c.ServiceCIDR.Addr().Next().String() }

// waitServiceRules waits until kube-proxy on every node has a rule for ip.
func (l *Lab) waitServiceRules(ctx context.Context, ip string) error {
	c := l.State.Config
	for {
		missing := ""
		for _, n := range l.State.Nodes {
			rules, err := ProxyRules(ctx, n.Netns, c.ProxyMode)
			if err != nil || !ServiceHasEndpoints(rules, c.ProxyMode, ip) {
				missing = n.Name
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy on %s never programmed the kubernetes Service %s: %w", missing, ip, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// HasEndpointRules reports whether a kube-proxy dump has any per-endpoint DNAT rule.
func HasEndpointRules(rules, mode string) bool {
	if mode == "nftables" {
		return strings.Contains(rules, "dnat to")
	}
	return strings.Contains(rules, "-j DNAT")
}

// reclaimStale removes the namespaces of lab c.Name that an earlier run left behind, when no
// process runs in them or as the lab's (the run was killed before its cleanup). If processes
// do, another run of the lab is live: it fails and touches nothing.
func reclaimStale(c Config, say func(string, ...any)) error {
	left, err := ListOwnedNetns(c.Name)
	if err != nil || len(left) == 0 {
		return err
	}
	if live := LiveProcesses(c.Name); len(live) > 0 {
		return fmt.Errorf("namespaces of lab %s exist (%s) and processes run in them or as the lab's (%s): another run of lab %s is live; run `netdoctor lab down --name %s` if it is not wanted",
			c.Name, strings.Join(left, ", "), strings.Join(live, ", "), c.Name, c.Name)
	}
	say("removing namespaces left by an earlier run of lab %s (no process runs in them): %s", c.Name, strings.Join(left, ", "))
	if _, err := Down(c.Name, c.StateRoot); err != nil {
		return fmt.Errorf("remove what an earlier run of lab %s left: %w", c.Name, err)
	}
	return nil
}
