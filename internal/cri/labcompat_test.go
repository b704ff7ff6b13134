package cri

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	labcri "github.com/netdoctor/netdoctor/internal/lab/cri"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

type staticSource []labcri.Sandbox

func (s staticSource) Sandboxes() []labcri.Sandbox { return s }

// TestLabRuntime checks the client against the lab nodes' CRI endpoint (the
// contract between the two): a pod's netns from the runtime spec, and a
// hostNetwork pod's from its process.
func TestLabRuntime(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "labcri")
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- labcri.Serve(ctx, sock, staticSource{
			{ID: "a1", Name: "web-0", Namespace: "default", UID: "u-1", Ready: true, IP: "198.18.80.5", NetnsPath: testutil.Path(ns), PID: os.Getpid()},
			{ID: "b2", Name: "kube-proxy-n1", Namespace: "kube-system", UID: "u-2", Ready: true, HostNetwork: true, PID: os.Getpid()},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	var c *Client
	var err error
	for i := 0; i < 50; i++ { // the server starts in the background
		if c, err = Dial(context.Background(), sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	p, err := c.FindPod(context.Background(), "default", "web-0")
	if err != nil || p.Netns != testutil.Path(ns) || p.Source != "runtimeSpec" || p.IP != "198.18.80.5" {
		t.Errorf("pod: %+v, %v", p, err)
	}
	p, err = c.FindPod(context.Background(), "kube-system", "kube-proxy-n1")
	if err != nil || p.Netns != filepath.Join("/proc", strconv.Itoa(os.Getpid()), "ns", "net") || p.Source != "hostNetwork" {
		t.Errorf("hostNetwork pod: %+v, %v", p, err)
	}
}
