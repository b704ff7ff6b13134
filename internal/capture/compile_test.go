package capture

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

// corpus is a set of Ethernet frames covering what the filters look at.
func corpus(t testing.TB) [][]byte {
	mac1, mac2 := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	eth := func(typ layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: typ}
	}
	ip4 := func(src, dst string, proto layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	}
	ip6 := func(src, dst string, nh layers.IPProtocol) *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: nh, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	}
	var out [][]byte
	addrs := [][2]string{{"198.18.0.1", "198.18.0.2"}, {"198.18.5.7", "198.18.0.1"}, {"198.19.1.1", "198.18.200.3"}}
	ports := [][2]uint16{{40000, 80}, {80, 40000}, {53, 5353}, {22, 3389}, {1025, 21}, {8472, 8472}}
	for _, a := range addrs {
		for _, p := range ports {
			for _, fl := range []string{"S", "SA", "A", "R", "FA", "PA"} {
				ip := ip4(a[0], a[1], layers.IPProtocolTCP)
				tcp := &layers.TCP{SrcPort: layers.TCPPort(p[0]), DstPort: layers.TCPPort(p[1]), Seq: 1, Window: 100,
					SYN: contains([]string{"S", "SA"}, fl), ACK: fl != "S" && fl != "R", RST: fl == "R", FIN: fl == "FA", PSH: fl == "PA"}
				_ = tcp.SetNetworkLayerForChecksum(ip)
				out = append(out, frame(t, eth(layers.EthernetTypeIPv4), ip, tcp, gopacket.Payload(make([]byte, len(fl)*40))))
			}
			ip := ip4(a[0], a[1], layers.IPProtocolUDP)
			udp := &layers.UDP{SrcPort: layers.UDPPort(p[0]), DstPort: layers.UDPPort(p[1])}
			_ = udp.SetNetworkLayerForChecksum(ip)
			out = append(out, frame(t, eth(layers.EthernetTypeIPv4), ip, udp, gopacket.Payload(make([]byte, 30))))
			// A later fragment: no transport header.
			fr := ip4(a[0], a[1], layers.IPProtocolUDP)
			fr.FragOffset = 100
			out = append(out, frame(t, eth(layers.EthernetTypeIPv4), fr, gopacket.Payload([]byte{byte(p[0] >> 8), byte(p[0]), byte(p[1] >> 8), byte(p[1]), 0, 0, 0, 0})))
		}
		for _, tc := range []layers.ICMPv4TypeCode{layers.CreateICMPv4TypeCode(8, 0), layers.CreateICMPv4TypeCode(0, 0),
			layers.CreateICMPv4TypeCode(3, 4), layers.CreateICMPv4TypeCode(11, 0)} {
			out = append(out, frame(t, eth(layers.EthernetTypeIPv4), ip4(a[0], a[1], layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: tc}, gopacket.Payload(make([]byte, 56))))
		}
		out = append(out, arpFrame(t, 1, a[0], a[1]), arpFrame(t, 2, a[1], a[0]))
	}
	// IPv4 with options (IHL 6): the transport header moves.
	opt := ip4("198.18.0.1", "198.18.0.2", layers.IPProtocolTCP)
	opt.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 1}
	_ = tcp.SetNetworkLayerForChecksum(opt)
	out = append(out, frame(t, eth(layers.EthernetTypeIPv4), opt, tcp))
	for _, p := range ports {
		ip := ip6("2001:db8::1", "2001:db8:1::2", layers.IPProtocolTCP)
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p[0]), DstPort: layers.TCPPort(p[1]), SYN: true, Window: 1}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		out = append(out, frame(t, eth(layers.EthernetTypeIPv6), ip, tcp))
		ip = ip6("2001:db8:1::2", "fe80::1", layers.IPProtocolUDP)
		udp := &layers.UDP{SrcPort: layers.UDPPort(p[0]), DstPort: layers.UDPPort(p[1])}
		_ = udp.SetNetworkLayerForChecksum(ip)
		out = append(out, frame(t, eth(layers.EthernetTypeIPv6), ip, udp))
	}
	return out
}

// filters are the expressions checked against tcpdump's compiler; the
// seed's examples are among them.
var filters = []string{
	"ip", "ip6", "arp", "tcp", "udp", "icmp", "not ip",
	"host 198.18.0.1", "src host 198.18.0.1", "dst 198.18.0.2", "src 198.18.5.7",
	"host 198.18.0.1 and 198.18.0.2", "host 198.18.0.1 or 198.19.1.1",
	"net 198.18.0.0/24", "src net 198.18.0.0/16", "dst net 198.18.200.0/24", "net 198.18.0.0/15",
	"port 80", "src port 1025", "dst port 3389 or 22", "tcp port 53", "udp port 53", "tcp dst port 80",
	"portrange 21-23", "udp portrange 5000-6000", "port 8472",
	"less 80", "greater 100", "len <= 128", "len > 90",
	"tcp[13] & 4 != 0", "tcp[tcpflags] == tcp-rst", "tcp[13] & 2 != 0", "tcp[tcpflags] == tcp-syn",
	"tcp[13] = 18", "tcp[13] & 32 != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)",
	"tcp[tcpflags] & tcp-push != 0", "tcp[13] & 1 != 0",
	"icmp[icmptype] == icmp-echo", "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply",
	"icmp[0] = 3 and icmp[1] = 4", "ip[9] = 17", "ip[6:2] & 0x1fff != 0", "ip[2:2] > 100", "udp[2:2] = 8472",
	"ether[12:2] = 0x0806",
	"host 2001:db8::1", "src net 2001:db8::/32", "ip6 and dst host fe80::1",
	"src 198.18.5.7 and dst port 80", "src 198.18.0.1 and (dst port 3389 or 22)",
	"not icmp and dst 198.18.0.2", "tcp and not port 22", "!tcp || udp", "(tcp or udp) and host 198.19.1.1",
	"not (port 80 or port 53)", "icmp or arp", "ip and not net 198.18.0.0/24",
	"(tcp[13] & 2) != 0", "(tcp[13] & 0xf0) >> 4 == 1", "((tcp[12] & 0xf0) >> 2) > 20", "0 != (tcp[13] & 4)",
	"(ip[0] & 0xf) > 5", "((tcp or udp)) and not (host 198.18.0.1 or host 198.18.0.2)",
}

func runBPF(t testing.TB, prog []bpf.RawInstruction, pkt []byte) bool {
	t.Helper()
	ins, ok := bpf.Disassemble(prog)
	if !ok {
		t.Fatalf("program does not disassemble")
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	n, err := vm.Run(pkt)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return n > 0
}

// TestBuiltinMatchesTcpdump runs both compilers' programs over the corpus:
// every filter must accept exactly the same packets as libpcap's program.
func TestBuiltinMatchesTcpdump(t *testing.T) {
	testutil.RequireProgram(t, "tcpdump")
	pkts := corpus(t)
	ctx := context.Background()
	for _, f := range filters {
		t.Run(f, func(t *testing.T) {
			ours, err := CompileBuiltin(f, layers.LinkTypeEthernet, 262144)
			if err != nil {
				t.Fatalf("builtin: %v", err)
			}
			ref, err := compileTcpdump(ctx, f, layers.LinkTypeEthernet, 262144)
			if err != nil {
				t.Fatalf("tcpdump: %v", err)
			}
			accepted := 0
			for i, p := range pkts {
				a, b := runBPF(t, ours, p), runBPF(t, ref, p)
				if a != b {
					t.Errorf("packet %d (%s): builtin %v, tcpdump %v", i, gopacket.NewPacket(p, layers.LayerTypeEthernet, gopacket.Default).String()[:200], a, b)
				}
				if a {
					accepted++
				}
			}
			t.Logf("%d of %d packets accepted, %d instructions (tcpdump %d)", accepted, len(pkts), len(ours), len(ref))
		})
	}
}

func TestBuiltinErrors(t *testing.T) {
	tests := []struct {
		expr string
		want error
	}{
		{"udp port (", ErrBadFilter},
		{"host", ErrBadFilter},
		{"port port", ErrBadFilter},
		{"tcp[13] &", ErrBadFilter},
		{"net 198.18.0.1/24", ErrBadFilter},
		{"ip[6:3] = 1", ErrBadFilter},
		{"host example.com", errUnsupported},
		{"ether host 02:00:00:00:00:01", errUnsupported},
		{"ip[2:2] > ip[0]", errUnsupported},
		{"(tcp[13] & 1) + 2 * 3 > 0", errUnsupported},
		{"vlan 100", ErrBadFilter},
	}
	for _, tt := range tests {
		_, err := CompileBuiltin(tt.expr, layers.LinkTypeEthernet, 100)
		if !errors.Is(err, tt.want) {
			t.Errorf("%q: %v, want %v", tt.expr, err, tt.want)
		}
	}
}

func FuzzCompileBuiltin(f *testing.F) {
	for _, e := range filters {
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		prog, err := CompileBuiltin(expr, layers.LinkTypeEthernet, 100)
		if err != nil {
			return
		}
		if _, ok := bpf.Disassemble(prog); !ok {
			t.Fatalf("%q: program does not disassemble", expr)
		}
	})
}

// TestCompileWithoutTcpdump: with no tcpdump on the node, the built-in
// compiler serves the subset and says clearly what it cannot do.
func TestCompileWithoutTcpdump(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	ctx := context.Background()
	if _, by, err := CompileFilter(ctx, "tcp port 80 and host 198.18.0.1", layers.LinkTypeEthernet, 100); err != nil || by != CompilerBuiltin {
		t.Errorf("subset filter: %s, %v", by, err)
	}
	if _, _, err := CompileFilter(ctx, "udp port (", layers.LinkTypeEthernet, 100); !errors.Is(err, ErrBadFilter) {
		t.Errorf("malformed filter: %v", err)
	}
	_, _, err := CompileFilter(ctx, "vlan and udp", layers.LinkTypeEthernet, 100)
	if err == nil || !strings.Contains(err.Error(), "tcpdump") {
		t.Errorf("filter outside the subset without tcpdump: %v", err)
	}
}
