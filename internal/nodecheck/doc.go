// Package nodecheck holds the end-to-end test of `netdoctor node check`: a
// flannel-like Kubernetes node built from fresh network namespaces (uplink,
// cni0, flannel.1 VXLAN, pods, a peer node, kube-proxy's real rules), checked
// clean, then broken one fault at a time. Its captures are the fixtures of
// the rules' unit tests (internal/rules/testdata).
package nodecheck
