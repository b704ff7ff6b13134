package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/rules"
)

// Agent serves the requests for one node.
type Agent struct {
	Client    kubernetes.Interface
	Namespace string // where requests and results live
	Node      string
	// Netns is the node's network namespace ("" = the agent's own: a
	// hostNetwork pod). Tests and the lab's fake agents set it.
	Netns string
	// ProcRoot is /proc (default).
	ProcRoot string
	// CRIEndpoint is the container runtime socket ("" = the defaults, then /proc).
	CRIEndpoint string
	// KubeProxyHealthz is kube-proxy's health URL (default
	// http://127.0.0.1:10256/healthz, probed from Netns).
	KubeProxyHealthz string
	// Analyze overrides the node analysis (tests, simulated nodes). Nil
	// means Analyze of this package.
	Analyze func(ctx context.Context, a *Agent, req *Request) *cluster.AgentResult
	// Log is the agent's logger.
	Log *slog.Logger

	mu   sync.Mutex
	done map[string]bool

	prevMu sync.Mutex
	prev   *facts.NodeSnapshot // the counters of the last collection (countersOf)
}

// swapCounters stores the counters of snap for the next analysis and returns those of the
// previous one (nil on the first). With them the node rules tell counters rising since the
// last check (conntrack insert_failed/drop, interface and softnet drops) from a node's
// history since boot.
func (a *Agent) swapCounters(snap *facts.NodeSnapshot) *facts.NodeSnapshot {
	a.prevMu.Lock()
	defer a.prevMu.Unlock()
	prev := a.prev
	a.prev = countersOf(snap)
	return prev
}

// countersOf is the part of a snapshot the node rules compare between two collections:
// its time, conntrack statistics, softnet statistics and each link's counters.
func countersOf(s *facts.NodeSnapshot) *facts.NodeSnapshot {
	c := &facts.NodeSnapshot{Version: s.Version, Node: s.Node, CollectedAt: s.CollectedAt, Conntrack: s.Conntrack, Softnet: s.Softnet}
	for _, l := range s.Links {
		c.Links = append(c.Links, facts.Link{Index: l.Index, Name: l.Name, Type: l.Type, Stats: l.Stats})
	}
	return c
}

// Run watches requests until ctx ends, answering each request for this
// node once. Watch errors are retried; only ctx ends it.
func (a *Agent) Run(ctx context.Context) error {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	a.done = map[string]bool{}
	sel := metav1.ListOptions{LabelSelector: LabelRequest}
	for ctx.Err() == nil {
		l, err := a.Client.CoreV1().ConfigMaps(a.Namespace).List(ctx, sel)
		if err != nil {
			a.Log.Warn("list requests", "namespace", a.Namespace, "err", err)
			sleep(ctx, 2*time.Second)
			continue
		}
		for i := range l.Items {
			a.consider(ctx, &l.Items[i])
		}
		opts := sel
		opts.ResourceVersion = l.ResourceVersion
		w, err := a.Client.CoreV1().ConfigMaps(a.Namespace).Watch(ctx, opts)
		if err != nil {
			a.Log.Warn("watch requests", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok {
				continue
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				a.consider(ctx, cm)
			case watch.Deleted:
				// The CLI removed its request: forget it, so that a
				// long-running agent's memory does not grow with every check.
				a.mu.Lock()
				delete(a.done, cm.Labels[LabelRequest])
				a.mu.Unlock()
				a.requestDeleted(cm.Labels[LabelRequest]) // tools.go: stop its tool run
			}
		}
		w.Stop()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// consider answers a request for this node that was not answered yet, in
// the background.
func (a *Agent) consider(ctx context.Context, cm *corev1.ConfigMap) {
	id := cm.Labels[LabelRequest]
	a.mu.Lock()
	seen := a.done[id]
	a.done[id] = true
	a.mu.Unlock()
	if seen {
		return
	}
	req, err := DecodeRequest(cm)
	if err != nil {
		a.Log.Warn("bad request", "name", cm.Name, "err", err)
		return
	}
	if !req.For(a.Node) || time.Now().After(req.Deadline) {
		return
	}
	go func() {
		if err := a.Serve(ctx, req); err != nil {
			a.Log.Warn("answer request", "id", req.ID, "err", err)
		}
		// The analysis (rulesets, snapshots) is garbage now: give the
		// memory back so that the idle agent stays small on every node.
		debug.FreeOSMemory()
	}()
}

// Serve analyses the node for req and writes the result, finishing before
// the request's deadline (what is not done by then is reported as such).
func (a *Agent) Serve(ctx context.Context, req *Request) error {
	if req.Tool != nil {
		return a.serveTool(ctx, req)
	}
	// Leave the CLI time to read the result before it gives up.
	dl := req.Deadline.Add(-500 * time.Millisecond)
	wctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	analyze := a.Analyze
	if analyze == nil {
		analyze = Analyze
	}
	res := analyze(wctx, a, req)
	res.Node, res.Request = a.Node, req.ID
	wctx2, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	return WriteResult(wctx2, a.Client, a.Namespace, res)
}

// Analyze is the agent's work on its node: collect the node's facts, run
// the node rules with the cluster's hints, fingerprint the Service NAT
// against the API, check kube-proxy's health endpoint and run the node's
// share of the probe plan.
func Analyze(ctx context.Context, a *Agent, req *Request) *cluster.AgentResult {
	res := &cluster.AgentResult{StartedAt: time.Now().UTC()}
	defer func() { res.FinishedAt = time.Now().UTC() }()
	var wg sync.WaitGroup
	var snap *facts.NodeSnapshot
	if req.Wants(CheckNode) || req.Wants(CheckServices) {
		s, err := collect.Collect(ctx, collect.Options{Netns: a.Netns, NodeName: a.Node, ProcRoot: a.ProcRoot})
		if err != nil {
			addErr(res, "collect", err.Error())
		}
		snap = s
	}
	var probes []cluster.ProbeResult
	var resolv []cluster.PodResolv
	if req.Wants(CheckProbes) && req.Probe != nil {
		wg.Add(2)
		go func() {
			defer wg.Done()
			probes = a.probe(ctx, req.Probe, res)
		}()
		go func() {
			defer wg.Done()
			resolv = a.podResolv(ctx, req.Probe)
		}()
	}
	if snap != nil {
		res.Summary = Summarize(a.Node, snap, req.Hints)
		if req.Wants(CheckNode) {
			in := &rules.Input{Node: snap, Before: a.swapCounters(snap), Hints: ruleHints(a.Node, req.Hints)}
			rep := rules.Evaluate(in)
			res.Findings, res.Checks = rep.Findings, rep.Checks
		}
		if req.Wants(CheckServices) {
			a.serviceRules(ctx, snap, res)
		}
	}
	if res.Summary.KubeProxy != nil || (snap != nil && kubeProxyExpected(snap)) {
		if res.Summary.KubeProxy == nil {
			res.Summary.KubeProxy = &cluster.KubeProxyState{}
		}
		res.Summary.KubeProxy.Healthz = a.healthz(ctx)
	}
	wg.Wait()
	res.Probes, res.PodResolv = probes, resolv
	return res
}

// kubeProxyExpected is true when the node has kube-proxy's chains but no
// process was seen (so its health is worth probing anyway).
func kubeProxyExpected(snap *facts.NodeSnapshot) bool {
	return strings.Contains(snap.Netfilter.IptablesNft+snap.Netfilter.IptablesLegacy, "KUBE-SERVICES") || strings.Contains(snap.Netfilter.NftJSON, `"kube-proxy"`)
}

func (a *Agent) healthz(ctx context.Context) *cluster.HealthCheck {
	url := a.KubeProxyHealthz
	if url == "" {
		url = "http://127.0.0.1:10256/healthz"
	}
	hc := healthCheck(ctx, a.Netns, url)
	return &hc
}

// healthCheck GETs url from the network namespace netns ("" = current).
// The URL's host must be an IP address when netns is set (names would be
// resolved outside the namespace).
func healthCheck(ctx context.Context, netns, url string) cluster.HealthCheck {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return cluster.HealthCheck{Detail: err.Error()}
	}
	// The transport dials on goroutines of its own: namespace.Dialer makes
	// the socket inside netns on a locked thread and checks it is there.
	tr := &http.Transport{DisableKeepAlives: true, DialContext: namespace.Dialer(netns, &net.Dialer{Timeout: 2 * time.Second})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return cluster.HealthCheck{OK: false, Detail: err.Error()}
	}
	defer func() { _ = resp.Body.Close() }()
	return cluster.HealthCheck{OK: resp.StatusCode == http.StatusOK, Detail: "GET " + url + ": " + resp.Status}
}

// serviceRules lists the API's Services and EndpointSlices (what the node
// must serve) and fingerprints the node's Service NAT against them. A
// difference is read again after kube-proxy's sync period: an EndpointSlice
// that changed a moment ago (a pod just started) is not yet in the rules,
// and that lag is not a fault.
func (a *Agent) serviceRules(ctx context.Context, snap *facts.NodeSnapshot, res *cluster.AgentResult) {
	for attempt := 0; ; attempt++ {
		mode, rules, differ, err := a.fingerprint(ctx, snap)
		if err != nil {
			res.ServiceRulesError = err.Error()
			return
		}
		res.ServiceRulesMode, res.ServiceRules = mode, rules
		res.ServiceRulesCompared, res.ServiceRulesDiffer = true, differ
		if len(differ) == 0 || attempt == 1 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(kubeProxySyncWait):
		}
		again, err := collect.Collect(ctx, collect.Options{Netns: a.Netns, NodeName: a.Node, ProcRoot: a.ProcRoot, Sections: []string{collect.SectionNetfilter, collect.SectionIPVS}})
		if err != nil {
			return
		}
		snap = again
	}
}

// kubeProxySyncWait is how long a difference is given to settle: more than
// kube-proxy's default minSyncPeriod (1 s).
const kubeProxySyncWait = 2 * time.Second

// fingerprint reads the Service NAT of snap and the API's view, and lists the Service ports
// ("ns/name port/proto") where they differ, sorted.
func (a *Agent) fingerprint(ctx context.Context, snap *facts.NodeSnapshot) (string, []cluster.ServiceRule, []string, error) {
	mode, nat, err := ExtractServiceNAT(snap)
	if err != nil {
		return "", nil, nil, err
	}
	svcs, err := a.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", nil, nil, fmt.Errorf("list services: %w", err)
	}
	slices, err := a.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", nil, nil, fmt.Errorf("list endpointslices: %w", err)
	}
	api := cluster.FromLists(svcs, slices)
	expected := cluster.ExpectedServiceRules(api)
	rules := ServiceFingerprints(nat, api.Services, expected)
	have := map[string]bool{}
	var differ []string
	for _, r := range rules {
		have[r.Key()] = true
		if len(r.Targets) > 0 {
			differ = append(differ, r.Key())
		}
	}
	for _, e := range expected {
		if !have[e.Key()] {
			differ = append(differ, e.Key())
		}
	}
	sort.Strings(differ)
	return mode, rules, differ, nil
}

// probe runs this node's probes; pod-netns probes run in the netns of the
// plan's target pod on this node, found through the CRI, else /proc.
func (a *Agent) probe(ctx context.Context, spec *cluster.ProbeSpec, res *cluster.AgentResult) []cluster.ProbeResult {
	plan := cluster.Plan(spec, a.Node)
	var target cluster.NodeTarget
	for _, t := range spec.Targets {
		if t.Node == a.Node {
			target = t
		}
	}
	podNS, why := "", "no running pod on this node to probe from"
	if target.PodIP != "" {
		p, err := a.findPodNetns(ctx, target)
		if err != nil {
			why = "pod network namespace of " + target.Pod + " not found: " + err.Error()
			addErr(res, "pod-netns", why)
		} else {
			podNS = p
		}
	}
	return RunProbes(ctx, plan, a.Netns, podNS, why)
}

func (a *Agent) findPodNetns(ctx context.Context, t cluster.NodeTarget) (string, error) {
	var criErr error
	if ns, name, ok := strings.Cut(t.Pod, "/"); ok {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		c, err := cri.DialAny(cctx, a.CRIEndpoint)
		if err == nil {
			p, err := c.FindPod(cctx, ns, name)
			_ = c.Close()
			if err == nil && p.Netns != "" {
				cancel()
				return p.Netns, nil
			}
			criErr = err
		} else {
			criErr = err
		}
		cancel()
	}
	p, err := FindNetnsByAddr(a.procRoot(), t.PodIP, a.Netns)
	if err != nil {
		return "", fmt.Errorf("CRI: %w; /proc: %w", criErr, err)
	}
	return p, nil
}

func (a *Agent) procRoot() string {
	if a.ProcRoot == "" {
		return "/proc"
	}
	return a.ProcRoot
}

// FindNetnsByAddr scans /proc/*/ns/net for the network namespace that holds
// ip on one of its interfaces and is attached to the node: one of the node
// namespace's veths (nodeNetns, "" = current) has its peer there. Several
// isolated networks on one machine (labs, nested nodes) may reuse the same
// pod IP; only the one wired to this node counts. It returns a
// /proc/PID/ns/net path.
func FindNetnsByAddr(procRoot, ip, nodeNetns string) (string, error) {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return "", fmt.Errorf("pod IP %q: %w", ip, err)
	}
	attached, err := vethPeerNetnsIDs(nodeNetns)
	if err != nil {
		return "", err
	}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", procRoot, err)
	}
	seen := map[uint64]bool{}
	var pids []string
	for _, e := range ents {
		if e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			pids = append(pids, e.Name())
		}
	}
	sort.Strings(pids)
	others := 0
	for _, pid := range pids {
		p := filepath.Join(procRoot, pid, "ns", "net")
		var st = new(statIno)
		if !st.of(p) || seen[st.ino] {
			continue
		}
		seen[st.ino] = true
		found := false
		_ = namespace.Do(p, func() error {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return err
			}
			for _, ad := range addrs {
				if pfx, err := netip.ParsePrefix(ad.String()); err == nil && pfx.Addr() == want {
					found = true
				}
			}
			return nil
		})
		if !found {
			continue
		}
		if ok, err := isAttached(nodeNetns, p, attached); err == nil && ok {
			return p, nil
		}
		others++
	}
	if others > 0 {
		return "", fmt.Errorf("%d network namespace(s) under %s hold %s, none wired to this node's veths", others, procRoot, ip)
	}
	return "", fmt.Errorf("no network namespace under %s holds %s", procRoot, ip)
}

// ruleHints turns the request's hints into the node rules' hints.
func ruleHints(node string, h Hints) rules.Hints {
	var out rules.Hints
	for n, cidrs := range h.PodCIDRs {
		for _, c := range cidrs {
			if p, err := netip.ParsePrefix(c); err == nil {
				out.PodCIDRs = append(out.PodCIDRs, p)
			}
		}
		_ = n
	}
	for _, c := range h.ClusterCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out.ClusterCIDRs = append(out.ClusterCIDRs, p)
		}
	}
	for _, c := range h.ServiceCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out.ServiceCIDRs = append(out.ServiceCIDRs, p)
		}
	}
	for n, ips := range h.NodeIPs {
		for _, ip := range ips {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				continue
			}
			if n == node {
				out.NodeIPs = append(out.NodeIPs, a)
			} else {
				out.PeerIPs = append(out.PeerIPs, a)
			}
		}
	}
	return out
}
