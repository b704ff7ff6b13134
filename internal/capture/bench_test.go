package capture

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// benchLoad is the load of one run: this many 100-byte UDP datagrams sent
// as fast as one goroutine can, over the client's veth.
const benchLoad = 300000

// settle is the wait between the end of the load and the stop: longer than
// libpcap's 1 s TPACKET_V3 block timeout, so that tcpdump has read its last
// block when it gets SIGINT.
const settle = 1500 * time.Millisecond

type benchRun struct {
	tool              string
	sent, got, kdrops uint64
}

func runOurs(b *testing.B, client, dir string, buffer int) benchRun {
	f, err := os.Create(filepath.Join(dir, "nd.pcapng"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s, err := Start(context.Background(), Config{Points: []Point{{Netns: testutil.Path(client), NetnsLabel: client, Iface: "c0"}},
		Filter: "udp", Out: f, MaxBytes: 1 << 30, BufferBytes: buffer})
	if err != nil {
		b.Fatal(err)
	}
	sendUDP(b, client, "198.18.40.2:9999", benchLoad, 100)
	time.Sleep(settle)
	s.Stop()
	res, err := s.Wait()
	if err != nil {
		b.Fatal(err)
	}
	p := res.Points[0]
	return benchRun{fmt.Sprintf("netdoctor %d MiB", buffer>>20), benchLoad, p.Written, p.KernelDrops}
}

var tdStats = regexp.MustCompile(`(\d+) packets (captured|dropped by kernel)`)

// runTcpdump runs tcpdump -w on the same veth under the same load and reads
// its exit statistics. extra are additional tcpdump flags (e.g. -B).
func runTcpdump(b *testing.B, client, dir string, extra ...string) benchRun {
	path, err := exec.LookPath("tcpdump")
	if err != nil {
		b.Skip("tcpdump not installed")
	}
	args := append([]string{"-i", "c0", "-n", "-w", filepath.Join(dir, "td.pcap")}, extra...)
	args = append(args, "udp")
	cmd := exec.Command(path, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := namespace.Do(testutil.Path(client), cmd.Start); err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() { // wait until it listens
		if strings.Contains(sc.Text(), "listening on") {
			break
		}
	}
	sendUDP(b, client, "198.18.40.2:9999", benchLoad, 100)
	time.Sleep(settle)
	_ = cmd.Process.Signal(syscall.SIGINT)
	var rest []string
	for sc.Scan() {
		rest = append(rest, sc.Text())
	}
	_ = cmd.Wait()
	r := benchRun{tool: "tcpdump " + strings.Join(extra, " "), sent: benchLoad}
	for _, m := range tdStats.FindAllStringSubmatch(strings.Join(rest, "\n"), -1) {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		if m[2] == "captured" {
			r.got = v
		} else {
			r.kdrops = v
		}
	}
	return r
}

// BenchmarkCaptureVsTcpdump captures the same UDP flood on the same veth
// with netdoctor and with tcpdump at equal kernel buffers (2 MiB: tcpdump's
// default; 32 MiB: netdoctor's default, tcpdump -B 32768), alternating, and
// reports packets captured and kernel drops of each (docs/performance.md,
// "tools").
func BenchmarkCaptureVsTcpdump(b *testing.B) {
	testutil.RequireRoot(b)
	client, _, server := bridged(b)
	udpSink(b, server, "198.18.40.2:9999")
	dir := b.TempDir()
	totals := map[string]*benchRun{}
	var order []string
	add := func(r benchRun) {
		b.Logf("%-22s sent %d captured %d (%.2f%%) kernel drops %d", r.tool, r.sent, r.got, 100*float64(r.got)/float64(r.sent), r.kdrops)
		t := totals[r.tool]
		if t == nil {
			t = &benchRun{tool: r.tool}
			totals[r.tool] = t
			order = append(order, r.tool)
		}
		t.sent += r.sent
		t.got += r.got
		t.kdrops += r.kdrops
	}
	for i := 0; i < b.N; i++ {
		add(runOurs(b, client, dir, 2<<20))
		add(runTcpdump(b, client, dir)) // its default buffer: 2 MiB
		add(runOurs(b, client, dir, 32<<20))
		add(runTcpdump(b, client, dir, "-B", "32768"))
	}
	for _, k := range order {
		t := totals[k]
		name := strings.NewReplacer(" ", "", "-", "").Replace(t.tool)
		b.ReportMetric(100*float64(t.got)/float64(t.sent), fmt.Sprintf("%s-captured-%%", name))
		b.ReportMetric(float64(t.kdrops)/float64(b.N), fmt.Sprintf("%s-drops/run", name))
	}
}
