package cluster

import (
	"fmt"
	"sort"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

func init() {
	register(&Rule{ID: "dns-upstream-failed", Severity: finding.Critical, Title: "external names fail through the cluster DNS", Run: ruleDNSUpstreamFailed})
}

// ruleDNSUpstreamFailed: from the nodes' host netns, cluster names resolve
// through the cluster DNS Service and the external name does not, and each
// agent asked the upstream servers directly (the Corefile's "forward ."
// targets and the --upstream ones). One cluster-wide finding (the Corefile
// is a cluster object), with one of three messages under the same ID:
//   - the forward target answers directly: CoreDNS does not get (or pass on)
//     its answers;
//   - the forward target does not answer but another upstream (--upstream)
//     does: the forward line points at a dead or wrong server;
//   - no upstream answers directly: the upstream itself is down or
//     unreachable from the nodes (said so, not blamed on CoreDNS).
//
// With no upstream to ask (forward to /etc/resolv.conf and no --upstream)
// the check is skipped with that reason; dns-resolution-failed still reports
// the failing external names.
func ruleDNSUpstreamFailed(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	if in.Spec == nil || in.Matrix == nil || len(in.Agents) == 0 {
		return nil, skipAll(r, "needs the agents' DNS probes")
	}
	external := false
	for _, q := range in.Spec.DNS {
		external = external || q.Kind == KindDNSExternal
	}
	if !external {
		return nil, skipAll(r, "no external name to probe (check --external-name NAME)")
	}
	clusterKinds := map[string]bool{KindDNSShort: true, KindDNSNS: true, KindDNSFQDN: true}
	var broken []string            // nodes: cluster names ok, external fails
	var ev []string                // the three kinds of probe result
	upOK := map[string][]string{}  // upstream -> nodes where it answered
	upBad := map[string][]string{} // upstream -> nodes where it did not
	upDetail := map[string]string{}
	healthyExternal := 0
	for _, n := range agentNodes(in) {
		a := in.Agents[n]
		res := map[string]ProbeResult{}
		for _, p := range a.Probes {
			res[p.ID] = p
		}
		var clusterOK, extFail bool
		var clusterEv, extEv string
		for _, p := range Plan(in.Spec, n) {
			pr, ok := res[p.ID]
			if !ok || p.Netns != FromHost {
				continue
			}
			switch {
			case clusterKinds[p.Kind] && pr.Status == ProbeOK && !clusterOK:
				clusterOK = true
				clusterEv = fmt.Sprintf("%s (host netns): %s at the cluster DNS %s: resolves", n, p.Target, p.Server)
			case p.Kind == KindDNSExternal && pr.Status == ProbeFail:
				extFail = true
				extEv = fmt.Sprintf("%s (host netns): %s at the cluster DNS %s: fails: %s", n, p.Target, p.Server, pr.Detail)
			case p.Kind == KindDNSExternal && pr.Status == ProbeOK:
				healthyExternal++
			case p.Kind == KindDNSUpstream && (pr.Status == ProbeOK || pr.Status == ProbeFail):
				if pr.Status == ProbeOK {
					upOK[p.Server] = append(upOK[p.Server], n)
				} else {
					upBad[p.Server] = append(upBad[p.Server], n)
				}
				if _, seen := upDetail[p.Server]; !seen || pr.Status == ProbeOK {
					upDetail[p.Server] = fmt.Sprintf("%s (host netns): %s asked directly at upstream %s: %s: %s", n, p.Target, p.Server, pr.Status, orNone(pr.Detail))
				}
			}
		}
		if clusterOK && extFail {
			broken = append(broken, n)
			if len(ev) < 4 {
				ev = append(ev, clusterEv, extEv)
			}
		}
	}
	if len(broken) == 0 {
		if healthyExternal == 0 {
			return nil, []finding.Check{r.check("", finding.Skipped, "no node resolved cluster names while failing external ones, and none resolved the external name either: see dns-resolution-failed")}
		}
		return nil, []finding.Check{r.check("", finding.Pass, "")}
	}
	ups := UpstreamServers(in.Spec)
	if len(ups) == 0 {
		why := in.Spec.UpstreamWhy
		if why == "" {
			why = "no upstream DNS server known"
		}
		return nil, []finding.Check{r.check("", finding.Skipped, "cluster names resolve and external names fail on "+strings.Join(broken, ", ")+", but no upstream was asked directly: "+why)}
	}
	var fwdOK, fwdBad, refOK []string
	isFwd := map[string]bool{}
	for _, u := range in.Spec.Upstreams {
		isFwd[u] = true
	}
	for _, u := range ups {
		if d, ok := upDetail[u]; ok {
			ev = append(ev, d)
		} else {
			ev = append(ev, "upstream "+u+": not asked (no probe result)")
		}
		switch {
		case len(upOK[u]) > 0 && isFwd[u]:
			fwdOK = append(fwdOK, u)
		case len(upOK[u]) > 0:
			refOK = append(refOK, u)
		case isFwd[u] && len(upBad[u]) > 0:
			fwdBad = append(fwdBad, u)
		}
	}
	sort.Strings(broken)
	where := "from " + strings.Join(broken, ", ")
	fwd := "forward . " + strings.Join(in.Spec.Upstreams, " ")
	if len(in.Spec.Upstreams) > 0 {
		ev = append(ev, "configmap kube-system/coredns Corefile: "+fwd)
	}
	var msg, fix string
	switch {
	case len(fwdOK) > 0:
		msg = where + ", cluster names resolve but external names fail through the cluster DNS, though CoreDNS's upstream " + strings.Join(fwdOK, ", ") + " answers when asked directly from the node: CoreDNS does not get or pass on the upstream's answers"
		fix = "kubectl -n kube-system logs -l k8s-app=kube-dns (forward errors, i/o timeouts); check the CoreDNS pods' path to the upstream (egress policies, the CoreDNS pods' nodes' firewall and routes) and the forward block's options; verify: nslookup <external name> from a pod"
	case len(refOK) > 0:
		msg = where + ", cluster names resolve but external names fail: CoreDNS forwards to " + orNone(strings.Join(fwdBad, ", ")) + ", which does not answer, while the upstream " + strings.Join(refOK, ", ") + " answers when asked directly"
		fix = "kubectl -n kube-system edit configmap coredns: set \"forward . " + strings.Join(refOK, " ") + "\" (or the resolver the nodes use), then kubectl -n kube-system rollout restart deploy coredns; verify: nslookup <external name> from a pod"
	default:
		msg = where + ", cluster names resolve but external names fail, and the upstream " + strings.Join(ups, ", ") + " itself does not answer when asked directly from the nodes: the upstream server is down or unreachable, not CoreDNS"
		fix = "check the upstream server and the nodes' path to it (dig @<upstream> <external name> from a node); if it is gone, point the Corefile's forward line at a working resolver"
	}
	return []finding.Finding{r.finding("", "configmap/kube-system/coredns", msg, ev, fix)}, []finding.Check{r.check("", finding.Fail, "")}
}
