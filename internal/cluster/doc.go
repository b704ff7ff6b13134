// Package cluster is netdoctor's cluster doctor: it reads cluster facts
// through the Kubernetes API (client-go) into a versioned Snapshot, defines
// the result an agent sends back from each node (AgentResult), runs the
// cluster-level rules of FAULTS.md over both (kube-proxy, Services,
// EndpointSlices, DNS, pod CIDRs, overlay sources, odd-node-out drift) and
// builds, samples and renders the per-node connectivity matrix.
package cluster
