package namespace_test

import (
	"context"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestResolveUnknown(t *testing.T) {
	_, err := namespace.Resolve("no-such-netns-xyz")
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("want not found error, got %v", err)
	}
}

func TestDoAndExecInherit(t *testing.T) {
	ns := testutil.NewNetns(t, "nsdo")
	testutil.MustRun(t, ns, "ip", "link", "add", "ndtveth0", "type", "veth", "peer", "name", "ndtveth1")
	p, err := namespace.Resolve(ns)
	if err != nil {
		t.Fatal(err)
	}
	out, err := command.Output(context.Background(), p, "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "ndtveth0") {
		t.Fatalf("child did not run in the namespace: %s", out)
	}
	// The current namespace must not see it.
	out, err = command.Output(context.Background(), "", "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "ndtveth0") {
		t.Fatalf("namespace leaked into the caller: %s", out)
	}
}
