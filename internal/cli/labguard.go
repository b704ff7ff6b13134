package cli

import (
	"net"
	"time"

	"k8s.io/client-go/rest"

	"github.com/netdoctor/netdoctor/internal/lab"
)

// labClusterName is the cluster name in the kubeconfigs `netdoctor lab up`
// writes (internal/lab/controlplane).
const labClusterName = "lab"

// guardLabClient makes a client of a lab's API server (the kubeconfig's
// cluster is the lab's) dial through lab.GuardDial: from the host's network
// namespace it connects only over the lab's own root link, never through
// the default route when the lab is down or half up. Other clusters and
// configurations that already set a dialer are left alone.
func guardLabClient(kube *kubeFlags, rc *rest.Config) {
	if rc.Dial != nil || kube == nil {
		return
	}
	raw, err := kube.rawConfig()
	if err != nil {
		return
	}
	name := raw.CurrentContext
	if kube.overrides.CurrentContext != "" {
		name = kube.overrides.CurrentContext
	}
	cluster := ""
	if c := raw.Contexts[name]; c != nil {
		cluster = c.Cluster
	}
	if kube.overrides.Context.Cluster != "" {
		cluster = kube.overrides.Context.Cluster
	}
	if cluster == labClusterName {
		rc.Dial = lab.GuardDial(&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second})
	}
}
