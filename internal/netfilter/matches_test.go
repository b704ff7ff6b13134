package netfilter

import (
	"strings"
	"testing"
)

// TestIptablesMatches checks each match extension on its own rule of the
// captured matches fixture (INPUT and FORWARD policy DROP).
func TestIptablesMatches(t *testing.T) {
	rs := loadRuleset(t, "matches-iptables-nft.save")
	env := nodeEnv(t)
	in := func(dport uint16) Packet {
		return Packet{Src: addr("198.19.1.15"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: dport, InIface: "eth0"}
	}
	with := func(p Packet, f func(*Packet)) Packet { f(&p); return p }
	for _, tc := range []struct {
		name    string
		pkt     Packet
		flow    Flow
		env     *Env
		verdict Verdict
		chain   string
		pos     int
		reason  string
	}{
		{"tcp-flags SYN of a new connection", in(2001), FlowInput, nil, VerdictAccept, "INPUT", 1, ""},
		{"tcp-flags: an ACK is not a SYN", with(in(2001), func(p *Packet) { p.CTState = CTEstablished }), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"--syn", in(2002), FlowInput, nil, VerdictAccept, "INPUT", 2, ""},
		{"! --syn with a SYN", in(2003), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"! --syn with an ACK", with(in(2003), func(p *Packet) { p.TCPFlags = TCPAck }), FlowInput, nil, VerdictAccept, "INPUT", 3, ""},
		{"length unknown", in(2004), FlowInput, nil, VerdictUnknown, "INPUT", 4, "packet length not given"},
		{"length in range", with(in(2004), func(p *Packet) { p.Length = 60 }), FlowInput, nil, VerdictAccept, "INPUT", 4, ""},
		{"length out of range", with(in(2004), func(p *Packet) { p.Length = 1500 }), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"iprange inside", in(2005), FlowInput, nil, VerdictAccept, "INPUT", 5, ""},
		{"iprange outside", with(in(2005), func(p *Packet) { p.Src = addr("198.19.1.21") }), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"pkttype unicast", in(2006), FlowInput, nil, VerdictAccept, "INPUT", 6, ""},
		{"hashlimit upto: one packet is under the limit", in(2007), FlowInput, nil, VerdictAccept, "INPUT", 7, ""},
		{"recent --set always matches", in(2008), FlowInput, nil, VerdictAccept, "INPUT", 8, ""},
		{"recent --rcheck depends on history", in(2009), FlowInput, nil, VerdictUnknown, "INPUT", 9, "-m recent --rcheck"},
		{"recent --rcheck of a client never seen", in(2009), FlowInput, &Env{LocalAddrs: env.LocalAddrs, NoHistory: true}, VerdictDrop, "INPUT", 0, ""},
		{"conntrack original destination and direction", in(2010), FlowInput, nil, VerdictAccept, "INPUT", 10, ""},
		{"addrtype --src-type LOCAL: local source", with(in(2011), func(p *Packet) { p.Src = addr("198.19.255.1") }), FlowInput, nil, VerdictAccept, "INPUT", 11, ""},
		{"addrtype --src-type LOCAL: remote source", in(2011), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"multiport source range", with(in(2012), func(p *Packet) { p.SrcPort = 5005 }), FlowInput, nil, VerdictAccept, "INPUT", 12, ""},
		{"multiport source outside", in(2012), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"unsupported match tcpmss", in(2013), FlowInput, nil, VerdictUnknown, "INPUT", 13, "unsupported match -m tcpmss"},
		{"! -i eth+ from eth0", in(2014), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"! -i eth+ from cni0", with(in(2014), func(p *Packet) { p.InIface = "cni0" }), FlowInput, nil, VerdictAccept, "INPUT", 14, ""},
		{"state NEW with source port range", in(2015), FlowInput, nil, VerdictAccept, "INPUT", 15, ""},
		{"bitmap:port set without the port", with(in(2016), func(p *Packet) { p.Proto = "udp" }), FlowInput, nil, VerdictDrop, "INPUT", 0, ""},
		{"set contents unknown", with(in(2016), func(p *Packet) { p.Proto = "udp" }), FlowInput, &Env{LocalAddrs: env.LocalAddrs}, VerdictUnknown, "INPUT", 16, `ipset "web-ports"`},
		{"unsupported match mac", in(2017), FlowInput, nil, VerdictUnknown, "INPUT", 17, "unsupported match -m mac"},
		{"physdev bridged from a veth", with(in(2100), func(p *Packet) { p.PhysInIface = "veth12"; p.OutIface = "cni0"; p.InIface = "cni0" }), FlowForward, nil, VerdictAccept, "FORWARD", 1, ""},
		{"physdev: not bridged", with(in(2100), func(p *Packet) { p.OutIface = "cni0" }), FlowForward, nil, VerdictDrop, "FORWARD", 0, ""},
		{"-f never matches a first fragment, ! -f does", with(in(2101), func(p *Packet) { p.OutIface = "cni0" }), FlowForward, nil, VerdictAccept, "FORWARD", 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := env
			if tc.env != nil {
				e = *tc.env
			}
			outs, err := Trace([]*Ruleset{rs}, tc.pkt, tc.flow, e)
			if err != nil {
				t.Fatal(err)
			}
			if len(outs) != 1 {
				t.Fatalf("%d outcomes", len(outs))
			}
			o := outs[0]
			h := o.LastHit()
			if o.Verdict != tc.verdict || h.Chain != tc.chain || h.Position != tc.pos || !strings.Contains(o.Reason, tc.reason) {
				t.Errorf("got %s at %s#%d (%q), want %s at %s#%d (%q)\n%s", o.Verdict, h.Chain, h.Position, o.Reason,
					tc.verdict, tc.chain, tc.pos, tc.reason, hitActions(o))
			}
		})
	}
}

// TestNftMatches checks nftables expressions one rule each on the captured
// matches fixture (inet table, input policy drop).
func TestNftMatches(t *testing.T) {
	rs := loadRuleset(t, "matches-nftables.json")
	env := nodeEnv(t)
	in := func(dport uint16) Packet {
		return Packet{Src: addr("198.19.1.15"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: dport, InIface: "eth0"}
	}
	with := func(p Packet, f func(*Packet)) Packet { f(&p); return p }
	for _, tc := range []struct {
		name    string
		pkt     Packet
		verdict Verdict
		pos     int
		reason  string
	}{
		{"tcp flags & (syn|ack) == syn", in(3001), VerdictAccept, 1, ""},
		{"tcp flags & (syn|ack) == syn with an ACK", with(in(3001), func(p *Packet) { p.TCPFlags = TCPAck }), VerdictDrop, 0, ""},
		{"tcp flags syn", in(3002), VerdictAccept, 2, ""},
		{"anonymous set of protocols", with(in(3003), func(p *Packet) { p.Proto = "udp" }), VerdictAccept, 3, ""},
		{"meta nfproto ipv6 on IPv4", in(3004), VerdictDrop, 0, ""},
		{"meta nfproto ipv6 on IPv6", with(in(3004), func(p *Packet) { p.Src, p.Dst = addr("fd00:198:19:1::15"), addr("fd00:198:19:ff::1") }), VerdictAccept, 4, ""},
		{"anonymous concatenated set", in(3005), VerdictAccept, 5, ""},
		{"anonymous concatenated set, other port", with(in(3005), func(p *Packet) { p.SrcPort = 40001 }), VerdictDrop, 0, ""},
		{"fib daddr . iif type local", in(3006), VerdictAccept, 6, ""},
		{"fib daddr . iif: address of another interface", with(in(3006), func(p *Packet) { p.Dst = addr("198.18.1.1") }), VerdictDrop, 0, ""},
		{"limit rate over does not match one packet, limit rate does", in(3007), VerdictAccept, 8, ""},
		{"ct original ip daddr", in(3008), VerdictAccept, 9, ""},
		{"ct state != { established, related }", in(3009), VerdictAccept, 10, ""},
		{"ct state != { established, related } established", with(in(3009), func(p *Packet) { p.CTState = CTEstablished }), VerdictDrop, 0, ""},
		{"fib oif needs routes", in(3010), VerdictUnknown, 11, "fib saddr . iif oif"},
		{"quota is not traced", in(3011), VerdictUnknown, 13, "unsupported nftables statement quota"},
		{"meta pkttype host", in(3012), VerdictAccept, 14, ""},
		{"!= prefix", with(in(3013), func(p *Packet) { p.Src = addr("198.19.2.1") }), VerdictAccept, 15, ""},
		{"!= prefix inside", in(3013), VerdictDrop, 0, ""},
		{"port range", with(in(3014), func(p *Packet) { p.SrcPort = 40000 }), VerdictAccept, 16, ""},
		{"icmpv6 type by name", Packet{Src: addr("fd00:198:19:1::15"), Dst: addr("fd00:198:19:ff::1"), Proto: "icmpv6", ICMPType: 128, InIface: "eth0"}, VerdictAccept, 17, ""},
		{"jhash is not traced", in(3015), VerdictUnknown, 18, "unsupported nftables expression"},
		{"meta mark set then continue", in(3016), VerdictAccept, 20, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outs, err := Trace([]*Ruleset{rs}, tc.pkt, FlowInput, env)
			if err != nil {
				t.Fatal(err)
			}
			if len(outs) != 1 {
				t.Fatalf("%d outcomes", len(outs))
			}
			o := outs[0]
			h := o.LastHit()
			if o.Verdict != tc.verdict || h.Position != tc.pos || !strings.Contains(o.Reason, tc.reason) {
				t.Errorf("got %s at #%d (%q), want %s at #%d (%q)\n%s", o.Verdict, h.Position, o.Reason, tc.verdict, tc.pos, tc.reason, hitActions(o))
			}
		})
	}
}

// TestNftNAT checks snat and redirect statements of the matches fixture.
func TestNftNAT(t *testing.T) {
	rs := loadRuleset(t, "matches-nftables.json")
	env := nodeEnv(t)
	outs, err := Trace([]*Ruleset{rs}, Packet{Src: addr("198.19.255.1"), Dst: addr("198.19.200.5"), Proto: "tcp", SrcPort: 40000, DstPort: 4001, OutIface: "eth0"}, FlowOutput, env)
	if err != nil || len(outs) != 1 {
		t.Fatalf("%v %v", outs, err)
	}
	if got := summary(outs[0]); got != "accept 198.19.255.9:5000>198.19.200.5:4001 p=1.000" {
		t.Errorf("snat: %s\n%s", got, hitActions(outs[0]))
	}
	outs, err = Trace([]*Ruleset{rs}, Packet{Src: addr("198.19.1.15"), Dst: addr("198.19.255.1"), Proto: "tcp", SrcPort: 40000, DstPort: 4002, InIface: "eth0"}, FlowInput, env)
	if err != nil || len(outs) != 1 {
		t.Fatalf("%v %v", outs, err)
	}
	// redirected to the in interface's address, then dropped by the input policy
	if got := summary(outs[0]); got != "drop 198.19.1.15:40000>198.19.255.1:14002 p=1.000" {
		t.Errorf("redirect: %s\n%s", got, hitActions(outs[0]))
	}
}
