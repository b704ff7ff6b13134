package cli

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An API server that cannot be reached must end check with exit 2 and a
// clear message, fast (ConnectTimeout), not after client-go's retries.
func TestCheckUnreachableAPIServer(t *testing.T) {
	// A loopback port nobody listens on: take one, then close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://%s
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: x
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`, addr)
	if err := os.WriteFile(kc, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"netdoctor", "check", "--kubeconfig", kc},
		{"netdoctor", "check", "--kubeconfig", kc, "--no-agent", "-o", "json"},
		{"netdoctor", "install", "--kubeconfig", kc},
		{"netdoctor", "uninstall", "--kubeconfig", kc},
	} {
		var out, errOut bytes.Buffer
		start := time.Now()
		code := Run(args, &out, &errOut)
		took := time.Since(start)
		if code != ExitError {
			t.Errorf("%v: exit %d, want 2\n%s", args[1:], code, errOut.String())
		}
		if !strings.Contains(errOut.String(), "cannot reach the Kubernetes API server at https://"+addr) {
			t.Errorf("%v: message %q", args[1:], errOut.String())
		}
		if took > ConnectTimeout+2*time.Second {
			t.Errorf("%v: took %s", args[1:], took)
		}
	}
}

func TestCheckBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"netdoctor", "check", "-o", "yaml"},
		{"netdoctor", "check", "--timeout", "soon"},
		{"netdoctor", "check", "extra-arg"},
		{"netdoctor", "agent", "--node", ""},
	} {
		var out, errOut bytes.Buffer
		t.Setenv("NODE_NAME", "")
		if code := Run(args, &out, &errOut); code != ExitError {
			t.Errorf("%v: exit %d, want 2 (%s)", args[1:], code, errOut.String())
		}
	}
}
