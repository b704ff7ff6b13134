package cluster

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// Input is what the cluster rules read: the API snapshot and, when agents
// ran, one result per node. Rules are pure functions of it.
type Input struct {
	Cluster *Snapshot
	// Agents holds the agents' results by node. Nil when the check ran
	// without agents (--no-agent): rules needing agent facts are skipped.
	Agents map[string]*AgentResult
	// Missing names the nodes asked whose agent did not answer, with why.
	Missing map[string]string
	// Spec is the probe plan's input when probes ran.
	Spec *ProbeSpec
	// Matrix is the connectivity matrix built from the probe results.
	Matrix *Matrix
}

// Rule is a registered cluster rule: one finding ID, its severity and the
// function that finds it.
type Rule struct {
	ID       string
	Severity finding.Severity
	Title    string
	// Run returns the rule's findings and the checks it made (per node or
	// cluster-wide). A rule lacking facts returns a skipped check with the
	// reason.
	Run func(in *Input, r *Rule) ([]finding.Finding, []finding.Check)
}

var registry []*Rule

func register(r *Rule) { registry = append(registry, r) }

// Rules returns the registered cluster rules sorted by ID.
func Rules() []*Rule {
	out := append([]*Rule(nil), registry...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Evaluate runs every cluster rule over in and returns their findings and
// checks, plus the node-level findings and checks every agent sent (node
// set), and an error check for each node whose agent did not answer.
func Evaluate(in *Input) ([]finding.Finding, []finding.Check) {
	var fs []finding.Finding
	var cs []finding.Check
	for _, r := range Rules() {
		f, c := r.Run(in, r)
		fs = append(fs, f...)
		cs = append(cs, c...)
	}
	nodes := make([]string, 0, len(in.Agents))
	for n := range in.Agents {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		a := in.Agents[n]
		for _, f := range a.Findings {
			if f.Node == "" {
				f.Node = n
			}
			fs = append(fs, f)
		}
		for _, c := range a.Checks {
			if c.Node == "" {
				c.Node = n
			}
			cs = append(cs, c)
		}
		cs = append(cs, finding.Check{ID: "agent", Node: n, Status: finding.Pass})
	}
	missing := make([]string, 0, len(in.Missing))
	for n := range in.Missing {
		missing = append(missing, n)
	}
	sort.Strings(missing)
	for _, n := range missing {
		cs = append(cs, finding.Check{ID: "agent", Node: n, Status: finding.Error, Reason: in.Missing[n]})
	}
	return fs, cs
}

func (r *Rule) finding(node, subject, msg string, evidence []string, fix string) finding.Finding {
	return finding.Finding{ID: r.ID, Severity: r.Severity, Node: node, Subject: subject, Message: msg, Evidence: evidence, Remediation: fix, Docs: docsFor(r.ID)}
}

func (r *Rule) check(node string, st finding.Status, reason string) finding.Check {
	return finding.Check{ID: r.ID, Node: node, Status: st, Reason: reason}
}

func docsFor(id string) string {
	switch {
	case strings.HasPrefix(id, "kube-proxy"), id == "service-rules-missing":
		return "https://kubernetes.io/docs/tasks/debug/debug-application/debug-service/#is-kube-proxy-running"
	case strings.HasPrefix(id, "dns-"), id == "pod-resolv-conf-wrong":
		return "https://kubernetes.io/docs/tasks/administer-cluster/dns-debugging-resolution/"
	case strings.HasPrefix(id, "service-"), id == "endpoint-not-listening":
		return "https://kubernetes.io/docs/tasks/debug/debug-application/debug-service/"
	}
	return ""
}

// nodeNames are the snapshot's node names, sorted.
func nodeNames(s *Snapshot) []string {
	out := make([]string, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}

// agentNodes are the nodes with an agent result, sorted.
func agentNodes(in *Input) []string {
	out := make([]string, 0, len(in.Agents))
	for n := range in.Agents {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func skipAll(r *Rule, reason string) []finding.Check {
	return []finding.Check{r.check("", finding.Skipped, reason)}
}

const noAgents = "needs the node agents' facts (ran with --no-agent or no agent answered)"

// ---------------------------------------------------------------- kube-proxy

// kubeProxyDaemonSet finds kube-proxy's DaemonSet.
func kubeProxyDaemonSet(s *Snapshot) *Workload {
	for i := range s.DaemonSets {
		d := &s.DaemonSets[i]
		if d.Namespace == KubeSystem && (d.Name == "kube-proxy" || d.Labels["k8s-app"] == "kube-proxy") {
			return d
		}
	}
	return nil
}

func isKubeProxyPod(p *Pod) bool {
	if p.Namespace != KubeSystem {
		return false
	}
	return p.Labels["k8s-app"] == "kube-proxy" || (p.OwnerKind == "DaemonSet" && p.OwnerName == "kube-proxy") ||
		strings.HasPrefix(p.Name, "kube-proxy-")
}

func podProblem(p *Pod) string {
	switch {
	case p.Reason == "Evicted":
		return "evicted"
	case p.Deleting:
		return "being deleted"
	case p.Phase == "Pending":
		return "pending" + waitingSuffix(p)
	case p.Phase == "Failed":
		return "failed" + reasonSuffix(p)
	case p.Phase == "Succeeded":
		return "exited (Succeeded)"
	case p.Phase == "Running" && !p.Ready:
		return "running but not ready" + waitingSuffix(p)
	case p.Phase != "Running":
		return "phase " + p.Phase
	}
	return ""
}

func waitingSuffix(p *Pod) string {
	if len(p.Waiting) == 0 {
		return ""
	}
	return " (" + strings.Join(p.Waiting, ", ") + ")"
}

func reasonSuffix(p *Pod) string {
	if p.Reason == "" {
		return waitingSuffix(p)
	}
	return " (" + p.Reason + ")"
}

func init() {
	register(&Rule{ID: "kube-proxy-not-running", Severity: finding.Critical, Title: "kube-proxy is not running on a node", Run: ruleKubeProxyNotRunning})
	register(&Rule{ID: "kube-proxy-not-critical", Severity: finding.Warning, Title: "kube-proxy may be evicted: not system-node-critical", Run: ruleKubeProxyNotCritical})
	register(&Rule{ID: "kube-proxy-cluster-cidr-missing", Severity: finding.Warning, Title: "kube-proxy runs without clusterCIDR", Run: ruleClusterCIDRMissing})
	register(&Rule{ID: "kube-proxy-cluster-cidr-wrong", Severity: finding.Warning, Title: "kube-proxy clusterCIDR is not the pod network", Run: ruleClusterCIDRWrong})
}

func ruleKubeProxyNotRunning(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	ds := kubeProxyDaemonSet(s)
	byNode := map[string][]*Pod{}
	any := false
	for i := range s.Pods {
		p := &s.Pods[i]
		if isKubeProxyPod(p) {
			any = true
			byNode[p.Node] = append(byNode[p.Node], p)
		}
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, node := range nodeNames(s) {
		var ev []string
		apiKnown := ds != nil || any
		if apiKnown {
			pods := byNode[node]
			healthy := false
			for _, p := range pods {
				if prob := podProblem(p); prob != "" {
					ev = append(ev, fmt.Sprintf("pod %s/%s on %s: %s", p.Namespace, p.Name, node, prob))
				} else {
					healthy = true
				}
			}
			if len(pods) == 0 {
				e := "no kube-proxy pod scheduled on " + node
				if ds != nil {
					e += fmt.Sprintf(" (DaemonSet %s: desired %d, ready %d)", ds.Key(), ds.Desired, ds.Ready)
				}
				ev = append(ev, e)
			} else if healthy {
				ev = nil // a healthy replacement exists next to an evicted one
			}
		}
		a := in.Agents[node]
		if a != nil && a.Summary.KubeProxy != nil {
			kp := a.Summary.KubeProxy
			if kp.Healthz != nil && !kp.Healthz.OK {
				ev = append(ev, "GET http://127.0.0.1:10256/healthz on "+node+": "+kp.Healthz.Detail)
			}
			if !kp.Running && !apiKnown {
				ev = append(ev, "no kube-proxy process on "+node)
			}
		}
		if a != nil && a.ServiceRulesError == "" && a.ServiceRulesMode != "ipvs-absent" && len(a.ServiceRules) == 0 && countClusterIPServices(s) > 0 {
			ev = append(ev, fmt.Sprintf("no Service NAT rules on %s (%d ClusterIP Services in the API)", node, countClusterIPServices(s)))
		}
		switch {
		case len(ev) > 0:
			fs = append(fs, r.finding(node, "kube-proxy", "kube-proxy is not working on "+node+": every Service, DNS included, is unreachable from its pods",
				ev, "kubectl -n kube-system get pods -l k8s-app=kube-proxy -o wide --field-selector spec.nodeName="+node+
					"; kubectl -n kube-system describe pod/logs of it; once running, verify `curl http://127.0.0.1:10256/healthz` on the node and that `iptables-save -t nat | grep KUBE-SERVICES` (or `nft list table ip kube-proxy`) shows rules"))
			cs = append(cs, r.check(node, finding.Fail, ""))
		case !apiKnown && a == nil:
			cs = append(cs, r.check(node, finding.Skipped, "no kube-proxy pods in kube-system (kube-proxy runs outside Kubernetes or is replaced) and "+noAgents))
		default:
			cs = append(cs, r.check(node, finding.Pass, ""))
		}
	}
	return fs, cs
}

func countClusterIPServices(s *Snapshot) int {
	n := 0
	for _, svc := range s.Services {
		if svc.Type != "ExternalName" && !svc.Headless() {
			n++
		}
	}
	return n
}

func ruleKubeProxyNotCritical(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	ds := kubeProxyDaemonSet(s)
	if ds != nil {
		if ds.PriorityClassName == "system-node-critical" {
			return nil, []finding.Check{r.check("", finding.Pass, "")}
		}
		pc := ds.PriorityClassName
		if pc == "" {
			pc = "(none)"
		}
		return []finding.Finding{r.finding("", "daemonset/"+ds.Key(), "kube-proxy's DaemonSet lacks priorityClassName system-node-critical: the kubelet may evict it when a node fills up, and every Service breaks on that node",
				[]string{"DaemonSet " + ds.Key() + " spec.template.spec.priorityClassName: " + pc},
				"kubectl -n kube-system patch daemonset "+ds.Name+` -p '{"spec":{"template":{"spec":{"priorityClassName":"system-node-critical"}}}}'; verify with kubectl -n kube-system get pods -l k8s-app=kube-proxy -o jsonpath='{..priorityClassName}'`)},
			[]finding.Check{r.check("", finding.Fail, "")}
	}
	var fs []finding.Finding
	var cs []finding.Check
	seen := false
	for i := range s.Pods {
		p := &s.Pods[i]
		if !isKubeProxyPod(p) {
			continue
		}
		seen = true
		if p.PriorityClassName != "system-node-critical" {
			fs = append(fs, r.finding(p.Node, "pod/"+p.Namespace+"/"+p.Name, "kube-proxy pod "+p.Name+" lacks priorityClassName system-node-critical and may be evicted",
				[]string{"pod " + p.Namespace + "/" + p.Name + " priorityClassName: " + orNone(p.PriorityClassName)},
				"set priorityClassName: system-node-critical in kube-proxy's manifest"))
			cs = append(cs, r.check(p.Node, finding.Fail, ""))
		} else {
			cs = append(cs, r.check(p.Node, finding.Pass, ""))
		}
	}
	if !seen {
		return nil, skipAll(r, "no kube-proxy DaemonSet or pods in kube-system")
	}
	return fs, cs
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// kubeProxyConfig is kube-proxy's effective clusterCIDR and mode, and where
// they were read.
type kubeProxyConfig struct {
	clusterCIDR string
	set         bool
	mode        string
	source      string
}

// apiKubeProxyConfig reads the DaemonSet's flags, then the ConfigMap's
// config.conf (flags win, as in kube-proxy).
func apiKubeProxyConfig(s *Snapshot) (kubeProxyConfig, bool) {
	var c kubeProxyConfig
	ds := kubeProxyDaemonSet(s)
	found := false
	if cm, ok := s.ConfigMaps[KubeSystem+"/kube-proxy"]; ok {
		for _, key := range []string{"config.conf", "config.yaml", "kube-proxy-config"} {
			if txt, ok := cm[key]; ok {
				found = true
				v, set := yamlScalar(txt, "clusterCIDR")
				if set && v != "" {
					c.clusterCIDR, c.set = v, true
				}
				if m, ok := yamlScalar(txt, "mode"); ok {
					c.mode = m
				}
				c.source = "ConfigMap kube-system/kube-proxy " + key
				break
			}
		}
	}
	if ds != nil {
		found = true
		for _, ctr := range ds.Containers {
			flags := ParseFlags(append(append([]string(nil), ctr.Command...), ctr.Args...))
			if v, ok := flags["cluster-cidr"]; ok && v != "" {
				c.clusterCIDR, c.set = v, true
				c.source = "DaemonSet " + ds.Key() + " container " + ctr.Name + " --cluster-cidr"
			}
			if v, ok := flags["proxy-mode"]; ok {
				c.mode = v
			}
		}
		if c.source == "" {
			c.source = "DaemonSet " + ds.Key() + " (no --cluster-cidr flag, no kube-proxy ConfigMap)"
		}
	}
	return c, found
}

// ParseFlags reads --name=value and --name value arguments into a map (name
// without dashes). A flag without a value is "true".
func ParseFlags(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		a = strings.TrimLeft(a, "-")
		if k, v, ok := strings.Cut(a, "="); ok {
			out[k] = v
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out[a] = args[i+1]
			i++
			continue
		}
		out[a] = "true"
	}
	return out
}

// yamlScalar finds "key: value" at any indentation in a small YAML
// document (kube-proxy's KubeProxyConfiguration is flat for these keys).
func yamlScalar(doc, key string) (string, bool) {
	for _, line := range strings.Split(doc, "\n") {
		t := strings.TrimSpace(line)
		if k, v, ok := strings.Cut(t, ":"); ok && strings.TrimSpace(k) == key {
			v = strings.TrimSpace(v)
			if i := strings.Index(v, " #"); i >= 0 {
				v = strings.TrimSpace(v[:i])
			}
			return strings.Trim(v, `"'`), true
		}
	}
	return "", false
}

// effectiveKubeProxy returns, per node, the kube-proxy clusterCIDR setting:
// the agent's view of the running process when it has one, else the API's.
func effectiveKubeProxy(in *Input) (map[string]kubeProxyConfig, string) {
	api, found := apiKubeProxyConfig(in.Cluster)
	out := map[string]kubeProxyConfig{}
	for _, n := range nodeNames(in.Cluster) {
		if a := in.Agents[n]; a != nil && a.Summary.KubeProxy != nil && a.Summary.KubeProxy.Running {
			kp := a.Summary.KubeProxy
			v, ok := kp.Flags["cluster-cidr"]
			src := fmt.Sprintf("running kube-proxy (pid %d) on %s", kp.PID, n)
			if kp.ClusterCIDRFrom != "" {
				src += " (" + kp.ClusterCIDRFrom + ")"
			}
			c := kubeProxyConfig{clusterCIDR: v, set: ok && v != "", mode: kp.Mode, source: src}
			if !c.set && kp.ConfigUnreadable != "" {
				// Its config file was not readable: unknown, not unset.
				if found {
					out[n] = api
				}
				continue
			}
			out[n] = c
			continue
		}
		if found {
			out[n] = api
		}
	}
	if len(out) == 0 {
		return nil, "kube-proxy's configuration was not found: no kube-proxy DaemonSet or ConfigMap in kube-system and " + noAgents
	}
	return out, ""
}

func severityForMode(mode string) finding.Severity {
	if mode == "ipvs" {
		return finding.Critical
	}
	return finding.Warning
}

func ruleClusterCIDRMissing(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	per, why := effectiveKubeProxy(in)
	if per == nil {
		return nil, skipAll(r, why)
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range nodeNames(in.Cluster) {
		c, ok := per[n]
		if !ok {
			continue
		}
		if c.set {
			cs = append(cs, r.check(n, finding.Pass, ""))
			continue
		}
		f := r.finding(n, "kube-proxy", "kube-proxy on "+n+" runs without clusterCIDR: traffic from the node and hostNetwork pods to ClusterIPs is not masqueraded (in IPVS mode its source stays the ClusterIP and replies never come back)",
			[]string{c.source + ": clusterCIDR not set", "mode: " + orNone(c.mode), "pod CIDRs of the nodes: " + strings.Join(allPodCIDRs(in.Cluster), ", ")},
			"set clusterCIDR in the kube-proxy ConfigMap (config.conf) or --cluster-cidr to the pod network, e.g. "+suggestClusterCIDR(in.Cluster)+"; restart kube-proxy; verify `iptables-save -t nat | grep KUBE-MARK-MASQ` shows `! -s <pod CIDR>`")
		f.Severity = severityForMode(c.mode)
		fs = append(fs, f)
		cs = append(cs, r.check(n, finding.Fail, ""))
	}
	return fs, cs
}

func allPodCIDRs(s *Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range s.Nodes {
		for _, c := range n.PodCIDRs {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	sort.Strings(out)
	return out
}

// suggestClusterCIDR is the smallest prefix covering every node's pod CIDR
// (IPv4), or the flannel network when a node annotation says it.
func suggestClusterCIDR(s *Snapshot) string {
	var pfx []netip.Prefix
	for _, c := range allPodCIDRs(s) {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
			pfx = append(pfx, p.Masked())
		}
	}
	if len(pfx) == 0 {
		return "<the pod network CIDR>"
	}
	cover := pfx[0]
	for _, p := range pfx[1:] {
		for !cover.Contains(p.Addr()) || cover.Bits() > p.Bits() {
			cover = netip.PrefixFrom(cover.Addr(), cover.Bits()-1).Masked()
		}
	}
	return cover.String()
}

func ruleClusterCIDRWrong(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	per, why := effectiveKubeProxy(in)
	if per == nil {
		return nil, skipAll(r, why)
	}
	var svcPrefixes []netip.Prefix
	for _, c := range in.Cluster.ServiceCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			svcPrefixes = append(svcPrefixes, p)
		}
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range nodeNames(in.Cluster) {
		c, ok := per[n]
		if !ok || !c.set {
			continue
		}
		var ranges []netip.Prefix
		var bad []string
		for _, part := range strings.Split(c.clusterCIDR, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(part))
			if err != nil {
				bad = append(bad, fmt.Sprintf("clusterCIDR %q is not a CIDR", part))
				continue
			}
			ranges = append(ranges, p.Masked())
		}
		var ev []string
		ev = append(ev, bad...)
		for _, sp := range svcPrefixes {
			for _, p := range ranges {
				if p.Overlaps(sp) {
					ev = append(ev, fmt.Sprintf("clusterCIDR %s overlaps the Service CIDR %s (%s)", p, sp, in.Cluster.ServiceCIDRSource))
				}
			}
		}
		for _, node := range in.Cluster.Nodes {
			for _, pc := range node.PodCIDRs {
				pp, err := netip.ParsePrefix(pc)
				if err != nil || !hasFamily(ranges, pp.Addr().Is4()) {
					continue
				}
				covered := false
				for _, p := range ranges {
					if p.Addr().Is4() == pp.Addr().Is4() && p.Bits() <= pp.Bits() && p.Contains(pp.Addr()) {
						covered = true
					}
				}
				if !covered {
					ev = append(ev, fmt.Sprintf("node %s pod CIDR %s is outside clusterCIDR %s", node.Name, pc, c.clusterCIDR))
				}
			}
		}
		if len(ev) == 0 {
			cs = append(cs, r.check(n, finding.Pass, ""))
			continue
		}
		if len(ev) > 10 {
			ev = append(ev[:10:10], fmt.Sprintf("... and %d more", len(ev)-10))
		}
		ev = append([]string{c.source + ": clusterCIDR " + c.clusterCIDR}, ev...)
		f := r.finding(n, "kube-proxy", "kube-proxy on "+n+" has clusterCIDR "+c.clusterCIDR+", which is not the pod network: ClusterIP traffic from the node is masqueraded wrongly or not at all",
			ev, "set clusterCIDR (or --cluster-cidr) to the pod network "+suggestClusterCIDR(in.Cluster)+", not the Service CIDR; restart kube-proxy and verify the `! -s <pod CIDR> -j KUBE-MARK-MASQ` rule")
		f.Severity = severityForMode(c.mode)
		fs = append(fs, f)
		cs = append(cs, r.check(n, finding.Fail, ""))
	}
	return fs, cs
}

func hasFamily(ps []netip.Prefix, v4 bool) bool {
	for _, p := range ps {
		if p.Addr().Is4() == v4 {
			return true
		}
	}
	return false
}
