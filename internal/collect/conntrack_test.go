package collect

import (
	"context"
	"encoding/binary"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// sendInvalidACKs sends n bare TCP ACKs for no connection to 127.0.0.1 from
// a raw socket inside the namespace: with nf_conntrack_tcp_loose=0,
// conntrack counts each one as invalid.
func sendInvalidACKs(t *testing.T, ns string, n int) {
	t.Helper()
	err := namespace.Do(testutil.Path(ns), func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_TCP)
		if err != nil {
			return err
		}
		defer func() { _ = syscall.Close(fd) }()
		lo := [4]byte{127, 0, 0, 1}
		for i := range n {
			tcp := make([]byte, 20)
			binary.BigEndian.PutUint16(tcp[0:], uint16(40000+i)) // source port
			binary.BigEndian.PutUint16(tcp[2:], 5000)            // destination port
			binary.BigEndian.PutUint32(tcp[4:], 1)               // seq
			binary.BigEndian.PutUint32(tcp[8:], 1)               // ack
			tcp[12] = 5 << 4                                     // data offset
			tcp[13] = 0x10                                       // ACK
			binary.BigEndian.PutUint16(tcp[14:], 65535)          // window
			// Checksum over the pseudo-header and the segment.
			pseudo := append(append(append([]byte{}, lo[:]...), lo[:]...), 0, syscall.IPPROTO_TCP, 0, 20)
			var sum uint32
			for _, b := range [][]byte{pseudo, tcp} {
				for j := 0; j < len(b); j += 2 {
					sum += uint32(binary.BigEndian.Uint16(b[j:]))
				}
			}
			for sum>>16 != 0 {
				sum = sum&0xffff + sum>>16
			}
			binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
			if err := syscall.Sendto(fd, tcp, 0, &syscall.SockaddrInet4{Addr: lo}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send raw TCP ACKs in %s: %v", ns, err)
	}
}

// parseConntrackS parses `conntrack -S` (cpu=0 found=0 invalid=8 ...).
func parseConntrackS(t *testing.T, out string) []facts.ConntrackCPUStat {
	t.Helper()
	var res []facts.ConntrackCPUStat
	for line := range strings.Lines(out) {
		kv := map[string]uint64{}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("conntrack -S field %q: %v", f, err)
			}
			kv[k] = n
		}
		if len(kv) == 0 {
			continue
		}
		res = append(res, facts.ConntrackCPUStat{
			CPU: int(kv["cpu"]), Found: kv["found"], Invalid: kv["invalid"], Insert: kv["insert"],
			InsertFailed: kv["insert_failed"], Drop: kv["drop"], EarlyDrop: kv["early_drop"], Error: kv["error"],
			SearchRestart: kv["search_restart"], ClashResolve: kv["clash_resolve"], ChainTooLong: kv["chaintoolong"],
		})
	}
	return res
}

// TestConntrackStatMatchesConntrackS provokes invalid packets in a fresh
// namespace and checks that the counters read from /proc/net/stat/nf_conntrack
// inside it are those conntrack -S reads through ctnetlink.
func TestConntrackStatMatchesConntrackS(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "conntrack")
	testutil.RequireProgram(t, "iptables-nft")
	ns := testutil.NewNetns(t, "cct")
	testutil.MustRun(t, ns, "iptables-nft", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	err := namespace.Do(testutil.Path(ns), func() error {
		return os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_tcp_loose", []byte("0"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	sendInvalidACKs(t, ns, n)

	s, err := Collect(context.Background(), Options{Netns: ns, Sections: []string{SectionConntrack}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Conntrack == nil {
		t.Fatalf("no conntrack facts: %v", s.Errors)
	}
	want := parseConntrackS(t, testutil.MustRun(t, ns, "conntrack", "-S"))
	if len(want) != len(s.Conntrack.PerCPU) {
		t.Fatalf("%d CPUs from conntrack -S, %d from /proc", len(want), len(s.Conntrack.PerCPU))
	}
	var invalid uint64
	for i, w := range want {
		got := s.Conntrack.PerCPU[i]
		got.Entries, got.New, got.Ignore, got.Delete, got.ExpectNew, got.ExpectCreate, got.ExpectDelete = 0, 0, 0, 0, 0, 0, 0
		if got != w {
			t.Errorf("cpu %d: /proc %+v, conntrack -S %+v", i, got, w)
		}
		invalid += got.Invalid
	}
	// Each ACK crosses conntrack twice over loopback (OUTPUT, then
	// PREROUTING) and is invalid both times.
	if invalid != 2*n {
		t.Errorf("invalid = %d over all CPUs, want %d", invalid, 2*n)
	}
}
