package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/capture"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// Two nodes' captures (real AF_PACKET captures in two namespaces, as two
// agents return them) merge into one pcapng that tshark reads: every
// point's interface block, named by its node, every packet on its point,
// in time order.
func TestMergeNodeCaptures(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tshark")
	a, b := testutil.NewNetns(t, "clmrg-a"), testutil.NewNetns(t, "clmrg-b")
	testutil.MustRun(t, a, "ip", "link", "add", "m0", "type", "veth", "peer", "name", "m1", "netns", b)
	testutil.MustRun(t, a, "ip", "addr", "add", "198.18.53.1/24", "dev", "m0")
	testutil.MustRun(t, a, "ip", "link", "set", "m0", "up")
	testutil.MustRun(t, b, "ip", "addr", "add", "198.18.53.2/24", "dev", "m1")
	testutil.MustRun(t, b, "ip", "link", "set", "m1", "up")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var bufs [2]bytes.Buffer
	var sess [2]*capture.Session
	for i, p := range []capture.Point{{Node: "node-a", Netns: testutil.Path(a), Iface: "m0"}, {Node: "node-b", Netns: testutil.Path(b), Iface: "m1"}} {
		s, err := capture.Start(ctx, capture.Config{Points: []capture.Point{p}, Filter: "udp port 47124", Count: 4, Duration: 10 * time.Second, MaxBytes: 1 << 20, BufferBytes: 1 << 20, Out: &bufs[i]})
		if err != nil {
			t.Fatal(err)
		}
		sess[i] = s
	}
	c, err := namespace.ListenPacket(ctx, testutil.Path(a), "udp", "198.18.53.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	for i := 0; i < 4; i++ {
		if _, err := c.WriteTo(fmt.Appendf(nil, "merge %d", i), &net.UDPAddr{IP: net.ParseIP("198.18.53.2"), Port: 47124}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range sess {
		if r, err := s.Wait(); err != nil || r.Packets != 4 {
			t.Fatalf("capture: %v, %+v", err, r)
		}
	}
	merged, pkts, err := mergePcapng([][]byte{bufs[0].Bytes(), bufs[1].Bytes()}, "udp port 47124")
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 8 {
		t.Fatalf("%d packets merged, want 8", len(pkts))
	}
	for i := 1; i < len(pkts); i++ {
		if pkts[i].ci.Timestamp.Before(pkts[i-1].ci.Timestamp) {
			t.Errorf("packet %d out of time order", i)
		}
	}
	file := filepath.Join(t.TempDir(), "merged.pcapng")
	if err := os.WriteFile(file, merged, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.interface_description", "-e", "udp.dstport").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	per := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 3 && f[2] == "47124" && strings.Contains(f[1], "node "+strings.Split(f[0], "/")[0]) {
			per[f[0]]++
		}
	}
	if want := map[string]int{"node-a/host/m0": 4, "node-b/host/m1": 4}; fmt.Sprint(per) != fmt.Sprint(want) {
		t.Errorf("tshark: per interface %v, want %v\n%s", per, want, out)
	}
	// The merged file is what --analyze reads.
	an, err := capture.AnalyzeFile(file, capture.AnalyzeOptions{})
	if err != nil {
		t.Fatalf("analyze the merged file: %v", err)
	}
	if an.Packets != 8 || len(an.Flows) != 1 || an.Flows[0].Packets["node-a/host/m0"] != 4 || an.Flows[0].Packets["node-b/host/m1"] != 4 || len(an.Flows[0].Missing) != 0 {
		t.Errorf("analysis of the merged file: %d packets, flows %+v; want one flow seen 4 times at each node", an.Packets, an.Flows)
	}
	if _, _, err := mergePcapng([][]byte{[]byte("not a pcapng")}, ""); err == nil {
		t.Error("merged garbage")
	}
}
