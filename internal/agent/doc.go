// Package agent is netdoctor's per-node agent and its transport. The CLI
// and the agents talk only through the Kubernetes API: the CLI writes a
// request ConfigMap (labelled netdoctor.io/request), each agent named by it
// analyses its own node (node facts, node rules, service-rule fingerprints,
// the probe plan) and writes a result ConfigMap (labelled
// netdoctor.io/result and netdoctor.io/node); the CLI collects the results
// until the deadline and removes both. No agent opens a listening port.
package agent
