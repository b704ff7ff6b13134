package cluster

import (
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/finding"
)

func TestCorefileUpstreams(t *testing.T) {
	tests := []struct {
		name, corefile string
		want           string
		why            string
	}{
		{"lab", ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . 198.18.8.53\n}\n", "198.18.8.53", ""},
		{"two with port and scheme", ".:53 {\n    forward . dns://198.18.8.53 198.18.8.54:5353 {\n       max_concurrent 1000\n    }\n}\n", "198.18.8.53 198.18.8.54:5353", ""},
		{"resolv.conf", ".:53 {\n    forward . /etc/resolv.conf\n}\n", "", "forwards to /etc/resolv.conf"},
		{"commented out", ".:53 {\n    # forward . 198.18.8.53\n}\n", "", "no \"forward .\" line"},
		{"other zone only", "ext.test:53 {\n    forward ext.test 198.18.8.53\n}\n", "", "no \"forward .\" line"},
		{"empty", "", "", "no Corefile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := CorefileUpstreams(tt.corefile)
			if strings.Join(got, " ") != tt.want || (tt.why == "") != (why == "") || !strings.Contains(why, tt.why) {
				t.Errorf("got %q, %q; want %q, %q", got, why, tt.want, tt.why)
			}
		})
	}
}

func FuzzCorefileUpstreams(f *testing.F) {
	f.Add(".:53 {\n forward . 198.18.8.53 dns://198.18.8.54:53 {\n }\n}\n")
	f.Add("forward . /etc/resolv.conf # x")
	f.Fuzz(func(t *testing.T, s string) {
		got, why := CorefileUpstreams(s)
		if len(got) == 0 && why == "" {
			t.Errorf("no upstream and no reason for %q", s)
		}
	})
}

func TestDNSUpstreamFailed(t *testing.T) {
	const lab = ".:53 {\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . 198.18.8.199\n}\n"
	// set makes the host-netns probes of kind on every node answer st.
	set := func(a map[string]*AgentResult, kind, server, st, detail string) {
		for _, r := range a {
			for i, p := range r.Probes {
				if strings.HasPrefix(p.ID, "h:"+kind) && (server == "" || strings.HasSuffix(p.ID, ":"+server)) {
					r.Probes[i] = ProbeResult{ID: p.ID, Status: st, Detail: detail}
				}
			}
		}
	}
	extFails := func(a map[string]*AgentResult) {
		set(a, KindDNSExternal, "", ProbeFail, "www.example.lab. at 198.19.0.10: SERVFAIL")
		for _, r := range a {
			for i, p := range r.Probes {
				if strings.HasPrefix(p.ID, "p:"+KindDNSExternal) {
					r.Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "SERVFAIL"}
				}
			}
		}
	}
	tests := []struct {
		name      string
		corefile  string
		refs      []string
		mutate    func(a map[string]*AgentResult)
		status    finding.Status
		msg       string   // in the message
		evidence  []string // in the evidence
		reasonHas string   // in the check's reason (skipped)
	}{
		{name: "healthy", corefile: lab, status: finding.Pass},
		{name: "dead forward target, reference answers (the lab fault)", corefile: lab, refs: []string{"198.18.8.53"},
			mutate: func(a map[string]*AgentResult) {
				extFails(a)
				set(a, KindDNSUpstream, "198.18.8.199", ProbeFail, "query www.example.lab. at 198.18.8.199: i/o timeout")
				set(a, KindDNSUpstream, "198.18.8.53", ProbeOK, "www.example.lab. at 198.18.8.53: [198.18.8.100]")
			},
			status: finding.Fail, msg: "CoreDNS forwards to 198.18.8.199, which does not answer, while the upstream 198.18.8.53 answers when asked directly",
			evidence: []string{"netdoctor-target.netdoctor.svc.cluster.local. at the cluster DNS 198.19.0.10: resolves", "www.example.lab. at the cluster DNS 198.19.0.10: fails: www.example.lab. at 198.19.0.10: SERVFAIL",
				"asked directly at upstream 198.18.8.199: fail: query www.example.lab. at 198.18.8.199: i/o timeout", "asked directly at upstream 198.18.8.53: ok: www.example.lab. at 198.18.8.53: [198.18.8.100]",
				"Corefile: forward . 198.18.8.199"}},
		{name: "forward target answers directly", corefile: lab,
			mutate: func(a map[string]*AgentResult) {
				extFails(a)
				set(a, KindDNSUpstream, "", ProbeOK, "www.example.lab. at 198.18.8.199: [198.18.8.100]")
			},
			status: finding.Fail, msg: "though CoreDNS's upstream 198.18.8.199 answers when asked directly"},
		{name: "upstream itself fails", corefile: lab,
			mutate: func(a map[string]*AgentResult) {
				extFails(a)
				set(a, KindDNSUpstream, "", ProbeFail, "i/o timeout")
			},
			status: finding.Fail, msg: "the upstream 198.18.8.199 itself does not answer when asked directly from the nodes"},
		{name: "forward to resolv.conf, nothing to ask", corefile: ".:53 {\n    forward . /etc/resolv.conf\n}\n",
			mutate: extFails, status: finding.Skipped, reasonHas: "forwards to /etc/resolv.conf"},
		{name: "all DNS fails: not this rule", corefile: lab,
			mutate: func(a map[string]*AgentResult) {
				for _, r := range a {
					for i, p := range r.Probes {
						if strings.Contains(p.ID, ":dns-") {
							r.Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "i/o timeout"}
						}
					}
				}
			},
			status: finding.Skipped, reasonHas: "dns-resolution-failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := healthy()
			s.ConfigMaps[KubeSystem+"/coredns"]["Corefile"] = tt.corefile
			spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab", Upstreams: tt.refs})
			a := healthyAgents(s, spec)
			if tt.mutate != nil {
				tt.mutate(a)
			}
			rep := Reduce(s, spec, a, nil)
			var st finding.Status
			var reason string
			for _, c := range rep.Checks {
				if c.ID == "dns-upstream-failed" {
					st, reason = c.Status, c.Reason
				}
			}
			if st != tt.status || !strings.Contains(reason, tt.reasonHas) {
				t.Fatalf("check %s %q, want %s %q", st, reason, tt.status, tt.reasonHas)
			}
			var f *finding.Finding
			for i := range rep.Findings {
				if rep.Findings[i].ID == "dns-upstream-failed" {
					f = &rep.Findings[i]
				}
				if x := rep.Findings[i]; x.ID == "dns-resolution-failed" && tt.status == finding.Fail && x.Severity.Rank() >= 2 {
					t.Errorf("dns-resolution-failed %s on %s for external-only failures: %s", x.Severity, x.Node, x.Message)
				}
			}
			if tt.status != finding.Fail {
				if f != nil {
					t.Fatalf("unexpected finding: %s", f.Message)
				}
				return
			}
			if f == nil {
				t.Fatal("no dns-upstream-failed finding")
			}
			if f.Node != "" || f.Severity != finding.Critical || f.Remediation == "" {
				t.Errorf("node %q severity %s remediation %q", f.Node, f.Severity, f.Remediation)
			}
			if !strings.Contains(f.Message, tt.msg) {
				t.Errorf("message %q lacks %q", f.Message, tt.msg)
			}
			all := strings.Join(f.Evidence, "\n")
			for _, e := range tt.evidence {
				if !strings.Contains(all, e) {
					t.Errorf("evidence lacks %q:\n%s", e, all)
				}
			}
		})
	}
}
