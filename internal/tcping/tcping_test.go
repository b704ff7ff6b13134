package tcping

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestComputeStats(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name string
		in   []time.Duration
		want Stats
	}{
		{"empty", nil, Stats{}},
		{"one", []time.Duration{5 * ms}, Stats{Count: 1, Min: 5, Avg: 5, Max: 5, P50: 5, P90: 5, P99: 5}},
		{"ten", []time.Duration{10 * ms, 1 * ms, 2 * ms, 3 * ms, 4 * ms, 5 * ms, 6 * ms, 7 * ms, 8 * ms, 9 * ms},
			Stats{Count: 10, Min: 1, Avg: 5.5, Max: 10, Stdev: 2.8722813232690143, P50: 5, P90: 9, P99: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ComputeStats(tt.in)
			if got != tt.want {
				t.Errorf("ComputeStats = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		host    string
		port    int
		wantErr bool
	}{
		{"198.18.0.1:80", "198.18.0.1", 80, false},
		{"[2001:db8::1]:443", "2001:db8::1", 443, false},
		{"example.test:53", "example.test", 53, false},
		{"198.18.0.1", "", 0, true},
		{"198.18.0.1:0", "", 0, true},
		{"198.18.0.1:70000", "", 0, true},
		{":80", "", 0, true},
		{"host:http", "", 0, true},
	}
	for _, tt := range tests {
		h, p, err := ParseTarget(tt.in)
		if (err != nil) != tt.wantErr || h != tt.host || p != tt.port {
			t.Errorf("ParseTarget(%q) = %q, %d, %v", tt.in, h, p, err)
		}
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]Attempt{
		{Outcome: Connected, RTT: 1}, {Outcome: Refused}, {Outcome: Timeout}, {Outcome: Timeout},
		{Outcome: Failed}, {Outcome: Connected, RTT: 3, Rcode: "NOERROR"},
	})
	if s.Sent != 6 || s.OK != 2 || s.Refused != 1 || s.Timeout != 2 || s.Errors != 1 {
		t.Fatalf("counts wrong: %+v", s)
	}
	if s.Loss < 66.6 || s.Loss > 66.7 || s.RTT.Avg != 2 || s.Rcodes["NOERROR"] != 1 {
		t.Fatalf("loss/rtt wrong: %+v", s)
	}
}

// pair makes a client and a server namespace joined by a veth:
// client 198.18.10.1/24, server 198.18.10.2/24.
func pair(t *testing.T) (client, server string) {
	t.Helper()
	client = testutil.NewNetns(t, "tcpc")
	server = testutil.NewNetns(t, "tcps")
	testutil.MustRun(t, client, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", server)
	testutil.MustRun(t, client, "ip", "addr", "add", "198.18.10.1/24", "dev", "c0")
	testutil.MustRun(t, client, "ip", "link", "set", "c0", "up")
	testutil.MustRun(t, server, "ip", "addr", "add", "198.18.10.2/24", "dev", "s0")
	testutil.MustRun(t, server, "ip", "link", "set", "s0", "up")
	// A new veth drops packets until the kernel has activated it (carrier,
	// qdisc): wait for the path to work before measuring it.
	testutil.MustRun(t, client, "ping", "-c", "1", "-w", "5", "198.18.10.2")
	return client, server
}

// listen opens a TCP listener in ns that accepts and closes connections.
func listen(t *testing.T, ns, addr string) {
	t.Helper()
	var l net.Listener
	err := namespace.Do(testutil.Path(ns), func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
}

func TestTCPLossRefusedTimeout(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	client, server := pair(t)
	listen(t, server, "198.18.10.2:8080")
	// 30% of SYNs to 8080 dropped; everything to 8082 dropped; 8081 closed.
	testutil.MustRun(t, server, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", "8080",
		"-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "DROP")
	testutil.MustRun(t, server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP")
	ctx := context.Background()
	base := Options{Netns: testutil.Path(client), Interval: 2 * time.Millisecond, Timeout: 250 * time.Millisecond}

	// 300 attempts at p=0.3: sd of the loss is sqrt(.3*.7/300) = 2.6 points;
	// the tolerance of +-9 points is 3.4 sd (fails by chance < 1 in 1000).
	o := base
	o.Target, o.Count = "198.18.10.2:8080", 300
	res, err := Run(ctx, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Summary
	t.Logf("lossy: %+v", s)
	if s.Sent != 300 || s.Refused != 0 || s.Errors != 0 || s.OK+s.Timeout != 300 {
		t.Errorf("lossy port: want only connected and timeouts, got %+v", s)
	}
	if s.Loss < 21 || s.Loss > 39 {
		t.Errorf("loss %.1f%% outside 30%% +- 9", s.Loss)
	}
	if s.RTT.Count != s.OK || s.RTT.Min <= 0 || s.RTT.P99 < s.RTT.P50 {
		t.Errorf("rtt stats inconsistent: %+v", s.RTT)
	}
	// The kernel's handshake RTT is there for every connect and never above
	// the wall-clock connect time.
	if s.KernelRTT == nil || s.KernelRTT.Count != s.OK {
		t.Errorf("kernel RTT stats: %+v", s.KernelRTT)
	}
	for _, a := range res.Attempts {
		if a.Outcome == Connected && (a.KernelRTT <= 0 || a.KernelRTT > a.RTT+0.001) {
			t.Errorf("attempt %d: kernel RTT %.3fms, connect time %.3fms", a.Seq, a.KernelRTT, a.RTT)
		}
	}

	o = base
	o.Target, o.Count = "198.18.10.2:8081", 5
	res, err = Run(ctx, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Refused != 5 || res.Summary.Loss != 100 {
		t.Errorf("closed port: want 5 refused, got %+v", res.Summary)
	}

	o = base
	o.Target, o.Count = "198.18.10.2:8082", 3
	res, err = Run(ctx, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Timeout != 3 || res.Summary.Refused != 0 {
		t.Errorf("dropped port: want 3 timeouts, got %+v", res.Summary)
	}
	for _, a := range res.Attempts {
		if a.RTT < 240 {
			t.Errorf("timeout after %.1fms, before the 250ms timeout", a.RTT)
		}
	}
}

func TestUDPAndDNS(t *testing.T) {
	testutil.RequireRoot(t)
	client, server := pair(t)
	var pc, dc net.PacketConn
	err := namespace.Do(testutil.Path(server), func() error {
		var err error
		if pc, err = net.ListenPacket("udp", "198.18.10.2:7000"); err != nil {
			return err
		}
		dc, err = net.ListenPacket("udp", "198.18.10.2:5353")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(); _ = dc.Close() })
	go func() { // echo server that prefixes "echo:"
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	testutil.ServeDNS(t, dc, map[string]string{"svc.test.": "svc.test. 30 IN A 198.18.10.9"})

	ctx := context.Background()
	base := Options{Netns: testutil.Path(client), Interval: time.Millisecond, Timeout: 300 * time.Millisecond, Count: 3}
	tests := []struct {
		name      string
		opts      Options
		ok, refd  int
		timeouts  int
		wantRcode string
	}{
		{"udp echo", Options{Mode: ModeUDP, Target: "198.18.10.2:7000", Payload: []byte("hi"), Expect: []byte("echo:hi")}, 3, 0, 0, ""},
		{"udp wrong reply", Options{Mode: ModeUDP, Target: "198.18.10.2:7000", Payload: []byte("hi"), Expect: []byte("nope")}, 0, 0, 0, ""},
		{"udp closed port", Options{Mode: ModeUDP, Target: "198.18.10.2:7001"}, 0, 3, 0, ""},
		{"dns answer", Options{Mode: ModeDNS, Target: "198.18.10.2:5353", DNSName: "svc.test"}, 3, 0, 0, "NOERROR"},
		{"dns nxdomain", Options{Mode: ModeDNS, Target: "198.18.10.2:5353", DNSName: "nope.test"}, 3, 0, 0, "NXDOMAIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.Netns, o.Interval, o.Timeout, o.Count = base.Netns, base.Interval, base.Timeout, base.Count
			res, err := Run(ctx, o, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := res.Summary
			if s.OK != tt.ok || s.Refused != tt.refd || s.Timeout != tt.timeouts {
				t.Errorf("got %+v (attempts %+v)", s, res.Attempts)
			}
			if tt.wantRcode != "" && s.Rcodes[tt.wantRcode] != 3 {
				t.Errorf("rcodes %v, want 3x %s", s.Rcodes, tt.wantRcode)
			}
		})
	}
}

// TestNetnsResolverDialsInNamespace: the resolver's connections leave from
// the namespace (the server is only reachable from the client namespace).
func TestNetnsResolverDialsInNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	client, server := pair(t)
	listen(t, server, "198.18.10.2:5300")
	r := NetnsResolver(testutil.Path(client))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := r.Dial(ctx, "tcp", "198.18.10.2:5300")
	if err != nil {
		t.Fatalf("dial from the client namespace: %v", err)
	}
	if got := c.LocalAddr().String(); !strings.HasPrefix(got, "198.18.10.1:") {
		t.Errorf("local address %s is not the client namespace's", got)
	}
	_ = c.Close()
	if NetnsResolver("") != net.DefaultResolver {
		t.Error("no namespace: want the default resolver")
	}
}
