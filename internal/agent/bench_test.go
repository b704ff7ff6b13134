package agent

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/install"
)

// simResult is a realistic result of one simulated node: 2000 Service port
// fingerprints, 70 probe results, a summary and a few node findings.
func simResult(id, node string) *cluster.AgentResult {
	r := &cluster.AgentResult{Node: node, Request: id, StartedAt: time.Now(), FinishedAt: time.Now(), ServiceRulesMode: "iptables"}
	for j := 0; j < 2000; j++ {
		t := []string{fmt.Sprintf("10.1.%d.%d:8080", j/250, j%250), fmt.Sprintf("10.2.%d.%d:8080", j/250, j%250), fmt.Sprintf("10.3.%d.%d:8080", j/250, j%250)}
		r.ServiceRules = append(r.ServiceRules, cluster.ServiceRule{Service: fmt.Sprintf("app-%d/svc-%d", j%50, j), Port: "80/TCP", ClusterIP: fmt.Sprintf("198.19.%d.%d", j/250, j%250), Endpoints: 3, Hash: cluster.EndpointsHash(t)})
	}
	for j := 0; j < 70; j++ {
		r.Probes = append(r.Probes, cluster.ProbeResult{ID: fmt.Sprintf("h:pod-icmp:node-%04d", j), Status: cluster.ProbeOK, RTTms: 0.2})
	}
	r.Summary = cluster.NodeSummary{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}, Routes: map[string]int{"<peer-pod-cidr> via <peer-pod-net> dev flannel.1 onlink": 199}}
	r.Checks = []finding.Check{{ID: "ip-forward-disabled", Status: finding.Pass}}
	return r
}

// BenchmarkResults200ThroughAPIServer writes 200 simulated nodes' results
// through the real API server (20 writers, as agents would) and collects
// them as the CLI does (one list, decode): the transport half of a 200-node
// check. The reduce half is BenchmarkReduce200Nodes in internal/cluster.
func BenchmarkResults200ThroughAPIServer(b *testing.B) {
	needAPIServer(b)
	const nodes = 200
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("bench-%04d", i)
	}
	ctx := context.Background()
	var size int
	for i := 0; i < b.N; i++ {
		id := NewID()
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 20)
		errs := make(chan error, nodes)
		for _, n := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := WriteResult(ctx, apiServer.admin, install.Namespace, simResult(id, n)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		wrote := time.Since(start)
		cstart := time.Now()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		got, missing := WaitResults(wctx, apiServer.admin, install.Namespace, id, names, nil)
		cancel()
		collected := time.Since(cstart)
		if len(got) != nodes || len(missing) != 0 {
			b.Fatalf("collected %d results, missing %d", len(got), len(missing))
		}
		b.ReportMetric(wrote.Seconds(), "write-s")
		b.ReportMetric(collected.Seconds(), "collect-s")
		cm, _ := apiServer.admin.CoreV1().ConfigMaps(install.Namespace).Get(ctx, resultName(id, names[0]), metav1.GetOptions{})
		if cm != nil {
			size = len(cm.BinaryData[keyGzip]) + len(cm.Data[keyJSON])
		}
		cctx, c2 := context.WithTimeout(ctx, time.Minute)
		if err := Cleanup(cctx, apiServer.admin, install.Namespace, id); err != nil {
			b.Fatal(err)
		}
		c2()
	}
	b.ReportMetric(float64(size), "result-bytes")
}
