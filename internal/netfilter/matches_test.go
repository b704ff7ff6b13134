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
