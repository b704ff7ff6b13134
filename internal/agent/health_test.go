package agent

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// TestHealthCheckInNamespace: kube-proxy's health URL is fetched from the
// node's namespace, whatever goroutine the HTTP transport dials on; the same
// loopback port in this (root) namespace has no server.
func TestHealthCheckInNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "hc")
	path := testutil.Path(ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := namespace.Listen(ctx, path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }), ReadHeaderTimeout: 2 * time.Second}
	go func() { _ = srv.Serve(l) }()
	defer func() { _ = srv.Close() }()
	_, port, _ := net.SplitHostPort(l.Addr().String())

	tests := []struct {
		name, netns, url string
		ok               bool
		detail           string
	}{
		{"in the namespace", path, "http://127.0.0.1:" + port + "/healthz", true, "200"},
		{"a name is refused in a namespace", path, "http://localhost:" + port + "/healthz", false, "literal IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc := healthCheck(ctx, tt.netns, tt.url)
			if hc.OK != tt.ok || !strings.Contains(hc.Detail, tt.detail) {
				t.Fatalf("healthCheck(%s) = %+v, want ok=%v with %q", tt.url, hc, tt.ok, tt.detail)
			}
		})
	}
	if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Skip("skipped the negative half: something listens on the same loopback port in the root namespace")
	}
}
