// Package controlplane runs the lab's real Kubernetes control plane: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler from the netdoctor-k8s multi-call binary (built
// from the Kubernetes Go modules in labk8s/), each a detached process (internal/lab/proc)
// inside the control-plane network namespace. It generates the cluster's PKI (a CA, the API
// server's serving certificate, client certificates for every component, the service account
// key pair), writes kubeconfigs that use TLS and client-certificate authentication, and
// produces the kube-system add-ons the way kubeadm does (kube-proxy, CoreDNS) as client-go
// objects.
//
// The netfilter fixtures internal/netfilter/testdata/kube-proxy-iptables.save and
// kube-proxy-nftables.json are real dumps made by this package's end-to-end test; regenerate
// them (root, with the lab binary built by `make labbins`) with:
//
//	NETDOCTOR_K8S_BIN=$PWD/bin/netdoctor-k8s go test ./internal/lab/controlplane \
//	    -run TestRealControlPlane -count=1 -update-netfilter-fixtures
package controlplane
