package cluster

import (
	"fmt"
	"testing"
	"time"
)

// bigCluster is a generated cluster of n nodes and svcs Services with 3
// endpoints each, with matching agent results (every node answered, every
// probe ok, every Service rule present).
func bigCluster(n, svcs int) (*Snapshot, *ProbeSpec, map[string]*AgentResult) {
	s := healthy()
	s.Nodes, s.Pods = s.Nodes[:0], s.Pods[:0]
	s.DaemonSets[0].Desired, s.DaemonSets[0].Ready = int32(n), int32(n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("node-%04d", i)
		ip := fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)
		s.Nodes = append(s.Nodes, Node{Name: name, InternalIP: ip, PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)},
			Annotations: map[string]string{AnnotationFlannelPublicIP: ip, AnnotationFlannelBackendData: fmt.Sprintf(`{"VNI":1,"VtepMAC":"aa:bb:cc:00:%02x:%02x"}`, i/256, i%256)},
			Conditions:  []Condition{{Type: "Ready", Status: "True"}}})
		s.Pods = append(s.Pods, Pod{Namespace: KubeSystem, Name: "kube-proxy-" + name, Node: name, Phase: "Running", Ready: true, Labels: map[string]string{"k8s-app": "kube-proxy"}, PriorityClassName: "system-node-critical"},
			Pod{Namespace: AgentNamespace, Name: "t-" + name, Node: name, Phase: "Running", Ready: true, Labels: map[string]string{LabelAppName: TargetName},
				PodIPs: []string{fmt.Sprintf("10.%d.%d.2", 100+i/256, i%256)}, Containers: []Container{{Name: "t", Ports: []ContainerPort{{Port: TargetPort, Protocol: "TCP"}}}}})
	}
	s.ConfigMaps[KubeSystem+"/kube-proxy"]["config.conf"] = "clusterCIDR: 10.96.0.0/11\n"
	for j := 0; j < svcs; j++ {
		ns := fmt.Sprintf("app-%d", j%50)
		name := fmt.Sprintf("svc-%d", j)
		s.Services = append(s.Services, Service{Namespace: ns, Name: name, Type: "ClusterIP", ClusterIPs: []string{fmt.Sprintf("198.19.%d.%d", 10+j/250, j%250+1)},
			Selector: map[string]string{"app": name}, Ports: []ServicePort{{Protocol: "TCP", Port: 80, TargetPort: "8080"}}})
		sl := EndpointSlice{Namespace: ns, Name: name + "-x", Service: name, AddressType: "IPv4", Ports: []EndpointPort{{Port: 8080, Protocol: "TCP"}}}
		for e := 0; e < 3; e++ {
			node := (j*3 + e) % n
			ip := fmt.Sprintf("10.%d.%d.%d", 100+node/256, node%256, 10+(j%200))
			sl.Endpoints = append(sl.Endpoints, Endpoint{Addresses: []string{ip}, Ready: true, Serving: true, Node: s.Nodes[node].Name, Pod: ns + "/" + name + fmt.Sprint(e)})
			s.Pods = append(s.Pods, Pod{Namespace: ns, Name: name + fmt.Sprint(e), Node: s.Nodes[node].Name, Phase: "Running", Ready: true, Labels: map[string]string{"app": name}, PodIPs: []string{ip}})
		}
		s.EndpointSlices = append(s.EndpointSlices, sl)
	}
	spec := BuildSpec(s, SpecOptions{K: DefaultPeers, OverlayPort: 8472, ExternalName: "www.example.lab"})
	agents := healthyAgents(s, spec)
	for _, a := range agents {
		a.Summary.KubeProxy.Flags["cluster-cidr"] = "10.96.0.0/11"
	}
	return s, spec, agents
}

// BenchmarkReduce200Nodes measures the CLI's reduce of 200 nodes' results
// (2000 Services, 3 endpoints each, k=10 probes per node): rules, drift,
// Service fingerprint comparison and the matrix. Target: ≤ 2 s.
func BenchmarkReduce200Nodes(b *testing.B) {
	s, spec, agents := bigCluster(200, 2000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep := Reduce(s, spec, agents, nil)
		if rep.Summary.Critical+rep.Summary.Warning != 0 {
			b.Fatalf("generated healthy cluster has findings: %+v", rep.Findings[0])
		}
	}
}

// TestReduce200NodesBounded checks the generated cluster reduces clean and
// that the matrix stays N·k (a sanity check of the benchmark's input; the
// time is measured by the benchmark, not asserted here).
func TestReduce200NodesBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short")
	}
	s, spec, agents := bigCluster(200, 2000)
	start := time.Now()
	rep := Reduce(s, spec, agents, nil)
	t.Logf("reduce of 200 nodes: %s", time.Since(start))
	if n := rep.Summary.Critical + rep.Summary.Warning; n != 0 {
		t.Fatalf("%d findings on a healthy generated cluster: %+v", n, rep.Findings[0])
	}
	peerProbes := 0
	for _, r := range rep.Matrix.Rows {
		peerProbes += r.Cells[KindPodICMP].Total
	}
	if want := 200 * 2 * DefaultPeers; peerProbes != want {
		t.Errorf("%d pod-icmp probes, want N·k·2 = %d", peerProbes, want)
	}
}
