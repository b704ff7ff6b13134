package capture

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// frame serializes layers into an Ethernet frame.
func frame(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tcpFrame(t testing.TB, src, dst string, sport, dport uint16, seq, ack uint32, flags string, payload int) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4(), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, Window: 1000,
		SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A"), RST: strings.Contains(flags, "R")}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return frame(t, eth, ip, tcp, gopacket.Payload(make([]byte, payload)))
}

func tcp6Frame(t testing.TB, src, dst string, sport, dport uint16, flags string) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 5, Window: 1000, SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A")}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return frame(t, eth, ip, tcp)
}

// tooBigFrame is an ICMPv6 packet-too-big from router about a quoted packet.
func tooBigFrame(t testing.TB, router, dst string, mtu uint32, quoted []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: net.ParseIP(router), DstIP: net.ParseIP(dst)}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	body := append([]byte{byte(mtu >> 24), byte(mtu >> 16), byte(mtu >> 8), byte(mtu)}, quoted[14:]...) // quoted IP packet, no Ethernet
	return frame(t, eth, ip, ic, gopacket.Payload(body))
}

func arpFrame(t testing.TB, op uint16, sender, target string) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: []byte{2, 0, 0, 0, 0, 1}, SourceProtAddress: net.ParseIP(sender).To4(), DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(target).To4()}
	return frame(t, eth, arp)
}

func pcapOf(t testing.TB, frames ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	for i, f := range frames {
		ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(f), Length: len(f)}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestAnalyzeTable(t *testing.T) {
	c, s := "198.18.70.1", "198.18.70.2"
	tests := []struct {
		name   string
		frames [][]byte
		kinds  []string
	}{
		{"clean handshake", [][]byte{
			tcpFrame(t, c, s, 40000, 80, 100, 0, "S", 0), tcpFrame(t, s, c, 80, 40000, 900, 101, "SA", 0),
			tcpFrame(t, c, s, 40000, 80, 101, 901, "A", 0), tcpFrame(t, c, s, 40000, 80, 101, 901, "A", 500),
			tcpFrame(t, s, c, 80, 40000, 901, 601, "A", 0)}, nil},
		{"syn without reply", [][]byte{
			tcpFrame(t, c, s, 40001, 81, 7, 0, "S", 0), tcpFrame(t, c, s, 40001, 81, 7, 0, "S", 0)}, []string{"syn-no-reply", "retransmissions"}},
		{"rst", [][]byte{
			tcpFrame(t, c, s, 40002, 82, 7, 0, "S", 0), tcpFrame(t, s, c, 82, 40002, 0, 8, "RA", 0)}, []string{"syn-no-reply", "rst"}},
		{"mtu: big segment retransmitted, small ones acked", [][]byte{
			tcpFrame(t, c, s, 40003, 80, 100, 0, "S", 0), tcpFrame(t, s, c, 80, 40003, 900, 101, "SA", 0),
			tcpFrame(t, c, s, 40003, 80, 101, 901, "A", 300), tcpFrame(t, s, c, 80, 40003, 901, 401, "A", 0),
			tcpFrame(t, c, s, 40003, 80, 401, 901, "A", 1448), tcpFrame(t, c, s, 40003, 80, 401, 901, "A", 1448),
			tcpFrame(t, c, s, 40003, 80, 401, 901, "A", 1448), tcpFrame(t, c, s, 40003, 80, 401, 901, "A", 1448)}, []string{"retransmissions", "mtu"}},
		{"arp without reply", [][]byte{arpFrame(t, 1, "198.18.70.1", "198.18.70.9"), arpFrame(t, 1, "198.18.70.1", "198.18.70.9")}, []string{"arp-no-reply"}},
		{"arp answered", [][]byte{arpFrame(t, 1, "198.18.70.1", "198.18.70.2"), arpFrame(t, 2, "198.18.70.2", "198.18.70.1")}, nil},
		{"ipv6 syn without reply", [][]byte{tcp6Frame(t, "2001:db8::1", "2001:db8::2", 40000, 443, "S")}, []string{"syn-no-reply"}},
		{"ipv6 packet too big", [][]byte{tooBigFrame(t, "2001:db8::fe", "2001:db8::1", 1280, tcp6Frame(t, "2001:db8::1", "2001:db8::2", 40000, 443, "A"))}, []string{"icmp-frag-needed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			an, err := Analyze(bytes.NewReader(pcapOf(t, tt.frames...)), AnalyzeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range an.Findings {
				got = append(got, f.Kind)
			}
			if strings.Join(got, ",") != strings.Join(tt.kinds, ",") {
				t.Errorf("findings %v, want %v\n%s", got, tt.kinds, an.Text())
			}
		})
	}
}

func FuzzAnalyze(f *testing.F) {
	f.Add(pcapOf(f, tcpFrame(f, "198.18.70.1", "198.18.70.2", 1, 2, 3, 4, "S", 10), arpFrame(f, 1, "198.18.70.1", "198.18.70.3")))
	f.Add([]byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0})
	f.Fuzz(func(_ *testing.T, b []byte) { _, _ = Analyze(bytes.NewReader(b), AnalyzeOptions{}) })
}
