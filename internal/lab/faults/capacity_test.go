package faults

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestPortRangeSize(t *testing.T) {
	tests := []struct {
		in   string
		want int
		err  bool
	}{
		{faultPortRange, 200, false},
		{"32768\t60999", 28232, false}, // as /proc/sys prints the default
		{"1024 1024", 1, false},
		{"60199 60000", 0, true},
		{"0 10", 0, true},
		{"1 70000", 0, true},
		{"32768", 0, true},
		{"a b", 0, true},
	}
	for _, tt := range tests {
		got, err := PortRangeSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("PortRangeSize(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestRandomMatchBytecode(t *testing.T) {
	tests := []struct {
		fraction float64
		want     string
	}{
		// As tc printed it back from the kernel (tc -s filter show dev eth0 egress) on a lab node.
		{1.0 / 8, "4,32 0 0 4294963256,53 0 1 3758096384,6 0 0 4294967295,6 0 0 0"},
		{0.5, "4,32 0 0 4294963256,53 0 1 2147483648,6 0 0 4294967295,6 0 0 0"},
		{nicDropFraction, "4,32 0 0 4294963256,53 0 1 4080218931,6 0 0 4294967295,6 0 0 0"},
	}
	for _, tt := range tests {
		if got := RandomMatchBytecode(tt.fraction); got != tt.want {
			t.Errorf("RandomMatchBytecode(%v) = %q, want %q", tt.fraction, got, tt.want)
		}
	}
}

func TestParsePingSummary(t *testing.T) {
	tests := []struct {
		file           string
		sent, received int
		err            bool
	}{
		{"all-answered.txt", 20, 20, false},
		{"some-lost.txt", 20, 10, false}, // ping exits 0 here: the summary is what tells
		{"none-answered.txt", 5, 0, false},
		{"unreachable.txt", 0, 0, true},
	}
	for _, tt := range tests {
		b, err := os.ReadFile(filepath.Join("testdata", "ping", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		s, r, err := ParsePingSummary(string(b))
		if (err != nil) != tt.err || s != tt.sent || r != tt.received {
			t.Errorf("%s: %d sent, %d received, %v; want %d, %d (error %v)", tt.file, s, r, err, tt.sent, tt.received, tt.err)
		}
	}
}

func FuzzParsePingSummary(f *testing.F) {
	for _, name := range []string{"all-answered.txt", "some-lost.txt", "none-answered.txt", "unreachable.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", "ping", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		sent, got, err := ParsePingSummary(s)
		if err == nil && (sent < 0 || got < 0) {
			t.Errorf("negative counts %d, %d from %q", sent, got, s)
		}
	})
}

// vethPair makes namespaces a (198.18.251.1/24) and b (198.18.251.2/24) joined by a veth
// a:va - b:vb and returns their paths.
func vethPair(t *testing.T) (a, b string) {
	na, nb := testutil.NewNetns(t, "capa"), testutil.NewNetns(t, "capb")
	testutil.MustRun(t, na, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", nb)
	testutil.MustRun(t, na, "ip", "addr", "add", "198.18.251.1/24", "dev", "va")
	testutil.MustRun(t, nb, "ip", "addr", "add", "198.18.251.2/24", "dev", "vb")
	testutil.MustRun(t, na, "ip", "link", "set", "va", "up")
	testutil.MustRun(t, nb, "ip", "link", "set", "vb", "up")
	return testutil.Path(na), testutil.Path(nb)
}

// runIn runs fn in the namespace at path on a goroutine; the returned function waits for
// it and gives its error (any number of times).
func runIn(path string, fn func() error) func() error {
	done := make(chan error, 1)
	go func() { done <- namespace.Do(path, fn) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() { err = <-done })
		return err
	}
}

// TestNICQueueRoot: the stuck TAP of nic-queue-drops counts the packets a random redirect
// sends it as tx_dropped while the steady traffic runs, and the counters stop once the
// redirect and the process are gone.
func TestNICQueueRoot(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tc")
	a, _ := vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	wait := runIn(a, func() error {
		return RunNICQueue(runCtx, NICQueueOptions{Tap: "ndq0", QLen: 4, To: netip.MustParseAddrPort("198.18.251.2:9"), Rate: 200})
	})
	defer func() { stop(); _ = wait() }()
	if err := waitFor(ctx, 10*time.Second, "ndq0", func() (bool, string) {
		_, up, ok, err := tapTxDropped(a, "ndq0")
		return err == nil && ok && up, "not up"
	}); err != nil {
		t.Fatal(err)
	}
	if err := DropsQuiet(ctx, a, time.Second); err != nil {
		t.Fatalf("drops before the redirect: %v", err)
	}
	if err := AddRandomRedirect(ctx, a, "va", "ndq0", 0.25); err != nil {
		t.Fatal(err)
	}
	err := DropsQuiet(ctx, a, 2*time.Second)
	if err == nil {
		t.Fatal("no drops counted while the redirect is in place")
	}
	t.Logf("injected: %v", err)
	d, err := ReadLinkDrops(a)
	if err != nil || d.Tx == 0 || d.Links["ndq0"] == "" {
		t.Fatalf("drops %+v, %v: want tx drops on ndq0", d, err)
	}
	// The traffic itself sees the loss: about a quarter of 100 echoes.
	if err := PingBurst(ctx, a, "198.18.251.2", 100); err == nil {
		t.Error("a ping burst through va lost nothing with a quarter of its packets redirected")
	} else {
		t.Logf("ping burst: %v", err)
	}
	if err := RemoveRandomRedirect(ctx, a, "va"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveRandomRedirect(ctx, a, "va"); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
	stop()
	if err := wait(); err != nil {
		t.Fatalf("nicqueue: %v", err)
	}
	if _, _, ok, err := tapTxDropped(a, "ndq0"); err != nil || ok {
		t.Fatalf("ndq0 still there after the process ended (%v)", err)
	}
	if err := DropsQuiet(ctx, a, time.Second); err != nil {
		t.Errorf("healed: %v", err)
	}
	if err := PingBurst(ctx, a, "198.18.251.2", 100); err != nil {
		t.Errorf("healed: %v", err)
	}
}

// TestPortFillRoot: with a 10-port range, portfill holds 10 connections to one server, the
// next connect to it fails with EADDRNOTAVAIL while another destination still connects, and
// ending portfill leaves no socket behind.
func TestPortFillRoot(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ln, ln2 net.Listener
	if err := namespace.Do(b, func() error {
		var err error
		if ln, err = net.Listen("tcp", "198.18.251.2:80"); err != nil {
			return err
		}
		ln2, err = net.Listen("tcp", "198.18.251.2:81")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })}
	go func() { _ = srv.Serve(ln) }()
	go func() { _ = srv.Serve(ln2) }()
	defer func() { _ = srv.Close() }()
	aName := filepath.Base(a)
	if err := lab.SetSysctl(aName, portRangeKey, "61000 61009"); err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("198.18.251.2:80")
	runCtx, stop := context.WithCancel(ctx)
	wait := runIn(a, func() error { return RunPortFill(runCtx, PortFillOptions{To: dst, Max: 50}) })
	defer func() { stop(); _ = wait() }()
	if err := waitFor(ctx, 20*time.Second, "10 connections", func() (bool, string) {
		n, err := ConnectionsTo(a, dst)
		if err != nil {
			return false, err.Error()
		}
		return n == 10, "held"
	}); err != nil {
		t.Fatal(err)
	}
	_, err := Dial(ctx, a, "tcp", dst.String(), time.Second)
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("connect to %s with the range used up: %v, want EADDRNOTAVAIL", dst, err)
	}
	c, err := Dial(ctx, a, "tcp", "198.18.251.2:81", time.Second)
	if err != nil {
		t.Errorf("connect to another destination: %v", err)
	} else {
		_ = c.Close()
	}
	stop()
	if err := wait(); err != nil {
		t.Fatalf("portfill: %v", err)
	}
	if n, err := ConnectionsTo(a, dst); err != nil || n != 0 {
		t.Errorf("%d sockets to %s left after portfill ended (%v): want none (reset, no TIME_WAIT)", n, dst, err)
	}
	if err := HTTPGet(ctx, a, dst.String(), "ok"); err != nil {
		t.Errorf("after portfill ended: %v", err)
	}
}
