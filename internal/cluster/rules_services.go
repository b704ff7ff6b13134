package cluster

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	register(&Rule{ID: "service-no-endpoints", Severity: finding.Warning, Title: "a Service has no ready endpoints", Run: ruleServiceNoEndpoints})
	register(&Rule{ID: "dns-pods-unavailable", Severity: finding.Critical, Title: "the cluster DNS Service has no ready endpoints", Run: ruleDNSPodsUnavailable})
	register(&Rule{ID: "node-pod-cidr-missing", Severity: finding.Critical, Title: "a node has no pod CIDR", Run: ruleNodePodCIDRMissing})
	register(&Rule{ID: "service-rules-missing", Severity: finding.Critical, Title: "a node lacks NAT rules for Services the API has", Run: ruleServiceRulesMissing})
	register(&Rule{ID: "endpoint-not-listening", Severity: finding.Critical, Title: "a Service endpoint does not listen on its target port", Run: ruleEndpointNotListening})
}

// slicesOf groups EndpointSlices by "namespace/service".
func slicesOf(s *Snapshot) map[string][]*EndpointSlice {
	out := map[string][]*EndpointSlice{}
	for i := range s.EndpointSlices {
		e := &s.EndpointSlices[i]
		if e.Service != "" {
			out[e.Namespace+"/"+e.Service] = append(out[e.Namespace+"/"+e.Service], e)
		}
	}
	return out
}

// readyEndpoints counts the ready endpoint addresses of a Service's slices.
func readyEndpoints(slices []*EndpointSlice) (ready, notReady int) {
	for _, e := range slices {
		for _, ep := range e.Endpoints {
			if ep.Ready {
				ready += len(ep.Addresses)
			} else {
				notReady += len(ep.Addresses)
			}
		}
	}
	return ready, notReady
}

func selectorString(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}

func matches(sel, lbl map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lbl[k] != v {
			return false
		}
	}
	return true
}

func selectedPods(s *Snapshot, svc *Service) []*Pod {
	var out []*Pod
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Namespace == svc.Namespace && matches(svc.Selector, p.Labels) {
			out = append(out, p)
		}
	}
	return out
}

// targetPortProblems says which ports of svc match no container port of the
// selected pods: a named targetPort no container declares, or a numeric one
// where containers declare ports of that protocol but not this one.
func targetPortProblems(svc *Service, pods []*Pod) []string {
	if len(pods) == 0 {
		return nil
	}
	var out []string
	for _, sp := range svc.Ports {
		tp := sp.TargetPort
		if tp == "" || tp == "0" {
			tp = strconv.Itoa(int(sp.Port))
		}
		num, err := strconv.Atoi(tp)
		var declared []string
		found := false
		for _, p := range pods {
			for _, c := range p.Containers {
				for _, cp := range c.Ports {
					if cp.Protocol != "" && sp.Protocol != "" && cp.Protocol != sp.Protocol {
						continue
					}
					d := strconv.Itoa(int(cp.Port))
					if cp.Name != "" {
						d = cp.Name + "=" + d
					}
					declared = append(declared, p.Name+"/"+c.Name+":"+d)
					if (err != nil && cp.Name == tp) || (err == nil && int(cp.Port) == num) {
						found = true
					}
				}
			}
		}
		if found {
			continue
		}
		if err != nil {
			out = append(out, fmt.Sprintf("port %d targetPort %q: no container of the selected pods declares a port named %q (declared: %s)", sp.Port, tp, tp, orNone(strings.Join(uniq(declared), ", "))))
		} else if len(declared) > 0 {
			out = append(out, fmt.Sprintf("port %d targetPort %d: no container of the selected pods declares port %d (declared: %s)", sp.Port, num, num, strings.Join(uniq(declared), ", ")))
		}
	}
	return out
}

func uniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	if len(out) > 6 {
		out = append(out[:6], fmt.Sprintf("... %d more", len(out)-6))
	}
	return out
}

func ruleServiceNoEndpoints(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	if _, bad := s.Errors["endpointslices"]; bad {
		return nil, skipAll(r, "EndpointSlices could not be listed: "+s.Errors["endpointslices"])
	}
	slices := slicesOf(s)
	var fs []finding.Finding
	failed := 0
	dns := dnsService(s)
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Type == "ExternalName" || svc == dns || svc.Namespace == AgentNamespace {
			continue // the DNS Service is dns-pods-unavailable's; netdoctor's own target is the matrix's
		}
		sl := slices[svc.Key()]
		if len(svc.Selector) == 0 && len(sl) == 0 {
			continue // endpoints managed by hand and none written: nothing to compare
		}
		ready, notReady := readyEndpoints(sl)
		pods := selectedPods(s, svc)
		tpp := targetPortProblems(svc, pods)
		if ready > 0 && len(tpp) == 0 {
			continue
		}
		var ev []string
		msg := ""
		switch {
		case ready > 0:
			msg = "Service " + svc.Key() + " has endpoints but its targetPort matches no container port"
		case len(svc.Selector) > 0 && len(pods) == 0:
			msg = "Service " + svc.Key() + " selects no pod: its selector matches nothing"
			ev = append(ev, fmt.Sprintf("selector %s matches no pod in namespace %s", selectorString(svc.Selector), svc.Namespace))
		case len(svc.Selector) > 0:
			msg = "Service " + svc.Key() + " has no ready endpoint"
			for _, p := range pods {
				st := podProblem(p)
				if st == "" {
					st = "running and ready"
				}
				ev = append(ev, fmt.Sprintf("pod %s/%s on %s: %s", p.Namespace, p.Name, orNone(p.Node), st))
			}
		default:
			msg = "Service " + svc.Key() + " has no ready endpoint"
		}
		ev = append(ev, fmt.Sprintf("EndpointSlices of %s: %d, ready addresses %d, not ready %d", svc.Key(), len(sl), ready, notReady))
		ev = append(ev, tpp...)
		if len(tpp) > 0 && ready == 0 && len(svc.Selector) > 0 && len(pods) > 0 {
			msg += "; its targetPort matches no container port"
		}
		fix := "kubectl -n " + svc.Namespace + " get endpointslices -l kubernetes.io/service-name=" + svc.Name + " -o wide; "
		if len(svc.Selector) > 0 {
			fix += "kubectl -n " + svc.Namespace + " get pods -l " + selectorString(svc.Selector) + " -o wide; fix the selector, scale the backend up or make its pods ready"
		}
		if len(tpp) > 0 {
			fix += "; set the Service's targetPort to a port the containers listen on"
		}
		fs = append(fs, r.finding("", "service/"+svc.Key(), msg+": connections to its ClusterIP are refused or time out", ev, fix))
		failed++
	}
	if failed > 0 {
		return fs, []finding.Check{r.check("", finding.Fail, fmt.Sprintf("%d Services", failed))}
	}
	return nil, []finding.Check{r.check("", finding.Pass, "")}
}

// dnsService is the cluster DNS Service (kube-system/kube-dns, or labelled
// k8s-app=kube-dns).
func dnsService(s *Snapshot) *Service {
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Namespace == KubeSystem && svc.Name == "kube-dns" {
			return svc
		}
	}
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Namespace == KubeSystem && svc.Selector["k8s-app"] == "kube-dns" {
			return svc
		}
	}
	return nil
}

func ruleDNSPodsUnavailable(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	svc := dnsService(s)
	if svc == nil {
		return nil, skipAll(r, "no cluster DNS Service (kube-system/kube-dns) in the API")
	}
	sl := slicesOf(s)[svc.Key()]
	ready, notReady := readyEndpoints(sl)
	if ready > 0 {
		return nil, []finding.Check{r.check("", finding.Pass, "")}
	}
	ev := []string{fmt.Sprintf("Service %s (%s): %d EndpointSlices, ready addresses 0, not ready %d", svc.Key(), strings.Join(svc.ClusterIPs, ","), len(sl), notReady)}
	for _, d := range s.Deployments {
		if d.Namespace == KubeSystem && (d.Name == "coredns" || d.Name == "kube-dns" || d.Labels["k8s-app"] == "kube-dns") {
			ev = append(ev, fmt.Sprintf("Deployment %s: replicas %d, ready %d, available %d", d.Key(), d.Desired, d.Ready, d.Available))
		}
	}
	for _, p := range selectedPods(s, svc) {
		st := podProblem(p)
		if st == "" {
			st = "running and ready"
		}
		ev = append(ev, fmt.Sprintf("pod %s/%s on %s: %s", p.Namespace, p.Name, orNone(p.Node), st))
	}
	return []finding.Finding{r.finding("", "service/"+svc.Key(), "the cluster DNS Service has no ready endpoint: every name lookup in the cluster fails", ev,
			"kubectl -n kube-system get deploy,pods -l k8s-app=kube-dns -o wide; scale CoreDNS up (kubectl -n kube-system scale deploy coredns --replicas=2) or fix why its pods are not ready; verify with nslookup kubernetes.default from a pod")},
		[]finding.Check{r.check("", finding.Fail, "")}
}

func ruleNodePodCIDRMissing(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	s := in.Cluster
	with := 0
	for _, n := range s.Nodes {
		if len(n.PodCIDRs) > 0 {
			with++
		}
	}
	if with == 0 {
		return nil, skipAll(r, "no node has spec.podCIDR: the controller-manager does not allocate pod CIDRs here (the CNI's own IPAM does)")
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range s.Nodes {
		if len(n.PodCIDRs) > 0 {
			cs = append(cs, r.check(n.Name, finding.Pass, ""))
			continue
		}
		fs = append(fs, r.finding(n.Name, "node/"+n.Name, "node "+n.Name+" has no pod CIDR: pods scheduled there never get an IP (the cluster CIDR is probably exhausted)",
			[]string{fmt.Sprintf("node %s spec.podCIDR: (none); %d of %d nodes have one: %s", n.Name, with, len(s.Nodes), strings.Join(allPodCIDRs(s), ", ")),
				"the controller-manager logs \"CIDRNotAvailable\" / an event on the node when the range is exhausted"},
			"kubectl get nodes -o custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR; enlarge kube-controller-manager --cluster-cidr or reduce --node-cidr-mask-size (or remove dead nodes); verify the node gets spec.podCIDR"))
		cs = append(cs, r.check(n.Name, finding.Fail, ""))
	}
	return fs, cs
}

// expectedServiceRules computes, from the API, the NAT targets kube-proxy
// must program for each ClusterIP Service port: key "ns/name port/proto" ->
// ready endpoints (ip:port). Services with no ready endpoint are left out
// (kube-proxy programs a reject there, not a DNAT).
func expectedServiceRules(s *Snapshot) map[string][]string {
	slices := slicesOf(s)
	out := map[string][]string{}
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Type == "ExternalName" || svc.Headless() {
			continue
		}
		for _, sp := range svc.Ports {
			var targets []string
			for _, e := range slices[svc.Key()] {
				port := int32(-1)
				for _, ep := range e.Ports {
					if ep.Name == sp.Name && (ep.Protocol == "" || ep.Protocol == sp.Protocol) {
						port = ep.Port
					}
				}
				if port < 0 {
					continue
				}
				for _, ep := range e.Endpoints {
					if !ep.Ready {
						continue
					}
					for _, a := range ep.Addresses {
						targets = append(targets, joinHostPort(a, int(port)))
					}
				}
			}
			if len(targets) > 0 {
				out[svc.Key()+" "+fmt.Sprintf("%d/%s", sp.Port, sp.Protocol)] = targets
			}
		}
	}
	return out
}

// ExpectedServiceRules is expectedServiceRules as ServiceRule fingerprints
// (with Targets), sorted by key: what an agent compares its node against.
func ExpectedServiceRules(s *Snapshot) []ServiceRule {
	exp := expectedServiceRules(s)
	ips := map[string]string{}
	for _, svc := range s.Services {
		if !svc.Headless() {
			ips[svc.Key()] = svc.ClusterIPs[0]
		}
	}
	out := make([]ServiceRule, 0, len(exp))
	for k, t := range exp {
		svc, port, _ := strings.Cut(k, " ")
		sort.Strings(t)
		out = append(out, ServiceRule{Service: svc, Port: port, ClusterIP: ips[svc], Endpoints: len(t), Hash: EndpointsHash(t), Targets: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

func ruleServiceRulesMissing(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	if len(in.Agents) == 0 {
		return nil, skipAll(r, noAgents)
	}
	exp := expectedServiceRules(in.Cluster)
	changedAt := serviceChangeTimes(in.Cluster)
	expHash := make(map[string]string, len(exp))
	keys := make([]string, 0, len(exp))
	for k, v := range exp {
		expHash[k] = EndpointsHash(v)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range agentNodes(in) {
		a := in.Agents[n]
		if a.ServiceRulesError != "" {
			cs = append(cs, r.check(n, finding.Skipped, "the agent could not read the service rules: "+a.ServiceRulesError))
			continue
		}
		if len(a.ServiceRules) == 0 {
			// No rules at all is kube-proxy-not-running's evidence.
			cs = append(cs, r.check(n, finding.Skipped, "no service rules at all on the node (see kube-proxy-not-running)"))
			continue
		}
		have := make(map[string]ServiceRule, len(a.ServiceRules))
		for _, sr := range a.ServiceRules {
			have[sr.Key()] = sr
		}
		var ev []string
		var subjects, recent, churn []string
		for _, k := range keys {
			want := exp[k]
			got, ok := have[k]
			differs := !ok || got.Hash != expHash[k]
			if differs && recentlyChanged(changedAt[k], in.Cluster.CollectedAt) {
				// kube-proxy may simply not have synced this change yet.
				recent = append(recent, k)
				continue
			}
			if differs && a.ServiceRulesCompared && !slices.Contains(a.ServiceRulesDiffer, k) {
				// The node agreed with the API as the agent read it: the API changed since.
				churn = append(churn, k)
				continue
			}
			switch {
			case !ok:
				ev = append(ev, fmt.Sprintf("%s: no %s rule on %s; the API has %d ready endpoints (%s)", k, orNone(a.ServiceRulesMode), n, len(want), short(want)))
				subjects = append(subjects, k)
			case got.Hash != expHash[k]:
				e := fmt.Sprintf("%s: %d DNAT targets on %s, the API has %d ready endpoints", k, got.Endpoints, n, len(want))
				if len(got.Targets) > 0 {
					miss, extra := diff(want, got.Targets)
					if len(miss) > 0 {
						e += "; missing " + short(miss)
					}
					if len(extra) > 0 {
						e += "; stale " + short(extra)
					}
				}
				ev = append(ev, e)
				subjects = append(subjects, k)
			}
		}
		if len(ev) == 0 {
			var why []string
			if len(recent) > 0 {
				why = append(why, fmt.Sprintf("%d Service port(s) created less than %s before the check and differ on %s (%s): kube-proxy may not have synced them yet",
					len(recent), SyncGrace, n, strings.Join(recent, ", ")))
			}
			if len(churn) > 0 {
				why = append(why, fmt.Sprintf("%d Service port(s) matched %s's rules when its agent compared them with the API, and changed in the API since (%s)",
					len(churn), n, strings.Join(churn, ", ")))
			}
			if len(why) > 0 {
				cs = append(cs, r.check(n, finding.Skipped, strings.Join(why, "; ")+"; run the check again"))
				continue
			}
			cs = append(cs, r.check(n, finding.Pass, ""))
			continue
		}
		if len(ev) > 20 {
			ev = append(ev[:20], fmt.Sprintf("... and %d more Service ports", len(ev)-20))
		}
		ev = append(ev, "EndpointSlices change while the check runs; a difference seen once may be churn: run the check again")
		subj := "service/" + strings.Split(subjects[0], " ")[0]
		if len(subjects) > 1 {
			subj = fmt.Sprintf("%d Service ports", len(subjects))
		}
		fs = append(fs, r.finding(n, subj, fmt.Sprintf("node %s lacks the NAT rules for %d Service port(s) the API has: pods on this node cannot reach them (stale or deleted kube-proxy rules)", n, len(subjects)),
			ev, "restart kube-proxy on "+n+" (kubectl -n kube-system delete pod -l k8s-app=kube-proxy --field-selector spec.nodeName="+n+") so it resyncs its rules, and look for whoever deletes them (a firewall script, iptables-restore of an old dump); verify with `netdoctor check` again"))
		cs = append(cs, r.check(n, finding.Fail, ""))
	}
	return fs, cs
}

// SyncGrace is how new a Service or its EndpointSlice may be for a node's
// differing rules to count as kube-proxy not having synced it yet rather
// than as missing rules. Only creation counts: a later change to an old
// Service is synced within about a second, and a node that then still lacks
// its rules is the fault this rule exists for.
const SyncGrace = 10 * time.Second

// recentlyChanged is true when a change at t happened within SyncGrace of
// the snapshot time now (both known).
func recentlyChanged(t, now time.Time) bool {
	return !t.IsZero() && !now.IsZero() && t.After(now.Add(-SyncGrace))
}

// serviceChangeTimes maps each expected-rule key ("ns/name port/proto") to
// the latest creation of its Service or any of its EndpointSlices.
func serviceChangeTimes(s *Snapshot) map[string]time.Time {
	last := map[string]time.Time{}
	for i := range s.EndpointSlices {
		e := &s.EndpointSlices[i]
		k := e.Namespace + "/" + e.Service
		if e.Created.After(last[k]) {
			last[k] = e.Created
		}
	}
	out := map[string]time.Time{}
	for i := range s.Services {
		svc := &s.Services[i]
		t := last[svc.Key()]
		if svc.Created.After(t) {
			t = svc.Created
		}
		for _, sp := range svc.Ports {
			out[svc.Key()+" "+fmt.Sprintf("%d/%s", sp.Port, sp.Protocol)] = t
		}
	}
	return out
}

func diff(want, got []string) (missing, extra []string) {
	w := map[string]bool{}
	for _, x := range want {
		w[x] = true
	}
	g := map[string]bool{}
	for _, x := range got {
		g[x] = true
		if !w[x] {
			extra = append(extra, x)
		}
	}
	for _, x := range want {
		if !g[x] {
			missing = append(missing, x)
		}
	}
	return missing, extra
}

func short(s []string) string {
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + fmt.Sprintf(" ... (%d)", len(s))
	}
	return strings.Join(s, ", ")
}

func ruleEndpointNotListening(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	if in.Spec == nil || len(in.Agents) == 0 {
		return nil, skipAll(r, "needs the agents' endpoint probes (ran with --no-agent or no probes)")
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range agentNodes(in) {
		a := in.Agents[n]
		res := map[string]ProbeResult{}
		for _, p := range a.Probes {
			res[p.ID] = p
		}
		probed, failed := 0, 0
		for _, p := range Plan(in.Spec, n) {
			if p.Kind != KindEndpoint {
				continue
			}
			pr, ok := res[p.ID]
			if !ok || pr.Status == ProbeSkipped {
				continue
			}
			probed++
			if pr.Status == ProbeOK {
				continue
			}
			// Only a refusal (or a loopback-only listener) proves that nothing
			// listens; a timeout is the path's fault, not the endpoint's.
			if !strings.Contains(pr.Detail, "refused") && !strings.Contains(pr.Detail, "127.0.0.1") {
				continue
			}
			failed++
			pod := ""
			for _, e := range in.Spec.Endpoints {
				if e.Node == n && e.Addr == p.Target && e.Service == p.Peer && (pod == "" || e.Pod != "") {
					pod = e.Pod
				}
			}
			subj := "service/" + p.Peer
			if pod != "" {
				subj = "pod/" + pod
			}
			msg := fmt.Sprintf("endpoint %s of Service %s (pod %s) does not accept connections on its target port: the Service's connections are refused", p.Target, p.Peer, orNone(pod))
			if p.Peer == "" {
				msg = fmt.Sprintf("pod %s does not accept connections on its declared port %s: connections to it are refused", orNone(pod), p.Target)
			}
			fs = append(fs, r.finding(n, subj, msg,
				[]string{fmt.Sprintf("TCP connect from node %s to %s: %s", n, p.Target, pr.Detail)},
				"check what the container listens on (kubectl exec POD -- ss -ltn, or `netdoctor exec`); make it listen on 0.0.0.0 (not 127.0.0.1) on the targetPort, or fix the Service's targetPort"))
		}
		switch {
		case failed > 0:
			cs = append(cs, r.check(n, finding.Fail, ""))
		case probed > 0:
			cs = append(cs, r.check(n, finding.Pass, ""))
		default:
			cs = append(cs, r.check(n, finding.Skipped, "no Service endpoint on this node"))
		}
	}
	return fs, cs
}
