package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netdoctor/netdoctor/internal/lab"
)

func TestGuardLabClient(t *testing.T) {
	// A lab address the host would send through its gateway: the guard must
	// refuse it before making a socket. Found by asking the kernel (nothing sent).
	dst := ""
	for _, s := range []string{"198.19.254.77", "198.18.254.77"} {
		if rs, err := netlink.RouteGet(net.ParseIP(s)); err == nil && len(rs) > 0 && rs[0].Gw != nil {
			dst = s
			break
		}
	}
	if dst == "" {
		t.Skip("skipped: no lab address is routed through a gateway here")
	}
	tests := []struct {
		name    string
		cluster string
		guarded bool
	}{
		{"lab kubeconfig", "lab", true},
		{"other cluster", "prod", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := filepath.Join(t.TempDir(), "kubeconfig")
			cfg := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster: {server: 'https://%s:6443', insecure-skip-tls-verify: true}\n"+
				"users:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: %s, user: u}\ncurrent-context: c\n", tt.cluster, dst, tt.cluster)
			if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			kube := newKubeFlags(true)
			kube.kubeconfig = kc
			rc, err := kube.ToRESTConfig()
			if err != nil {
				t.Fatal(err)
			}
			guardLabClient(kube, rc)
			if !tt.guarded {
				if rc.Dial != nil {
					t.Fatal("a non-lab cluster's client got the lab guard")
				}
				return // never dialled: it would leave the machine
			}
			if rc.Dial == nil {
				t.Fatal("the lab's client has no guarded dialer")
			}
			if _, err := rc.Dial(context.Background(), "tcp", net.JoinHostPort(dst, "6443")); !errors.Is(err, lab.ErrLabRouteLeaves) {
				t.Fatalf("dial %s: %v, want ErrLabRouteLeaves", dst, err)
			}
		})
	}
}
