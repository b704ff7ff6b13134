package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestParseDDD(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		n       int
		wantErr bool
	}{
		{"udp port 53", "testdata/udp-port-53.ddd", 20, false},
		{"accept all", "testdata/accept-all.ddd", 1, false},
		{"count mismatch", "", 0, true},
		{"jump past end", "", 0, true},
		{"garbage", "", 0, true},
	}
	inline := map[string]string{
		"count mismatch": "3\n6 0 0 100\n",
		"jump past end":  "2\n21 5 0 2048\n6 0 0 0\n",
		"garbage":        "1\nret #0\n",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b []byte
			if tt.in != "" {
				var err error
				if b, err = os.ReadFile(tt.in); err != nil {
					t.Fatal(err)
				}
			} else {
				b = []byte(inline[tt.name])
			}
			prog, err := ParseDDD(b)
			if (err != nil) != tt.wantErr || len(prog) != tt.n {
				t.Errorf("ParseDDD: %d instructions, err %v", len(prog), err)
			}
		})
	}
}

func FuzzParseDDD(f *testing.F) {
	for _, p := range []string{"testdata/udp-port-53.ddd", "testdata/accept-all.ddd"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(_ *testing.T, b []byte) { _, _ = ParseDDD(b) })
}

func TestCompileFilter(t *testing.T) {
	testutil.RequireProgram(t, "tcpdump")
	ctx := context.Background()
	tests := []struct {
		expr    string
		wantErr error
		by      string
	}{
		{"udp port 9999", nil, CompilerBuiltin},
		{"tcp[tcpflags] & tcp-syn != 0 and not port 22", nil, CompilerBuiltin},
		{"", nil, CompilerBuiltin},
		{"vlan and udp", nil, CompilerTcpdump},                 // outside the built-in subset
		{"ether host 02:00:00:00:00:01", nil, CompilerTcpdump}, // idem
		{"udp port (", ErrBadFilter, ""},
		{"hots 198.18.0.1", ErrBadFilter, ""},
	}
	for _, tt := range tests {
		prog, by, err := CompileFilter(ctx, tt.expr, layers.LinkTypeEthernet, 256)
		if !errors.Is(err, tt.wantErr) || (err == nil && len(prog) == 0) {
			t.Errorf("CompileFilter(%q) = %d instructions, %v", tt.expr, len(prog), err)
		}
		if err == nil && by != tt.by {
			t.Errorf("CompileFilter(%q) compiled by %s, want %s", tt.expr, by, tt.by)
		}
	}
}

// bridged builds client (c0 198.18.40.1) - bridge namespace (br0 with ports
// bc and bs) - server (s0 198.18.40.2).
func bridged(t testing.TB) (client, bridge, server string) {
	t.Helper()
	client = testutil.NewNetns(t, "capc")
	bridge = testutil.NewNetns(t, "capb")
	server = testutil.NewNetns(t, "caps")
	testutil.MustRun(t, bridge, "ip", "link", "add", "br0", "type", "bridge")
	testutil.MustRun(t, bridge, "ip", "link", "set", "br0", "up")
	for _, e := range []struct{ ns, dev, port, addr string }{{client, "c0", "bc", "198.18.40.1/24"}, {server, "s0", "bs", "198.18.40.2/24"}} {
		testutil.MustRun(t, bridge, "ip", "link", "add", e.port, "type", "veth", "peer", "name", e.dev, "netns", e.ns)
		testutil.MustRun(t, bridge, "ip", "link", "set", e.port, "master", "br0", "up")
		testutil.MustRun(t, e.ns, "ip", "addr", "add", e.addr, "dev", e.dev)
		testutil.MustRun(t, e.ns, "ip", "link", "set", e.dev, "up")
	}
	// New links drop packets until the kernel has activated them (and the
	// bridge port has gone to forwarding): wait for the path to work.
	testutil.MustRun(t, client, "ping", "-c", "1", "-w", "5", "198.18.40.2")
	return client, bridge, server
}

// sendUDP sends n datagrams from netns ns to dst.
func sendUDP(t testing.TB, ns, dst string, n int, size int) {
	t.Helper()
	err := namespace.Do(testutil.Path(ns), func() error {
		c, err := net.Dial("udp", dst)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		buf := make([]byte, size)
		for i := 0; i < n; i++ {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func udpSink(t testing.TB, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := namespace.Do(testutil.Path(ns), func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
}

func TestCaptureTwoPoints(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tcpdump")
	testutil.RequireProgram(t, "tshark")
	client, bridge, server := bridged(t)
	udpSink(t, server, "198.18.40.2:9999")
	udpSink(t, server, "198.18.40.2:9998")
	file := filepath.Join(t.TempDir(), "two.pcapng")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	points := []Point{
		{Node: "test", Netns: testutil.Path(client), NetnsLabel: client, Iface: "c0"},
		{Node: "test", Netns: testutil.Path(bridge), NetnsLabel: bridge, Iface: "bs", Note: "bridge br0 port to the server"},
	}
	s, err := Start(context.Background(), Config{Points: points, Filter: "udp dst port 9999", Out: f, Duration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	sendUDP(t, client, "198.18.40.2:9999", n, 100)
	sendUDP(t, client, "198.18.40.2:9998", 77, 100) // filtered out
	testutil.MustRun(t, client, "ping", "-c", "2", "-i", "0.01", "198.18.40.2")
	time.Sleep(200 * time.Millisecond) // TPACKET_V3 block timeout is 10ms
	s.Stop()
	res, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Packets != 2*n {
		t.Errorf("captured %d packets, want %d", res.Packets, 2*n)
	}
	for _, p := range res.Points {
		if p.Written != n || p.KernelDrops != 0 {
			t.Errorf("%s: %d written, %d dropped; want %d, 0", p.Label, p.Written, p.KernelDrops, n)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := command.Output(context.Background(), "", "tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.interface_description", "-e", "udp.dstport")
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			t.Fatalf("tshark line %q", line)
		}
		if f[2] != "9999" {
			t.Errorf("filter not honoured: %q", line)
		}
		count[f[0]]++
		if !strings.Contains(f[1], "node test, netns ndt-cap") || !strings.Contains(f[1], "device") {
			t.Errorf("interface description %q", f[1])
		}
	}
	for _, p := range points {
		if count[p.Label()] != n {
			t.Errorf("tshark: %d packets on %s, want %d (%v)", count[p.Label()], p.Label(), n, count)
		}
	}
	// The analysis sees the flow at both points.
	an, err := AnalyzeFile(file, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(an.Flows) != 1 || len(an.Flows[0].Missing) != 0 || len(an.Points) != 2 {
		t.Errorf("flows %+v", an.Flows)
	}
}

func TestCaptureBounds(t *testing.T) {
	testutil.RequireRoot(t)
	client, _, server := bridged(t)
	udpSink(t, server, "198.18.40.2:9999")
	p := []Point{{Netns: testutil.Path(client), NetnsLabel: client, Iface: "c0"}}
	tests := []struct {
		name    string
		cfg     Config
		stopped string
	}{
		{"count", Config{Count: 10}, "count"},
		{"size", Config{MaxBytes: 20000}, "size"},
		{"duration", Config{Duration: 300 * time.Millisecond, Filter: "udp port 1"}, "duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			cfg := tt.cfg
			cfg.Points, cfg.Out = p, &buf
			s, err := Start(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < 50; i++ {
					sendUDP(t, client, "198.18.40.2:9999", 10, 1000)
					time.Sleep(5 * time.Millisecond)
				}
			}()
			res, err := s.Wait()
			<-done
			if err != nil {
				t.Fatal(err)
			}
			if res.Stopped != tt.stopped {
				t.Errorf("stopped by %q, want %q", res.Stopped, tt.stopped)
			}
			if tt.cfg.Count > 0 && res.Packets != uint64(tt.cfg.Count) {
				t.Errorf("%d packets, want %d", res.Packets, tt.cfg.Count)
			}
			if tt.cfg.MaxBytes > 0 && int64(buf.Len()) > tt.cfg.MaxBytes {
				t.Errorf("file of %d bytes exceeds %d", buf.Len(), tt.cfg.MaxBytes)
			}
		})
	}
}

func TestCaptureBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "capx")
	_, err := Start(context.Background(), Config{Points: []Point{{Netns: testutil.Path(ns), NetnsLabel: ns, Iface: "nope0"}}})
	if !errors.Is(err, ErrNoInterface) {
		t.Errorf("missing interface: %v", err)
	}
	_, err = Start(context.Background(), Config{Points: []Point{{Netns: testutil.Path(ns), NetnsLabel: ns, Iface: "lo"}}, Filter: "port port"})
	if !errors.Is(err, ErrBadFilter) {
		t.Errorf("bad filter: %v", err)
	}
}

// routed builds client (198.18.41.1) - router - server (198.18.42.2) with
// the router's server-side MTU lowered to 1000 while the server keeps 1500
// (an MTU mismatch) and the router's ICMP frag-needed dropped: a PMTU black
// hole for the client's full-size segments.
func routed(t testing.TB) (client, router, server string) {
	t.Helper()
	client = testutil.NewNetns(t, "mtuc")
	router = testutil.NewNetns(t, "mtur")
	server = testutil.NewNetns(t, "mtus")
	testutil.MustRun(t, router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	testutil.MustRun(t, client, "sysctl", "-qw", "net.ipv4.tcp_mtu_probing=0")
	testutil.MustRun(t, client, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", router)
	testutil.MustRun(t, server, "ip", "link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", router)
	testutil.MustRun(t, client, "ip", "addr", "add", "198.18.41.1/24", "dev", "c0")
	testutil.MustRun(t, client, "ip", "link", "set", "c0", "up")
	testutil.MustRun(t, client, "ip", "route", "add", "default", "via", "198.18.41.2")
	testutil.MustRun(t, router, "ip", "addr", "add", "198.18.41.2/24", "dev", "rc")
	testutil.MustRun(t, router, "ip", "addr", "add", "198.18.42.1/24", "dev", "rs")
	testutil.MustRun(t, router, "ip", "link", "set", "rc", "up")
	testutil.MustRun(t, router, "ip", "link", "set", "rs", "mtu", "1000", "up")
	testutil.MustRun(t, server, "ip", "addr", "add", "198.18.42.2/24", "dev", "s0")
	testutil.MustRun(t, server, "ip", "link", "set", "s0", "up")
	testutil.MustRun(t, server, "ip", "route", "add", "default", "via", "198.18.42.1")
	testutil.MustRun(t, router, "iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP")
	testutil.MustRun(t, client, "ping", "-c", "1", "-w", "5", "198.18.42.2") // links activated, ARP resolved
	return client, router, server
}

func TestAnalyzeMTUAndSynNoReply(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	client, _, server := routed(t)
	// A server that reads everything; port 81 drops SYNs silently.
	var l net.Listener
	if err := namespace.Do(testutil.Path(server), func() error {
		var err error
		l, err = net.Listen("tcp", "198.18.42.2:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = bytes.NewBuffer(nil).ReadFrom(c); _ = c.Close() }()
		}
	}()
	testutil.MustRun(t, server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "81", "-j", "DROP")

	file := filepath.Join(t.TempDir(), "mtu.pcapng")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(context.Background(), Config{Points: []Point{{Node: "test", Netns: testutil.Path(client), NetnsLabel: client, Iface: "c0"}},
		Filter: "tcp or icmp", Out: f, Duration: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = namespace.Do(testutil.Path(client), func() error {
		d := net.Dialer{Timeout: 1500 * time.Millisecond}
		go func() { // SYNs into the void, from the client's namespace too
			_ = namespace.Do(testutil.Path(client), func() error {
				if c, err := d.Dial("tcp", "198.18.42.2:81"); err == nil {
					_ = c.Close()
				}
				return nil
			})
		}()
		c, err := d.Dial("tcp", "198.18.42.2:80")
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetWriteDeadline(time.Now().Add(3500 * time.Millisecond))
		_, err = c.Write(make([]byte, 200000)) // times out: full segments never pass
		if err == nil {
			return errors.New("bulk write passed the MTU black hole")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if _, err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	an, err := AnalyzeFile(file, AnalyzeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + an.Text())
	kinds := map[string][]Finding{}
	for _, f := range an.Findings {
		kinds[f.Kind] = append(kinds[f.Kind], f)
	}
	if m := kinds["mtu"]; len(m) != 1 || !strings.Contains(m[0].Message, "segments of 1448 bytes") || !strings.Contains(m[0].Flow, "198.18.41.1") {
		t.Errorf("mtu finding: %+v", m)
	}
	if s := kinds["syn-no-reply"]; len(s) != 1 || !strings.Contains(s[0].Flow, "198.18.42.2:81") {
		t.Errorf("syn-no-reply: %+v", s)
	}
	if len(kinds["retransmissions"]) != 2 {
		t.Errorf("retransmissions: %+v", kinds["retransmissions"])
	}
}

// TestTcpdumpReadsOurFile and the reverse: our analyzer reads tcpdump's pcap.
func TestAnalyzeTcpdumpPcap(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tcpdump")
	client, _, server := bridged(t)
	udpSink(t, server, "198.18.40.2:9999")
	file := filepath.Join(t.TempDir(), "td.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := command.Run(ctx, command.Cmd{Name: "tcpdump", Args: []string{"-i", "c0", "-c", "5", "-w", file, "udp"}, Netns: testutil.Path(client)})
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < 20; i++ {
		sendUDP(t, client, "198.18.40.2:9999", 1, 10)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			an, err := AnalyzeFile(file, AnalyzeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if an.Packets != 5 || len(an.Flows) != 5 || !strings.HasSuffix(an.Flows[0].Flow, "198.18.40.2:9999") {
				t.Errorf("analysis of tcpdump's file: %+v", an)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("tcpdump did not finish")
}

func TestCaptureVXLANAndUplink(t *testing.T) {
	testutil.RequireRoot(t)
	n1 := testutil.NewNetns(t, "vx1")
	n2 := testutil.NewNetns(t, "vx2")
	testutil.MustRun(t, n1, "ip", "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", n2)
	for i, ns := range []string{n1, n2} {
		me, peer := i+1, 2-i
		dev := fmt.Sprintf("u%d", me)
		testutil.MustRun(t, ns, "ip", "addr", "add", fmt.Sprintf("198.18.60.%d/24", me), "dev", dev)
		testutil.MustRun(t, ns, "ip", "link", "set", dev, "up")
		testutil.MustRun(t, ns, "ip", "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport", "8472",
			"local", fmt.Sprintf("198.18.60.%d", me), "remote", fmt.Sprintf("198.18.60.%d", peer), "dev", dev)
		testutil.MustRun(t, ns, "ip", "addr", "add", fmt.Sprintf("198.18.61.%d/24", me), "dev", "vx0")
		testutil.MustRun(t, ns, "ip", "link", "set", "vx0", "up")
	}
	udpSink(t, n2, "198.18.61.2:9999")
	testutil.MustRun(t, n1, "ping", "-c", "1", "-w", "5", "198.18.61.2") // links activated, overlay neighbour resolved
	file := filepath.Join(t.TempDir(), "vx.pcapng")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s, err := Start(context.Background(), Config{Points: []Point{
		{Node: "node-1", Netns: testutil.Path(n1), NetnsLabel: n1, Iface: "vx0"},
		{Node: "node-1", Netns: testutil.Path(n1), NetnsLabel: n1, Iface: "u1"},
	}, Filter: "udp", Out: f, Duration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sendUDP(t, n1, "198.18.61.2:9999", 20, 200)
	time.Sleep(200 * time.Millisecond)
	s.Stop()
	if _, err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	// 198.18.60.2 is the only known node: VXLAN from 198.18.60.1 is foreign.
	an, err := AnalyzeFile(file, AnalyzeOptions{NodeIPs: []net.IP{net.ParseIP("198.18.60.2")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + an.Text())
	var inner *FlowSeen
	for i, fl := range an.Flows {
		if strings.HasSuffix(fl.Flow, "198.18.61.2:9999") {
			inner = &an.Flows[i]
		}
	}
	vx0, u1 := "node-1/"+n1+"/vx0", "node-1/"+n1+"/u1"
	if inner == nil || inner.Packets[vx0] != 20 || inner.Packets[u1] != 20 || len(inner.Missing) != 0 {
		t.Errorf("inner flow at both points: %+v", inner)
	}
	// Overlay ARP (neighbour reconfirmation) may add tunnel packets both ways.
	var out *VXLANFlow
	for i, v := range an.VXLAN {
		if v.Outer == "198.18.60.1 -> 198.18.60.2:8472" {
			out = &an.VXLAN[i]
		} else if v.Foreign {
			t.Errorf("known node flagged: %+v", v)
		}
	}
	if out == nil || out.VNI != 1 || out.Packets < 20 || !out.Foreign || out.Point != u1 || !contains(out.Inner, inner.Flow) {
		t.Errorf("vxlan: %+v", an.VXLAN)
	}
	foreign := 0
	for _, f := range an.Findings {
		if f.Kind == "vxlan-foreign-source" {
			foreign++
		}
	}
	if foreign != 1 {
		t.Errorf("want one foreign-source finding: %+v", an.Findings)
	}
}

func TestCaptureInterfaceRemoved(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "capgone")
	testutil.MustRun(t, ns, "ip", "link", "add", "g0", "type", "veth", "peer", "name", "g1")
	testutil.MustRun(t, ns, "ip", "link", "set", "g0", "up")
	s, err := Start(context.Background(), Config{Points: []Point{{Netns: testutil.Path(ns), NetnsLabel: ns, Iface: "g0"}}, Duration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	testutil.MustRun(t, ns, "ip", "link", "del", "g0")
	start := time.Now()
	res, err := s.Wait()
	if err == nil || res.Stopped != "error" || time.Since(start) > 5*time.Second {
		t.Errorf("capture on a removed interface: stopped %q after %v, err %v", res.Stopped, time.Since(start), err)
	}
}
