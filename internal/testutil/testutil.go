// Package testutil holds helpers for tests that touch the kernel: root
// gating, fresh network namespaces removed on cleanup, and running commands
// inside them.
package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// RequireRoot skips the test, saying why, unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, netlink writes); CI runs as root")
	}
}

// RequireProgram skips the test unless the program is installed.
func RequireProgram(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("skipped: %s not installed (.ci/run installs it)", name)
	}
}

// NewNetns creates a fresh named network namespace "ndt-<prefix>-<random>",
// brings its loopback up and deletes it on cleanup. It returns the name; the
// path is namespace.NetnsDir/name.
func NewNetns(t testing.TB, prefix string) string {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "ndt-" + prefix + "-" + hex.EncodeToString(b)
	if len(name) > 40 {
		name = name[:40]
	}
	if err := namespace.Create(name); err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := namespace.Delete(name); err != nil {
			t.Errorf("cleanup netns %s: %v", name, err)
		}
	})
	MustRun(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// Path returns the path of a named namespace.
func Path(name string) string { return filepath.Join(namespace.NetnsDir, name) }

// Run runs a program inside the named namespace ("" = current) and returns
// its combined output and error.
func Run(t testing.TB, ns string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := ""
	if ns != "" {
		p = Path(ns)
	}
	r, err := command.Run(ctx, command.Cmd{Name: name, Args: args, Netns: p})
	if r == nil {
		return "", err
	}
	return strings.TrimSpace(string(r.Stdout) + string(r.Stderr)), err
}

// MustRun is Run that fails the test on error.
func MustRun(t testing.TB, ns string, name string, args ...string) string {
	t.Helper()
	out, err := Run(t, ns, name, args...)
	if err != nil {
		t.Fatalf("%s %s (netns %s): %v\n%s", name, strings.Join(args, " "), ns, err, out)
	}
	return out
}
