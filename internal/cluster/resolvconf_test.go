package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/finding"
)

func TestCheckResolvConf(t *testing.T) {
	pod := ResolvPod{Node: "node-2", Pod: "shop/web-1"}
	tests := []struct {
		fixture  string
		pod      ResolvPod
		critical bool
		problems []string // substrings, one per problem, in order
	}{
		{fixture: "clusterfirst", pod: pod},
		{fixture: "upstream-only", pod: pod, critical: true, problems: []string{
			"nameserver 198.18.8.53, not the cluster DNS Service 198.19.0.10",
			`search list "", want it to start with "shop.svc.cluster.local svc.cluster.local cluster.local"`,
			"ndots unset (resolver default 1), want 5"}},
		{fixture: "over-limits", pod: pod, problems: []string{
			"4 nameservers: glibc uses the first 3, ignores 198.18.8.55",
			"search list of 7 domains"}},
		{fixture: "no-namespace-search", pod: pod, critical: true, problems: []string{
			`search list "svc.cluster.local cluster.local"`, "ndots 2, want 5"}},
		{fixture: "no-namespace-search", pod: ResolvPod{Node: "node-2", Pod: "shop/web-1", NDots: "2"}, critical: true, problems: []string{
			`search list "svc.cluster.local cluster.local"`}},
		{fixture: "default-policy", pod: ResolvPod{Node: "node-2", Pod: "kube-system/coredns-1", Policy: "Default"}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture+"/"+tt.pod.Policy+tt.pod.NDots, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "resolv", tt.fixture+".conf"))
			if err != nil {
				t.Fatal(err)
			}
			probs, crit := CheckResolvConf(string(b), tt.pod, "198.19.0.10", "cluster.local")
			if crit != tt.critical || len(probs) != len(tt.problems) {
				t.Fatalf("critical %v problems %q; want %v and %d problems", crit, probs, tt.critical, len(tt.problems))
			}
			for i, w := range tt.problems {
				if !strings.Contains(probs[i], w) {
					t.Errorf("problem %d %q lacks %q", i, probs[i], w)
				}
			}
		})
	}
}

func FuzzParseResolvConf(f *testing.F) {
	for _, n := range []string{"clusterfirst", "over-limits", "no-namespace-search"} {
		b, err := os.ReadFile(filepath.Join("testdata", "resolv", n+".conf"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := ParseResolvConf(s)
		for _, ns := range c.Nameservers {
			if ns == "" || strings.ContainsAny(ns, " \t\n#;") {
				t.Errorf("nameserver %q from %q", ns, s)
			}
		}
		_, _ = CheckResolvConf(s, ResolvPod{Pod: "a/b"}, "198.19.0.10", "cluster.local")
	})
}

func TestPodResolvConfRule(t *testing.T) {
	s := healthy()
	spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab"})
	if len(spec.ResolvPods) == 0 || spec.ClusterDomain != "cluster.local" {
		t.Fatalf("spec: %d resolv pods, domain %q", len(spec.ResolvPods), spec.ClusterDomain)
	}
	a := healthyAgents(s, spec)
	for n, r := range a {
		for _, p := range spec.ResolvPods {
			if p.Node == n {
				r.PodResolv = append(r.PodResolv, PodResolv{Pod: p.Pod, Status: ProbeOK})
			}
		}
	}
	rep := Reduce(s, spec, a, nil)
	if got := ids(rep.Findings, 1); len(got) > 0 {
		t.Fatalf("healthy: %v", got)
	}
	b, _ := os.ReadFile(filepath.Join("testdata", "resolv", "upstream-only.conf"))
	probs, crit := CheckResolvConf(string(b), ResolvPod{Pod: "web/web-a"}, spec.DNSServer, spec.ClusterDomain)
	a["node-2"].PodResolv = []PodResolv{{Pod: "web/web-a", Status: "wrong", Problems: probs, Critical: crit, Conf: string(b), From: "/proc/42/root/etc/resolv.conf"}}
	rep = Reduce(s, spec, a, nil)
	got := ids(rep.Findings, 2)
	if strings.Join(got, " ") != "pod-resolv-conf-wrong@node-2" {
		t.Fatalf("findings %v", got)
	}
	for _, f := range rep.Findings {
		if f.ID == "pod-resolv-conf-wrong" {
			all := f.Message + "\n" + strings.Join(f.Evidence, "\n")
			for _, w := range []string{"pod/web/web-a", "read /proc/42/root/etc/resolv.conf: nameserver 198.18.8.53", "not the cluster DNS Service 198.19.0.10"} {
				if !strings.Contains(f.Subject+"\n"+all, w) {
					t.Errorf("lacks %q:\n%s", w, all)
				}
			}
			if f.Severity != finding.Critical {
				t.Errorf("severity %s", f.Severity)
			}
		}
	}
}
