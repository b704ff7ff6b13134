// Package kubelet is the lab's node agent, run as `netdoctor lab kubelet` inside a node's
// network namespace: it registers its Node (InternalIP, Ready, capacity, Lease heartbeats),
// programs the flannel VXLAN datapath for its pod CIDR and keeps the peers programmed, runs the
// pods bound to it as processes in their own network namespaces (veth into cni0, an IP from
// the node's pod CIDR, resolv.conf and service account files bind-mounted in a private mount
// namespace), reports their status so the real controllers and kube-proxy react, and serves a
// CRI endpoint so tools find pods' namespaces as with containerd.
package kubelet
