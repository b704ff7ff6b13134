package cluster

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"
)

func TestPeersBounded(t *testing.T) {
	for _, tc := range []struct{ n, k int }{{1, 10}, {2, 10}, {3, 10}, {11, 10}, {200, 10}, {1000, 10}, {50, 3}} {
		for _, seed := range []int64{0, 1, 7, -3} {
			nodes := make([]string, tc.n)
			for i := range nodes {
				nodes[i] = fmt.Sprintf("node-%04d", i)
			}
			sort.Strings(nodes)
			want := tc.k
			if want > tc.n-1 {
				want = tc.n - 1
			}
			in := map[string]int{}
			total := 0
			for _, n := range nodes {
				ps := Peers(nodes, n, tc.k, seed)
				if len(ps) != want {
					t.Fatalf("n=%d k=%d: %s has %d peers, want %d", tc.n, tc.k, n, len(ps), want)
				}
				seen := map[string]bool{}
				for _, p := range ps {
					if p == n || seen[p] {
						t.Fatalf("n=%d k=%d seed=%d: %s peers %v (self or duplicate)", tc.n, tc.k, seed, n, ps)
					}
					seen[p] = true
					in[p]++
					total++
				}
			}
			if total != tc.n*want {
				t.Errorf("n=%d k=%d: %d probes, want N·k = %d", tc.n, tc.k, total, tc.n*want)
			}
			for _, n := range nodes {
				if tc.n > 1 && in[n] != want {
					t.Errorf("n=%d k=%d: %s probed by %d peers, want %d", tc.n, tc.k, n, in[n], want)
				}
			}
		}
	}
	nodes := []string{"a", "b", "c", "d", "e"}
	if a, b := strings.Join(Peers(nodes, "a", 2, 0), ","), strings.Join(Peers(nodes, "a", 2, 1), ","); a == b {
		t.Errorf("peers do not rotate with the seed: %s", a)
	}
}

func TestPlanSizeIsNk(t *testing.T) {
	s := healthy()
	for i := 4; i <= 200; i++ {
		name := fmt.Sprintf("node-%d", i)
		s.Nodes = append(s.Nodes, Node{Name: name, InternalIP: fmt.Sprintf("198.18.1.%d", i), PodCIDRs: []string{fmt.Sprintf("198.19.%d.0/24", i)}})
		s.Pods = append(s.Pods, Pod{Namespace: AgentNamespace, Name: "t-" + name, Node: name, Phase: "Running", Ready: true, Labels: map[string]string{LabelAppName: TargetName}, PodIPs: []string{fmt.Sprintf("198.19.%d.2", i)},
			Containers: []Container{{Name: "t", Ports: []ContainerPort{{Port: TargetPort, Protocol: "TCP"}}}}})
	}
	spec := BuildSpec(s, SpecOptions{K: 10, OverlayPort: 8472})
	max := 0
	for _, t := range spec.Targets {
		if n := len(Plan(spec, t.Node)); n > max {
			max = n
		}
	}
	// per node: 2 netns × 10 peers × (icmp, tcp, mtu) + 10 overlay + 2 × (clusterip + 3 dns) + endpoints (≤ 50)
	if limit := 2*10*3 + 10 + 2*4 + maxEndpointsPer; max > limit {
		t.Errorf("a node's plan has %d probes, more than %d: not bounded by k", max, limit)
	}
}

func TestMatrixRender(t *testing.T) {
	s := healthy()
	spec := BuildSpec(s, SpecOptions{ExternalName: "www.example.lab"})
	a := healthyAgents(s, spec)
	for i, p := range a["node-3"].Probes {
		if strings.HasSuffix(p.ID, ":"+KindDNSNS) {
			a["node-3"].Probes[i] = ProbeResult{ID: p.ID, Status: ProbeFail, Detail: "timeout after 2s"}
		}
	}
	m := BuildMatrix(spec, a, nil)
	var b bytes.Buffer
	if err := m.Render(&b, false); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	if !strings.Contains(out, "FAIL!") || !strings.Contains(out, "node-3 (pod) dns-ns: kube-dns.kube-system.svc.cluster.local.: timeout after 2s") {
		t.Errorf("render lacks the odd cell or its note:\n%s", out)
	}
	odd := 0
	for _, r := range m.Rows {
		for col, c := range r.Cells {
			if c.Odd {
				odd++
				if r.Node != "node-3" || col != KindDNSNS {
					t.Errorf("odd cell %s %s %s", r.Node, r.Netns, col)
				}
			}
		}
	}
	if odd != 2 {
		t.Errorf("%d odd cells, want 2 (host and pod netns of node-3)", odd)
	}
}
