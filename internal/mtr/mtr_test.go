package mtr

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestParseReply(t *testing.T) {
	ip := func(proto byte, src, dst string, payload []byte) []byte {
		b := make([]byte, 20, 20+len(payload))
		b[0], b[8], b[9] = 0x45, 64, proto
		copy(b[12:16], net.ParseIP(src).To4())
		copy(b[16:20], net.ParseIP(dst).To4())
		binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
		return append(b, payload...)
	}
	icmpMsg := func(typ, code byte, body []byte) []byte {
		return append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, body...)
	}
	echo := echoRequest(0x1234, 7, 36)
	udp := []byte{0x80, 0x00, 0x82, 0x9a, 0, 8, 0, 0}
	tcp := []byte{0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1}
	reply := echoRequest(0x1234, 7, 36)
	reply[0] = 0
	tests := []struct {
		name string
		pkt  []byte
		ok   bool
		want Reply
	}{
		{"echo reply", ip(1, "198.18.0.9", "198.18.0.1", reply), true,
			Reply{From: net.ParseIP("198.18.0.9").To4(), Type: 0, Proto: 1, ID: 0x1234, Seq: 7}},
		{"time exceeded quoting echo", ip(1, "198.18.0.2", "198.18.0.1", icmpMsg(11, 0, ip(1, "198.18.0.1", "198.18.0.9", echo[:8]))), true,
			Reply{From: net.ParseIP("198.18.0.2").To4(), Type: 11, Proto: 1, InnerDst: net.ParseIP("198.18.0.9").To4(), ID: 0x1234, Seq: 7}},
		{"port unreachable quoting udp", ip(1, "198.18.0.9", "198.18.0.1", icmpMsg(3, 3, ip(17, "198.18.0.1", "198.18.0.9", udp))), true,
			Reply{From: net.ParseIP("198.18.0.9").To4(), Type: 3, Code: 3, Proto: 17, InnerDst: net.ParseIP("198.18.0.9").To4(), SrcPort: 32768, DstPort: 33434}},
		{"time exceeded quoting tcp", ip(1, "198.18.0.3", "198.18.0.1", icmpMsg(11, 0, ip(6, "198.18.0.1", "198.18.0.9", tcp))), true,
			Reply{From: net.ParseIP("198.18.0.3").To4(), Type: 11, Proto: 6, InnerDst: net.ParseIP("198.18.0.9").To4(), SrcPort: 40000, DstPort: 80}},
		{"echo request is not a reply", ip(1, "198.18.0.1", "198.18.0.9", echo), false, Reply{}},
		{"truncated quote", ip(1, "198.18.0.2", "198.18.0.1", icmpMsg(11, 0, []byte{0x45, 0})), false, Reply{}},
		{"not icmp", ip(6, "198.18.0.2", "198.18.0.1", tcp), false, Reply{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, _ := ParseReply(tt.pkt)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tt.ok, got)
			}
			if ok && fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2, 0, 0, 0, 0, 0, 1, 0, 1})
	f.Add(append([]byte{0x46}, make([]byte, 60)...))
	f.Fuzz(func(_ *testing.T, b []byte) { _, _, _ = ParseReply(b) })
}

func TestAnnotate(t *testing.T) {
	hop := func(ttl, sent, recv int, rtts ...float64) Hop {
		h := Hop{TTL: ttl, Sent: sent, Replies: map[string]int{fmt.Sprintf("198.18.0.%d", ttl): recv}}
		for i := 0; i < recv; i++ {
			v := 1.0
			if len(rtts) > 0 {
				v = rtts[i%len(rtts)]
			}
			h.RTTs = append(h.RTTs, v)
		}
		h.hopStats()
		return h
	}
	tests := []struct {
		name      string
		hops      []Hop
		rateLimit []int // TTLs flagged as rate limiting
		realLoss  []int
		highStdev []int
		summary   string
	}{
		{"clean", []Hop{hop(1, 100, 100), hop(2, 100, 100)}, nil, nil, nil, "no loss"},
		{"middle hop rate limits", []Hop{hop(1, 100, 100), hop(2, 100, 60), hop(3, 100, 100)}, []int{2}, nil, nil, "rate limiting"},
		{"loss from hop 2 to the end", []Hop{hop(1, 100, 100), hop(2, 100, 70), hop(3, 100, 71), hop(4, 100, 69)}, nil, []int{2, 3, 4}, nil, "starting at hop 2"},
		{"middle rate limit and real loss at the end", []Hop{hop(1, 200, 200), hop(2, 200, 140), hop(3, 200, 200), hop(4, 200, 160)}, []int{2}, []int{4}, nil, "starting at hop 4"},
		{"silent router", []Hop{hop(1, 50, 50), hop(2, 50, 0), hop(3, 50, 50)}, []int{2}, nil, nil, "no loss"},
		{"jitter", []Hop{hop(1, 50, 50, 1, 1, 1, 20, 30), hop(2, 50, 50)}, nil, nil, []int{1}, "unstable latency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Report{Address: "198.18.0.9", Reached: true, Hops: tt.hops}
			r.Annotate()
			var rl, real, hs []int
			for _, h := range r.Hops {
				if h.RateLimit {
					rl = append(rl, h.TTL)
				}
				if h.RealLoss {
					real = append(real, h.TTL)
				}
				if h.HighStDev {
					hs = append(hs, h.TTL)
				}
			}
			if fmt.Sprint(rl) != fmt.Sprint(tt.rateLimit) || fmt.Sprint(real) != fmt.Sprint(tt.realLoss) || fmt.Sprint(hs) != fmt.Sprint(tt.highStdev) {
				t.Errorf("rate limit %v real %v stdev %v; want %v %v %v", rl, real, hs, tt.rateLimit, tt.realLoss, tt.highStdev)
			}
			if !strings.Contains(strings.Join(r.Summary, "\n"), tt.summary) {
				t.Errorf("summary %q lacks %q", r.Summary, tt.summary)
			}
		})
	}
}

// chain builds client - r1 - r2 - r3 - server: link i is 198.18.3i.0/24,
// the left end .1 and the right end .2. It returns the namespaces.
func chain(t testing.TB) []string {
	t.Helper()
	names := []string{"cl", "r1", "r2", "r3", "sv"}
	ns := make([]string, len(names))
	for i, n := range names {
		ns[i] = testutil.NewNetns(t, "mtr"+n)
		testutil.MustRun(t, ns[i], "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0")
	}
	for i := 0; i < 4; i++ {
		left, right := fmt.Sprintf("l%d", i+1), fmt.Sprintf("r%d", i+1)
		testutil.MustRun(t, ns[i], "ip", "link", "add", left, "type", "veth", "peer", "name", right, "netns", ns[i+1])
		testutil.MustRun(t, ns[i], "ip", "addr", "add", fmt.Sprintf("198.18.3%d.1/24", i+1), "dev", left)
		testutil.MustRun(t, ns[i], "ip", "link", "set", left, "up")
		testutil.MustRun(t, ns[i+1], "ip", "addr", "add", fmt.Sprintf("198.18.3%d.2/24", i+1), "dev", right)
		testutil.MustRun(t, ns[i+1], "ip", "link", "set", right, "up")
	}
	for i := 0; i < 5; i++ {
		for j := 1; j <= 4; j++ {
			if j == i || j == i+1 { // directly connected
				continue
			}
			via := fmt.Sprintf("198.18.3%d.2", i+1) // rightwards
			if j < i {
				via = fmt.Sprintf("198.18.3%d.1", i) // leftwards
			}
			testutil.MustRun(t, ns[i], "ip", "route", "add", fmt.Sprintf("198.18.3%d.0/24", j), "via", via)
		}
	}
	// New veths drop packets until the kernel has activated them, and the
	// first packets wait for ARP: warm the path up before measuring loss.
	testutil.MustRun(t, ns[0], "ping", "-c", "1", "-w", "5", "198.18.34.2")
	return ns
}

func TestTraceChain(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "iptables")
	ns := chain(t)
	// r2 answers only ~70% of time-exceeded (its own ICMP), the server
	// drops ~20% of echo requests (real loss at the last hop).
	testutil.MustRun(t, ns[2], "iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded",
		"-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "DROP")
	testutil.MustRun(t, ns[4], "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
		"-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")
	ctx := context.Background()
	const rounds = 200
	rep, err := Run(ctx, Options{Target: "198.18.34.2", Count: rounds, Interval: 10 * time.Millisecond,
		Timeout: 500 * time.Millisecond, Netns: testutil.Path(ns[0])}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Text(false))
	wantAddr := []string{"198.18.31.2", "198.18.32.2", "198.18.33.2", "198.18.34.2"}
	if len(rep.Hops) != 4 || !rep.Reached {
		t.Fatalf("want 4 hops reaching the server, got %d (reached %v)", len(rep.Hops), rep.Reached)
	}
	// Loss tolerances: 3.4 standard deviations of a binomial over 200 probes.
	tol := func(p float64) float64 { return 100 * 3.4 * math.Sqrt(p*(1-p)/rounds) }
	wantLoss := []float64{0, 30, 0, 20}
	for i, h := range rep.Hops {
		if len(h.Addresses) != 1 || h.Addresses[0] != wantAddr[i] {
			t.Errorf("hop %d: addresses %v, want %s", h.TTL, h.Addresses, wantAddr[i])
		}
		if h.Sent != rounds {
			t.Errorf("hop %d: Snt %d, want %d", h.TTL, h.Sent, rounds)
		}
		if math.Abs(h.Loss-wantLoss[i]) > math.Max(tol(wantLoss[i]/100), 2) {
			t.Errorf("hop %d: loss %.1f%%, want %.0f%% +- %.1f", h.TTL, h.Loss, wantLoss[i], tol(wantLoss[i]/100))
		}
	}
	if h := rep.Hops[1]; !h.RateLimit || h.RealLoss {
		t.Errorf("hop 2 should read as rate limiting: %+v", h.Notes)
	}
	if h := rep.Hops[3]; !h.RealLoss || h.RateLimit {
		t.Errorf("hop 4 should read as real loss: %+v", h.Notes)
	}
	if rep.Hops[0].RealLoss || rep.Hops[2].RealLoss || rep.Hops[0].RateLimit || rep.Hops[2].RateLimit {
		t.Errorf("hops 1 and 3 are clean: %+v %+v", rep.Hops[0].Notes, rep.Hops[2].Notes)
	}
	if s := strings.Join(rep.Summary, "\n"); !strings.Contains(s, "starting at hop 4") || !strings.Contains(s, "hop 2 (198.18.32.2)") {
		t.Errorf("summary: %s", s)
	}
}

func TestTraceUDPAndTCP(t *testing.T) {
	testutil.RequireRoot(t)
	ns := chain(t)
	for _, p := range []Protocol{UDP, TCP} {
		t.Run(string(p), func(t *testing.T) {
			rep, err := Run(context.Background(), Options{Target: "198.18.34.2", Protocol: p, Port: 8080, Count: 5,
				Interval: 20 * time.Millisecond, Timeout: 300 * time.Millisecond, Netns: testutil.Path(ns[0])}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Log("\n" + rep.Text(false))
			if len(rep.Hops) != 4 || !rep.Reached {
				t.Fatalf("want 4 hops, got %d", len(rep.Hops))
			}
			for _, h := range rep.Hops {
				if h.Loss != 0 || h.Sent != 5 {
					t.Errorf("hop %d: loss %.0f%% of %d", h.TTL, h.Loss, h.Sent)
				}
			}
			if rep.Hops[3].Addresses[0] != "198.18.34.2" || rep.Hops[1].Addresses[0] != "198.18.32.2" {
				t.Errorf("addresses: %v %v", rep.Hops[1].Addresses, rep.Hops[3].Addresses)
			}
		})
	}
}

// rttFloorMs is the absolute RTT tolerance against mtr. The namespace chain
// has RTTs of 4-40µs (this kernel has no netem to add delay), where 10% is
// below the wake-up jitter of an idle vCPU; mtr against itself differs by up
// to ~10µs at these RTTs (docs/performance.md, "tools").
const rttFloorMs = 0.03

// mtrJSON is the part of `mtr -j` that the comparison reads.
type mtrJSON struct {
	Report struct {
		Hubs []struct {
			Count int     `json:"count"`
			Host  string  `json:"host"`
			Loss  float64 `json:"Loss%"`
			Snt   int     `json:"Snt"`
			Avg   float64 `json:"Avg"`
			Best  float64 `json:"Best"`
			Wrst  float64 `json:"Wrst"`
			StDev float64 `json:"StDev"`
		} `json:"hubs"`
	} `json:"report"`
}

func runMtr(t testing.TB, netns string, rounds int) mtrJSON {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := command.Output(ctx, testutil.Path(netns), "mtr", "-j", "-n", "-c", fmt.Sprint(rounds), "-i", "0.01", "-G", "0.5", "198.18.34.2")
	if err != nil {
		t.Fatal(err)
	}
	var m mtrJSON
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("parse mtr -j: %v\n%s", err, out)
	}
	return m
}

// BenchmarkTraceVsMtr runs mtr and netdoctor's trace alternately over the
// same lossy chain and reports per-hop loss and average RTT of both
// (docs/performance.md, "tools"). It also fails when hops differ, loss
// differs beyond statistical tolerance, or average RTTs differ by more than
// 10% or rttFloorMs, whichever is larger.
func BenchmarkTraceVsMtr(b *testing.B) {
	testutil.RequireRoot(b)
	testutil.RequireProgram(b, "mtr")
	ns := chain(b)
	testutil.MustRun(b, ns[2], "iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded",
		"-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "DROP")
	testutil.MustRun(b, ns[4], "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
		"-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")
	const rounds = 200
	for i := 0; i < b.N; i++ {
		m := runMtr(b, ns[0], rounds)
		rep, err := Run(context.Background(), Options{Target: "198.18.34.2", Count: rounds, Interval: 10 * time.Millisecond,
			Timeout: 500 * time.Millisecond, Netns: testutil.Path(ns[0])}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if len(m.Report.Hubs) != len(rep.Hops) {
			b.Fatalf("mtr saw %d hops, netdoctor %d", len(m.Report.Hubs), len(rep.Hops))
		}
		for j, hub := range m.Report.Hubs {
			h := rep.Hops[j]
			b.Logf("hop %d %-12s loss mtr %5.1f%% nd %5.1f%% | avg mtr %.3fms nd %.3fms | best mtr %.3f nd %.3f | wrst mtr %.3f nd %.3f",
				h.TTL, hub.Host, hub.Loss, h.Loss, hub.Avg, h.Avg, hub.Best, h.Best, hub.Wrst, h.Worst)
			if hub.Host != h.Addresses[0] {
				b.Errorf("hop %d: mtr %s, netdoctor %s", h.TTL, hub.Host, h.Addresses[0])
			}
			p := math.Max(hub.Loss, h.Loss) / 100
			if d := math.Abs(hub.Loss - h.Loss); d > math.Max(100*3.4*math.Sqrt(2*p*(1-p)/rounds), 2) {
				b.Errorf("hop %d: loss mtr %.1f%% vs netdoctor %.1f%%", h.TTL, hub.Loss, h.Loss)
			}
			if d := math.Abs(hub.Avg - h.Avg); d > math.Max(0.1*hub.Avg, rttFloorMs) {
				b.Errorf("hop %d: avg RTT mtr %.3fms vs netdoctor %.3fms", h.TTL, hub.Avg, h.Avg)
			}
			b.ReportMetric(h.Avg*1000, fmt.Sprintf("nd-hop%d-avg-us", h.TTL))
			b.ReportMetric(hub.Avg*1000, fmt.Sprintf("mtr-hop%d-avg-us", h.TTL))
		}
	}
}
