package cluster

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/finding"
)

// glibc's resolver limits (resolv.h MAXNS, MAXDNSRCH and the search
// buffer): entries beyond them are ignored by older glibc and by musl.
const (
	maxNameservers  = 3
	maxSearch       = 6
	maxSearchChars  = 256
	kubeletNDots    = 5
	maxResolvPods   = 200 // pods per node an agent reads the resolv.conf of
	policyFirst     = "ClusterFirst"
	policyFirstHost = "ClusterFirstWithHostNet"
)

// ResolvPod is a pod whose resolv.conf its node's agent reads.
type ResolvPod struct {
	Node   string `json:"node"`
	Pod    string `json:"pod"` // ns/name
	UID    string `json:"uid,omitempty"`
	IP     string `json:"ip,omitempty"`
	Policy string `json:"policy,omitempty"` // dnsPolicy ("" = ClusterFirst)
	NDots  string `json:"ndots,omitempty"`  // from spec.dnsConfig
}

// PodResolv is an agent's verdict on one pod's resolv.conf (compact: the
// content only when something is wrong).
type PodResolv struct {
	Pod      string   `json:"p"`
	Status   string   `json:"s"`           // ok, wrong, error
	Problems []string `json:"x,omitempty"` // what is wrong, or why it could not be read
	Critical bool     `json:"c,omitempty"` // names fail (not just a limit exceeded)
	Conf     string   `json:"conf,omitempty"`
	From     string   `json:"from,omitempty"` // the file read, /proc/PID/root/etc/resolv.conf
}

// ResolvConf is a parsed resolv.conf.
type ResolvConf struct {
	Nameservers []string
	Search      []string
	Options     map[string]string
}

// ParseResolvConf parses resolv.conf text as glibc does: "nameserver",
// "search" and "domain" (the last of the two wins), "options"; comments
// start with '#' or ';'.
func ParseResolvConf(text string) ResolvConf {
	c := ResolvConf{Options: map[string]string{}}
	for _, line := range strings.Split(text, "\n") {
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 {
				c.Nameservers = append(c.Nameservers, f[1])
			}
		case "search":
			c.Search = append([]string(nil), f[1:]...)
		case "domain":
			if len(f) > 1 {
				c.Search = []string{f[1]}
			}
		case "options":
			for _, o := range f[1:] {
				k, v, _ := strings.Cut(o, ":")
				c.Options[k] = v
			}
		}
	}
	return c
}

// CheckResolvConf compares a pod's resolv.conf with what the kubelet
// writes for its dnsPolicy: for ClusterFirst pods the cluster DNS Service
// as nameserver, the search list "<ns>.svc.<domain> svc.<domain> <domain>"
// first, ndots as set (5 by default); for every pod glibc's limits. It
// returns the problems and whether they make names fail (critical).
func CheckResolvConf(text string, p ResolvPod, dnsServer, domain string) (problems []string, critical bool) {
	c := ParseResolvConf(text)
	policy := p.Policy
	if policy == "" {
		policy = policyFirst
	}
	if policy == policyFirst || policy == policyFirstHost {
		ns, _, _ := strings.Cut(p.Pod, "/")
		switch {
		case len(c.Nameservers) == 0:
			problems = append(problems, "no nameserver line (the resolver falls back to 127.0.0.1); want "+dnsServer+", the cluster DNS Service")
			critical = true
		case dnsServer != "" && c.Nameservers[0] != dnsServer:
			problems = append(problems, fmt.Sprintf("nameserver %s, not the cluster DNS Service %s", strings.Join(c.Nameservers, " "), dnsServer))
			critical = true
		}
		want := []string{ns + ".svc." + domain, "svc." + domain, domain}
		if len(c.Search) < 3 || strings.Join(c.Search[:3], " ") != strings.Join(want, " ") {
			problems = append(problems, fmt.Sprintf("search list %q, want it to start with %q: short Service names (web, web.%s) do not resolve", strings.Join(c.Search, " "), strings.Join(want, " "), ns))
			critical = true
		}
		wantN := kubeletNDots
		if n, err := strconv.Atoi(p.NDots); err == nil {
			wantN = n
		}
		got, ok := c.Options["ndots"]
		if n, err := strconv.Atoi(got); !ok || err != nil || n != wantN {
			if !ok {
				got = "unset (resolver default 1)"
			}
			problems = append(problems, fmt.Sprintf("ndots %s, want %d: names with dots go to the upstream before the search list", got, wantN))
		}
	}
	if len(c.Nameservers) > maxNameservers {
		problems = append(problems, fmt.Sprintf("%d nameservers: glibc uses the first %d, ignores %s", len(c.Nameservers), maxNameservers, strings.Join(c.Nameservers[maxNameservers:], " ")))
	}
	if n := len(strings.Join(c.Search, " ")); len(c.Search) > maxSearch || n > maxSearchChars {
		problems = append(problems, fmt.Sprintf("search list of %d domains, %d characters: beyond glibc's limits (%d domains, %d characters) the rest is ignored by older glibc and musl", len(c.Search), n, maxSearch, maxSearchChars))
	}
	return problems, critical
}

// resolvPods lists the pods whose resolv.conf the agents read: running,
// not hostNetwork, on the wanted nodes, at most maxResolvPods per node.
func resolvPods(s *Snapshot, want map[string]bool) []ResolvPod {
	var out []ResolvPod
	per := map[string]int{}
	for _, p := range s.Pods {
		if p.Node == "" || p.HostNetwork || p.Phase != "Running" || p.Deleting || (len(want) > 0 && !want[p.Node]) || per[p.Node] >= maxResolvPods {
			continue
		}
		per[p.Node]++
		r := ResolvPod{Node: p.Node, Pod: p.Namespace + "/" + p.Name, UID: p.UID, Policy: p.DNSPolicy, NDots: p.NDots}
		if len(p.PodIPs) > 0 {
			r.IP = p.PodIPs[0]
		}
		out = append(out, r)
	}
	return out
}

func init() {
	register(&Rule{ID: "pod-resolv-conf-wrong", Severity: finding.Critical, Title: "a pod's resolv.conf does not match the cluster DNS", Run: rulePodResolvConf})
}

// rulePodResolvConf turns the agents' per-pod resolv.conf verdicts into
// findings on the pod's node: critical when names fail (nameserver, search
// list), warning for ndots and glibc's limits.
func rulePodResolvConf(in *Input, r *Rule) ([]finding.Finding, []finding.Check) {
	if in.Spec == nil || len(in.Agents) == 0 {
		return nil, skipAll(r, "needs the agents (they read each pod's resolv.conf)")
	}
	var fs []finding.Finding
	var cs []finding.Check
	for _, n := range agentNodes(in) {
		expected := 0
		for _, p := range in.Spec.ResolvPods {
			if p.Node == n {
				expected++
			}
		}
		a := in.Agents[n]
		if expected == 0 {
			cs = append(cs, r.check(n, finding.Skipped, "no pod on this node to read the resolv.conf of"))
			continue
		}
		if len(a.PodResolv) == 0 {
			cs = append(cs, r.check(n, finding.Skipped, "the agent returned no resolv.conf verdicts (an older agent?)"))
			continue
		}
		wrong, errs := 0, []string{}
		for _, pr := range a.PodResolv {
			switch pr.Status {
			case ProbeError:
				errs = append(errs, pr.Pod+": "+strings.Join(pr.Problems, "; "))
			case "wrong":
				wrong++
				ev := []string{"read " + orNone(pr.From) + ": " + strings.ReplaceAll(strings.TrimSpace(pr.Conf), "\n", " | ")}
				ev = append(ev, pr.Problems...)
				ev = append(ev, "cluster DNS Service: "+orNone(in.Spec.DNSServer)+", cluster domain: "+orNone(in.Spec.ClusterDomain))
				f := r.finding(n, "pod/"+pr.Pod, "pod "+pr.Pod+" on "+n+": its resolv.conf "+strings.Join(pr.Problems, "; "), ev,
					"the kubelet writes the pod's resolv.conf at start: check the pod's dnsPolicy and dnsConfig (kubectl get pod -o yaml), the kubelet's --cluster-dns / --cluster-domain (clusterDNS in its config) and anything in the image or an init container that rewrites /etc/resolv.conf; recreate the pod; verify: kubectl exec POD -- cat /etc/resolv.conf")
				if !pr.Critical {
					f.Severity = finding.Warning
				}
				fs = append(fs, f)
			}
		}
		switch {
		case wrong > 0:
			cs = append(cs, r.check(n, finding.Fail, ""))
		case len(errs) > 0:
			cs = append(cs, r.check(n, finding.Error, strings.Join(errs, "; ")))
		default:
			cs = append(cs, r.check(n, finding.Pass, fmt.Sprintf("%d pod(s) checked", len(a.PodResolv))))
		}
	}
	return fs, cs
}
