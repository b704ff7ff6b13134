package rules

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

func init() {
	Register(Rule{
		ID:       "kube-proxy-cluster-cidr-missing",
		Severity: finding.Warning,
		Title:    "kube-proxy knows the cluster CIDR (masquerades off-cluster sources to Services)",
		Needs:    []string{},
		Docs:     "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/ (--cluster-cidr)",
		Run:      runKubeProxyCIDRMissing,
	})
	Register(Rule{
		ID:       "kube-proxy-cluster-cidr-wrong",
		Severity: finding.Warning,
		Title:    "kube-proxy's cluster CIDR contains this node's pod CIDR",
		Needs:    []string{},
		Docs:     "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/ (--cluster-cidr)",
		Run:      runKubeProxyCIDRWrong,
	})
}

// kubeProxyView is what the node shows of kube-proxy: its process (flags,
// config) and its rules.
type kubeProxyView struct {
	proc       *facts.Process
	procEv     []string       // cmdline and config lines as read
	cidrs      []netip.Prefix // from --cluster-cidr or clusterCIDR
	cidrSrc    string
	masqAll    bool
	mode       string // iptables, nftables, ipvs
	detectMode string // detectLocalMode
	// configUnread: the process names a --config the snapshot could not
	// read, so its flags alone do not say whether clusterCIDR is set.
	configUnread bool

	rulesSeen   bool           // KUBE-SERVICES chain or the kube-proxy nft table
	services    int            // cluster-IP service rules
	serviceIPs  []netip.Addr   // ClusterIPs seen in the rules
	masqRules   []string       // `! -s CIDR ... KUBE-MARK-MASQ` rules (evidence)
	masqCIDRs   []netip.Prefix // their CIDRs
	masqAllRule string         // an unconditional cluster-IP masquerade rule
	ruleSrc     string         // which dump
}

func isKubeProxy(p facts.Process) bool {
	if strings.Contains(p.Name, "kube-proxy") {
		return true
	}
	if len(p.Cmdline) > 0 && strings.Contains(filepath.Base(p.Cmdline[0]), "kube-proxy") {
		return true
	}
	return len(p.Cmdline) > 1 && p.Cmdline[1] == "kube-proxy" // multi-call binaries
}

// kubeProxyConfig is the part of KubeProxyConfiguration the rules read.
type kubeProxyConfig struct {
	ClusterCIDR     string `json:"clusterCIDR"`
	MasqueradeAll   *bool  `json:"masqueradeAll"`
	Mode            string `json:"mode"`
	DetectLocalMode string `json:"detectLocalMode"`
	IPTables        struct {
		MasqueradeAll *bool `json:"masqueradeAll"`
	} `json:"iptables"`
}

func parseCIDRList(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if p, err := netip.ParsePrefix(strings.TrimSpace(f)); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

func (in *Input) kubeProxy() *kubeProxyView {
	v := &kubeProxyView{}
	for i := range in.Node.Processes {
		p := &in.Node.Processes[i]
		if !isKubeProxy(*p) || !p.SameNetns {
			continue
		}
		v.proc = p
		v.procEv = append(v.procEv, fmt.Sprintf("kube-proxy pid %d: %s", p.PID, strings.Join(p.Cmdline, " ")))
		if c, ok := FlagValue(p.Cmdline, "cluster-cidr"); ok && c != "" {
			v.cidrs, v.cidrSrc = parseCIDRList(c), "--cluster-cidr="+c
		}
		if m, ok := FlagValue(p.Cmdline, "proxy-mode"); ok {
			v.mode = m
		}
		if m, ok := FlagValue(p.Cmdline, "detect-local-mode"); ok {
			v.detectMode = m
		}
		for _, a := range p.Cmdline {
			if a == "--masquerade-all" || a == "--masquerade-all=true" {
				v.masqAll = true
			}
		}
		if path, ok := FlagValue(p.Cmdline, "config"); ok {
			text, have := p.Config[path]
			if !have {
				v.configUnread = true
				v.procEv = append(v.procEv, fmt.Sprintf("config %s: not readable in the snapshot", path))
			} else {
				var cfg kubeProxyConfig
				if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
					v.procEv = append(v.procEv, fmt.Sprintf("config %s: not valid YAML: %v", path, err))
				} else {
					line := fmt.Sprintf("config %s: clusterCIDR: %q", path, cfg.ClusterCIDR)
					if cfg.ClusterCIDR != "" {
						// The config file wins over flags when both are given.
						v.cidrs, v.cidrSrc = parseCIDRList(cfg.ClusterCIDR), fmt.Sprintf("clusterCIDR: %s in %s", cfg.ClusterCIDR, path)
					}
					if cfg.Mode != "" {
						v.mode = cfg.Mode
						line += ", mode: " + cfg.Mode
					}
					if cfg.DetectLocalMode != "" {
						v.detectMode = cfg.DetectLocalMode
						line += ", detectLocalMode: " + cfg.DetectLocalMode
					}
					if (cfg.MasqueradeAll != nil && *cfg.MasqueradeAll) || (cfg.IPTables.MasqueradeAll != nil && *cfg.IPTables.MasqueradeAll) {
						v.masqAll = true
						line += ", masqueradeAll: true"
					}
					v.procEv = append(v.procEv, line)
				}
			}
		}
		break
	}
	nf := in.netfilterView()
	for _, rs := range nf.Rulesets {
		switch rs.Backend {
		case netfilter.BackendIptables:
			nat := rs.Table("", "nat")
			if nat == nil || nat.Chain("KUBE-SERVICES") == nil {
				continue
			}
			v.rulesSeen, v.ruleSrc = true, rs.Source
			for _, c := range nat.Chains {
				if c.Name != "KUBE-SERVICES" && !strings.HasPrefix(c.Name, "KUBE-SVC-") {
					continue
				}
				for _, r := range c.Rules {
					isClusterIP := strings.Contains(r.Comment, "cluster IP")
					if c.Name == "KUBE-SERVICES" && isClusterIP && strings.HasPrefix(r.Target, "KUBE-SVC-") {
						v.services++
						if d, ok := r.MatchOption("", "d"); ok {
							if p, err := ParsePrefixOrAddr(strings.Join(d.Values(), " ")); err == nil {
								v.serviceIPs = append(v.serviceIPs, p.Addr())
							}
						}
					}
					if r.Target != "KUBE-MARK-MASQ" || !isClusterIP {
						continue
					}
					src, hasSrc := r.MatchOption("", "s")
					switch {
					case hasSrc && src.Negated:
						v.masqRules = append(v.masqRules, fmt.Sprintf("%s nat %s rule %d: %s", rs.Source, c.Name, r.Position, r.Text))
						v.masqCIDRs = append(v.masqCIDRs, parseCIDRList(strings.Join(src.Values(), " "))...)
					case !hasSrc:
						v.masqAllRule = fmt.Sprintf("%s nat %s rule %d: %s", rs.Source, c.Name, r.Position, r.Text)
					}
				}
			}
		case netfilter.BackendNftables:
			tb := rs.Table("ip", "kube-proxy")
			if tb == nil {
				continue
			}
			v.rulesSeen, v.ruleSrc = true, rs.Source
			if s := tb.Sets["service-ips"]; s != nil {
				for _, e := range s.Elements {
					v.services++
					if len(e.Key) > 0 {
						if a, err := netip.ParseAddr(e.Key[0]); err == nil {
							v.serviceIPs = append(v.serviceIPs, a)
						}
					}
				}
			}
			for _, c := range tb.Chains {
				if strings.HasPrefix(c.Name, "external-") {
					continue // masquerade for external destinations, not the cluster-IP rule
				}
				for _, r := range c.Rules {
					marks := strings.Contains(r.Text, "mark-for-masquerade") || strings.Contains(r.Text, "| 0x4000")
					if !marks || !strings.Contains(r.Text, "daddr") {
						continue
					}
					ev := fmt.Sprintf("nft table ip kube-proxy chain %s rule %d: %s", c.Name, r.Position, r.Text)
					if i := strings.Index(r.Text, "saddr != "); i >= 0 {
						if f := strings.Fields(r.Text[i+len("saddr != "):]); len(f) > 0 {
							v.masqCIDRs = append(v.masqCIDRs, parseCIDRList(strings.Trim(f[0], "{}"))...)
							v.masqRules = append(v.masqRules, ev)
						}
					} else if !strings.Contains(r.Text, "saddr") {
						v.masqAllRule = ev
					}
				}
			}
		}
	}
	sort.Slice(v.serviceIPs, func(i, j int) bool { return v.serviceIPs[i].Less(v.serviceIPs[j]) })
	return v
}

const kubeProxyFix = "start kube-proxy with the cluster's pod network: `--cluster-cidr=<pod CIDR>` or `clusterCIDR: <pod CIDR>` in its KubeProxyConfiguration (kubeadm: the kube-proxy ConfigMap in kube-system; it must be the pod network (kube-controller-manager --cluster-cidr), not the Service range), then restart the kube-proxy pods; " +
	"verify: `iptables-save -t nat | grep -- '! -s <pod CIDR>'` shows the masquerade rules and the node reaches a ClusterIP"

func runKubeProxyCIDRMissing(in *Input) Result {
	v := in.kubeProxy()
	if v.proc == nil && !v.rulesSeen {
		return Skip("kube-proxy not seen on this node (no kube-proxy process in this network namespace, no KUBE-SERVICES chain, no kube-proxy nft table)")
	}
	if v.proc != nil {
		switch {
		case len(v.cidrs) > 0:
			return Pass("kube-proxy runs with %s", v.cidrSrc)
		case v.masqAll:
			return Pass("kube-proxy runs with masquerade-all: every source to a Service is masqueraded")
		case v.detectMode != "" && v.detectMode != "ClusterCIDR":
			return Pass("kube-proxy detects local traffic by %s, not by the cluster CIDR", v.detectMode)
		}
	}
	if v.proc != nil && !v.configUnread {
		sev := finding.Warning
		msg := "kube-proxy runs without --cluster-cidr (or clusterCIDR): traffic from the node itself and hostNetwork pods to ClusterIPs is not masqueraded, so replies from pods on other nodes can take another path back"
		if v.mode == "ipvs" {
			sev = finding.Critical
			msg = "kube-proxy runs in IPVS mode without --cluster-cidr (or clusterCIDR): the node and hostNetwork pods keep the ClusterIP as source address towards the backend, and the replies never come back"
		}
		ev := append([]string{}, v.procEv...)
		ev = append(ev, v.masqRules...)
		if len(v.masqRules) == 0 && v.rulesSeen {
			ev = append(ev, fmt.Sprintf("no `! -s <cluster CIDR> ... KUBE-MARK-MASQ` rule among %d cluster-IP service rules (%s)", v.services, v.ruleSrc))
		}
		return Result{Findings: []finding.Finding{{Severity: sev, Subject: "kube-proxy", Message: msg, Evidence: ev, Remediation: kubeProxyFix}}}
	}
	// From the rules (kube-proxy not visible, or its config unreadable).
	if len(v.masqRules) > 0 {
		return Pass("kube-proxy masquerades off-cluster sources (%d rule(s) with ! -s %s)", len(v.masqRules), v.masqCIDRs[0])
	}
	if v.masqAllRule != "" {
		return Pass("kube-proxy masquerades every source to Services (masquerade-all): %s", v.masqAllRule)
	}
	if !v.rulesSeen {
		return Skip("kube-proxy's config is not readable and it has no rules here: %s", strings.Join(v.procEv, "; "))
	}
	if v.services == 0 {
		return Skip("kube-proxy's rules hold no cluster-IP Service yet: nothing shows whether it knows the cluster CIDR")
	}
	ev := append([]string{}, v.procEv...)
	ev = append(ev, fmt.Sprintf("%d cluster-IP service rules in %s (e.g. %s), none with `! -s <cluster CIDR> ... -j KUBE-MARK-MASQ` and none masquerading every source", v.services, v.ruleSrc, firstIPs(v.serviceIPs, 3)))
	return Result{Findings: []finding.Finding{{
		Subject:     "kube-proxy",
		Message:     "kube-proxy's Service rules masquerade no off-cluster source: it runs without --cluster-cidr (and without --masquerade-all), so the node and hostNetwork pods reaching ClusterIPs are not masqueraded",
		Evidence:    ev,
		Remediation: kubeProxyFix,
	}}}
}

func firstIPs(as []netip.Addr, n int) string {
	var s []string
	for i, a := range as {
		if i == n {
			s = append(s, "...")
			break
		}
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

func runKubeProxyCIDRWrong(in *Input) Result {
	v := in.kubeProxy()
	if v.proc == nil && !v.rulesSeen {
		return Skip("kube-proxy not seen on this node (no kube-proxy process in this network namespace, no KUBE-SERVICES chain, no kube-proxy nft table)")
	}
	cidrs, src := v.cidrs, v.cidrSrc
	ev := append([]string{}, v.procEv...)
	if len(cidrs) == 0 && len(v.masqCIDRs) > 0 {
		cidrs, src = uniqPrefixes(v.masqCIDRs), "the masquerade rules"
	}
	ev = append(ev, firstN(v.masqRules, 2)...)
	if len(cidrs) == 0 {
		return Skip("kube-proxy's cluster CIDR is not set (see kube-proxy-cluster-cidr-missing)")
	}
	t := in.Topology()
	if len(t.NodePodCIDRs) == 0 {
		return Skip("this node's pod CIDR is unknown (no pod bridge address, no flannel subnet.env): pass --pod-cidr")
	}
	own := t.NodePodCIDRs[0]
	for _, c := range cidrs {
		if c.Contains(own.Prefix.Addr()) && c.Bits() <= own.Prefix.Bits() {
			return Pass("kube-proxy's cluster CIDR %s (from %s) contains this node's pod CIDR %s", c, src, own.Prefix)
		}
	}
	var cs []string
	for _, c := range cidrs {
		cs = append(cs, c.String())
	}
	what := "not the pod network"
	for _, c := range cidrs {
		for _, s := range t.ServiceCIDRs {
			if s.Prefix.Overlaps(c) {
				what = fmt.Sprintf("the Service CIDR (%s)", s.Source)
			}
		}
		if what == "not the pod network" {
			n := 0
			for _, ip := range v.serviceIPs {
				if c.Contains(ip) {
					n++
				}
			}
			if n > 0 && n == len(v.serviceIPs) {
				what = fmt.Sprintf("the Service range: it holds all %d ClusterIPs in the rules (%s)", n, firstIPs(v.serviceIPs, 3))
			}
		}
	}
	ev = append(ev, fmt.Sprintf("kube-proxy cluster CIDR %s (from %s)", strings.Join(cs, ","), src),
		fmt.Sprintf("this node's pod CIDR %s (%s)", own.Prefix, own.Source))
	for _, cc := range t.ClusterCIDRs {
		ev = append(ev, fmt.Sprintf("cluster CIDR %s (%s)", cc.Prefix, cc.Source))
	}
	return Result{Findings: []finding.Finding{{
		Subject:     "kube-proxy",
		Message:     fmt.Sprintf("kube-proxy's cluster CIDR %s does not contain this node's pod CIDR %s; it is %s: kube-proxy treats the pods as off-cluster and the node itself as in-cluster, masquerading the wrong traffic", strings.Join(cs, ","), own.Prefix, what),
		Evidence:    ev,
		Remediation: kubeProxyFix,
	}}}
}

func uniqPrefixes(ps []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func firstN(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(append([]string{}, s[:n]...), fmt.Sprintf("... and %d more", len(s)-n))
}
