package namespace_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// nsAddr is an address that exists only inside the test's namespace. In the
// root namespace of the machine this was written on, 198.18.0.0/15 routes to
// the default gateway: a dial made outside the namespace would leave the
// machine. The namespace check in the dialer refuses such a socket before
// connect, so nothing is sent even if the namespace switch were lost.
const nsAddr = "198.18.97.1"

// TestDialerHTTPFromManyGoroutines serves HTTP inside a fresh namespace and
// fetches it through http.Client, whose dials run on the transport's own
// goroutines, with the namespace dialer. The server sees each connection
// come from the namespace's own address, and each client socket's local
// address is that address too: the sockets were made inside the namespace.
func TestDialerHTTPFromManyGoroutines(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "nsdial")
	testutil.MustRun(t, ns, "ip", "addr", "add", nsAddr+"/32", "dev", "lo")
	path := testutil.Path(ns)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	l, err := namespace.Listen(ctx, path, "tcp", nsAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	var mu sync.Mutex
	var locals []string
	dial := namespace.Dialer(path, &net.Dialer{Timeout: 3 * time.Second})
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			locals = append(locals, c.LocalAddr().String())
			mu.Unlock()
		}
		return c, err
	}}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	url := "http://" + l.Addr().String() + "/"

	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer func() { _ = resp.Body.Close() }()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				errs <- err
				return
			}
			if host, _, _ := net.SplitHostPort(string(b)); host != nsAddr {
				errs <- fmt.Errorf("server saw the connection from %q, want %s", b, nsAddr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(locals) != n {
		t.Fatalf("dialled %d connections, want %d", len(locals), n)
	}
	for _, a := range locals {
		if host, _, _ := net.SplitHostPort(a); host != nsAddr {
			t.Errorf("client socket's local address %s is not the namespace's %s", a, nsAddr)
		}
	}
}

// TestDialerRefusesWrongNamespace shows the guard: a socket made outside the
// intended namespace is refused before connect. The destination is loopback,
// so even a broken guard could not send anything off the machine.
func TestDialerRefusesWrongNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "nsguard")
	path := testutil.Path(ns)
	other := testutil.Path(testutil.NewNetns(t, "nsother"))
	// Dial "into" ns while actually standing in other: enter other first, then
	// call a dialer whose namespace check names ns. Dialer(path) would switch to
	// path itself, so use the check directly the way a raw-socket user would.
	l, err := namespace.Listen(context.Background(), other, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	err = namespace.Do(other, func() error {
		d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var cerr error
			if err := c.Control(func(fd uintptr) { cerr = namespace.CheckSocket(int(fd), path) }); err != nil {
				return err
			}
			return cerr
		}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	if !errors.Is(err, namespace.ErrWrongNamespace) {
		t.Fatalf("dial from the wrong namespace: got %v, want ErrWrongNamespace", err)
	}

	// And the plain root-namespace dialer is never what Dialer uses: from this
	// (root) goroutine, dialling the namespace's loopback listener through
	// Dialer reaches it, while the same address in the root namespace has no
	// such listener.
	l2, err := namespace.Listen(context.Background(), path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l2.Close() }()
	c, err := namespace.Dialer(path, &net.Dialer{Timeout: time.Second})(context.Background(), "tcp", l2.Addr().String())
	if err != nil {
		t.Fatalf("dial the namespace's listener: %v", err)
	}
	_ = c.Close()
	if c, err := net.DialTimeout("tcp", l2.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("the root namespace reached %s too: the listener was not in the namespace", l2.Addr())
	}
}

func TestDialerWantsLiteralAddress(t *testing.T) {
	testutil.RequireRoot(t)
	path := testutil.Path(testutil.NewNetns(t, "nsname"))
	_, err := namespace.Dialer(path, nil)(context.Background(), "tcp", "localhost:80")
	if err == nil || !strings.Contains(err.Error(), "literal IP") {
		t.Fatalf("dial by name: got %v, want a literal-IP error", err)
	}
}

// TestControlInsideDo: the Control check passes for sockets made inside Do
// (the way probes use it) and fails for one made outside.
func TestControlInsideDo(t *testing.T) {
	testutil.RequireRoot(t)
	path := testutil.Path(testutil.NewNetns(t, "nsctl"))
	l, err := namespace.Listen(context.Background(), path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	err = namespace.Do(path, func() error {
		d := net.Dialer{Timeout: time.Second, Control: namespace.Control(path)}
		c, err := d.Dial("tcp", l.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("dial inside the namespace with its Control: %v", err)
	}
	// Outside (this goroutine, root namespace), towards loopback only.
	d := net.Dialer{Timeout: time.Second, Control: namespace.Control(path)}
	if c, err := d.Dial("tcp", "127.0.0.1:9"); !errors.Is(err, namespace.ErrWrongNamespace) {
		if err == nil {
			_ = c.Close()
		}
		t.Fatalf("dial outside the namespace with its Control: %v, want ErrWrongNamespace", err)
	}
}
