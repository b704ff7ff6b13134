package cluster

import (
	"path/filepath"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// KubeProxyStateOf reads a kube-proxy process's effective settings: its
// command-line flags, completed by its --config file's clusterCIDR and mode
// where the flags do not set them (flags win, as in kube-proxy).
func KubeProxyStateOf(p facts.Process) *KubeProxyState {
	args := p.Cmdline
	if len(args) > 0 {
		args = args[1:]
	}
	flags := ParseFlags(args)
	unreadable := ""
	if len(flags) > 0 {
		// the lab runs "netdoctor-k8s kube-proxy ...": drop the program name.
		delete(flags, "true")
	}
	if path, ok := flags["config"]; ok {
		txt, ok := p.Config[path]
		if !ok {
			txt, ok = p.Config[filepath.Clean(path)]
		}
		if !ok {
			unreadable = path
		}
		if ok {
			if _, set := flags["cluster-cidr"]; !set {
				if v, ok := yamlScalar(txt, "clusterCIDR"); ok && v != "" {
					flags["cluster-cidr"] = v
				}
			}
			if _, set := flags["proxy-mode"]; !set {
				if v, ok := yamlScalar(txt, "mode"); ok && v != "" {
					flags["proxy-mode"] = v
				}
			}
		}
	}
	mode := flags["proxy-mode"]
	if mode == "" {
		mode = "iptables" // kube-proxy's default on Linux
	}
	return &KubeProxyState{Running: true, PID: p.PID, Mode: mode, Flags: flags, ConfigUnreadable: unreadable}
}
