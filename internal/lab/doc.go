// Package lab builds netdoctor's lab: a real Kubernetes cluster on one Linux machine whose
// nodes, pods and outside hosts are network namespaces on an underlay bridge. It owns the
// lab's configuration and naming, the host-overlap safety check, the topology (namespaces,
// links, addresses), the lab's state directory and the up/down/status life cycle. The control
// plane lives in lab/controlplane, process supervision in lab/proc, the per-node kubelet and
// flannel datapath in lab/kubelet and lab/flannel, the CRI endpoint in lab/cri and the fault
// catalog in lab/faults.
package lab
