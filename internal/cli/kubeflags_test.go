package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestKubeFlags: kubectl's flags pick the kubeconfig, the context and the namespace as kubectl
// does, and the tools' set leaves out -n and -s.
func TestKubeFlags(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters:\n" +
		"- name: a\n  cluster: {server: 'https://127.0.0.1:6443'}\n" +
		"- name: b\n  cluster: {server: 'https://127.0.0.2:6443'}\n" +
		"users:\n- name: u\n  user: {token: x}\n" +
		"contexts:\n- name: ca\n  context: {cluster: a, user: u}\n- name: cb\n  context: {cluster: b, user: u, namespace: shop}\n" +
		"current-context: ca\n"
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	k := newKubeFlags(true)
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	k.AddFlags(fs)
	if err := fs.Parse([]string{"--kubeconfig", kc, "--context", "cb", "-n", "web", "--request-timeout", "5s"}); err != nil {
		t.Fatal(err)
	}
	rc, err := k.ToRESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://127.0.0.2:6443" || rc.BearerToken != "x" || rc.Timeout.String() != "5s" {
		t.Errorf("--context cb: host %q, token %q, timeout %s", rc.Host, rc.BearerToken, rc.Timeout)
	}
	if k.namespace() != "web" {
		t.Errorf("-n web: namespace %q", k.namespace())
	}
	if err := fs.Parse([]string{"-s", "https://127.0.0.3:6443"}); err != nil {
		t.Fatal(err)
	}
	if rc, err := k.ToRESTConfig(); err != nil || rc.Host != "https://127.0.0.3:6443" {
		t.Errorf("-s: %v %v", rc, err)
	}

	tools := pflag.NewFlagSet("tcping", pflag.ContinueOnError)
	newToolKubeFlags().AddFlags(tools)
	for _, name := range []string{"namespace", "server"} {
		if tools.Lookup(name) != nil {
			t.Errorf("the tools' kube flags have --%s", name)
		}
	}
	if tools.Lookup("kubeconfig") == nil || tools.Lookup("context") == nil {
		t.Error("the tools' kube flags lack --kubeconfig or --context")
	}
	// A kubeconfig named on the command line that is not there is an error naming it, not a
	// silent fallback to another configuration.
	tk := newToolKubeFlags()
	tools = pflag.NewFlagSet("tcping", pflag.ContinueOnError)
	tk.AddFlags(tools)
	missing := filepath.Join(t.TempDir(), "no-such-kubeconfig")
	if err := tools.Parse([]string{"--kubeconfig", missing}); err != nil {
		t.Fatal(err)
	}
	if _, err := tk.ToRESTConfig(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing --kubeconfig: %v", err)
	}
}
