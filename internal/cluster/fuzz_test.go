package cluster

import (
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// Command lines and kube-proxy config files come from the nodes: parsing
// them must never panic.
func FuzzKubeProxyState(f *testing.F) {
	f.Add("netdoctor-k8s\x00kube-proxy\x00--config=/c\x00--cluster-cidr\x0010.0.0.0/8", "clusterCIDR: 10.244.0.0/16\nmode: ipvs # comment\n")
	f.Add("kube-proxy\x00-v\x00--masquerade-all", "")
	f.Add("", "clusterCIDR: \"\"\n")
	f.Fuzz(func(t *testing.T, cmdline, config string) {
		p := facts.Process{PID: 1, Name: "kube-proxy", Config: map[string]string{"/c": config}}
		p.Cmdline = append(p.Cmdline, splitNUL(cmdline)...)
		st := KubeProxyStateOf(p)
		if st == nil || st.Flags == nil {
			t.Fatal("no state")
		}
		_, _ = yamlScalar(config, "clusterCIDR")
	})
}

func splitNUL(s string) []string {
	var out []string
	cur := ""
	for _, c := range s {
		if c == 0 {
			out = append(out, cur)
			cur = ""
			continue
		}
		cur += string(c)
	}
	return append(out, cur)
}
