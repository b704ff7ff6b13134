package capture

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// VXLANPorts are the UDP ports decoded as VXLAN: flannel's 8472 and IANA's 4789.
var VXLANPorts = map[uint16]bool{8472: true, 4789: true}

// Finding is one thing an expert would point at in a capture.
type Finding struct {
	Kind     string   `json:"kind"` // retransmissions, mtu, syn-no-reply, rst, icmp-frag-needed, icmp-unreachable, arp-no-reply, vxlan-foreign-source, not-seen
	Point    string   `json:"point,omitempty"`
	Flow     string   `json:"flow,omitempty"`
	Message  string   `json:"message"`
	Evidence []string `json:"evidence,omitempty"`
}

// FlowSeen says at which points a flow was captured.
type FlowSeen struct {
	Flow    string         `json:"flow"`
	Packets map[string]int `json:"packets"` // per point label
	Missing []string       `json:"notSeenAt,omitempty"`
}

// VXLANFlow is one outer tunnel flow and what it carried.
type VXLANFlow struct {
	Point   string   `json:"point"`
	Outer   string   `json:"outer"` // src -> dst:port
	VNI     uint32   `json:"vni"`
	Packets int      `json:"packets"`
	Inner   []string `json:"inner"` // inner flows
	Foreign bool     `json:"foreignSource,omitempty"`
}

// Analysis is the result of reading a capture.
type Analysis struct {
	File     string            `json:"file,omitempty"`
	Points   []string          `json:"points"`
	Filters  map[string]string `json:"filters,omitempty"` // capture filter per point, from the file
	Packets  int               `json:"packets"`
	Findings []Finding         `json:"findings"`
	Flows    []FlowSeen        `json:"flows"`
	VXLAN    []VXLANFlow       `json:"vxlan,omitempty"`
}

// AnalyzeOptions tune the analysis.
type AnalyzeOptions struct {
	NodeIPs []net.IP // known node addresses: VXLAN from elsewhere is flagged
}

// AnalyzeFile reads a pcap or pcapng file and analyses it.
func AnalyzeFile(path string, opts AnalyzeOptions) (*Analysis, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture %s: %w", path, err)
	}
	defer func() { _ = f.Close() }()
	a, err := Analyze(f, opts)
	if err != nil {
		return nil, fmt.Errorf("analyze %s: %w", path, err)
	}
	a.File = path
	return a, nil
}

// Analyze reads a pcap or pcapng stream (several interfaces allowed) and
// reports retransmissions (and the segment size that keeps being
// retransmitted: an MTU signal), SYNs without SYN-ACK, RSTs, ICMP
// fragmentation-needed and unreachable, ARP requests without replies,
// VXLAN outer/inner flows, and at which points each flow was seen.
func Analyze(r io.Reader, opts AnalyzeOptions) (*Analysis, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("read file header: %w", err)
	}
	an := newAnalyzer(opts)
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("read pcapng: %w", err)
		}
		for {
			data, ci, err := ng.ReadPacketData()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read pcapng packet %d: %w", an.n+1, err)
			}
			intf, err := ng.Interface(ci.InterfaceIndex)
			if err != nil {
				return nil, fmt.Errorf("packet %d: %w", an.n+1, err)
			}
			name := intf.Name
			if name == "" {
				name = fmt.Sprintf("if%d", ci.InterfaceIndex)
			}
			if f := strings.TrimPrefix(intf.Filter, "\x00"); f != "" {
				an.filters[name] = f
			}
			an.packet(name, intf.LinkType, data)
		}
	} else {
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("not a pcap or pcapng file: %w", err)
		}
		for {
			data, _, err := pr.ReadPacketData()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read pcap packet %d: %w", an.n+1, err)
			}
			an.packet("capture", pr.LinkType(), data)
		}
	}
	return an.finish(), nil
}

type dirKey struct{ point, flow string } // flow is directional "proto src -> dst"

type tcpDir struct {
	maxEnd     uint32 // highest seq+len sent
	started    bool
	maxAck     uint32 // highest ack seen from the peer for this direction's data
	acked      bool
	retrans    map[int]int // retransmitted segment length -> count
	nRetrans   int
	firstSizes map[int]int // first transmissions by length
	segs       []seg       // first transmissions (for "delivered" sizes)
	syns       int
	synAcks    int
	rsts       int
	mss        int
}

type seg struct {
	seq uint32
	n   int
}

type analyzer struct {
	opts    AnalyzeOptions
	n       int
	points  []string
	pointOK map[string]bool
	tcp     map[dirKey]*tcpDir
	seen    map[string]map[string]int // canonical flow -> point -> packets
	flowDir map[string]string         // canonical flow -> display (initiator first)
	find    []Finding
	icmpSet map[string]int
	arpReq  map[dirKey]int // point, "who-has T tell S"
	arpRep  map[string]map[string]bool
	vx      map[string]*VXLANFlow
	filters map[string]string
}

func newAnalyzer(opts AnalyzeOptions) *analyzer {
	return &analyzer{opts: opts, pointOK: map[string]bool{}, tcp: map[dirKey]*tcpDir{},
		seen: map[string]map[string]int{}, flowDir: map[string]string{}, icmpSet: map[string]int{},
		arpReq: map[dirKey]int{}, arpRep: map[string]map[string]bool{}, vx: map[string]*VXLANFlow{}, filters: map[string]string{}}
}

// view is the first network/transport layers of a packet.
type view struct {
	ip    *layers.IPv4
	ip6   *layers.IPv6
	tcp   *layers.TCP
	udp   *layers.UDP
	icmp  *layers.ICMPv4
	icmp6 *layers.ICMPv6
	arp   *layers.ARP
}

// addrs are the packet's network addresses and upper protocol.
func (v view) addrs() (src, dst net.IP, proto uint8, ok bool) {
	switch {
	case v.ip != nil:
		return v.ip.SrcIP, v.ip.DstIP, uint8(v.ip.Protocol), true
	case v.ip6 != nil:
		return v.ip6.SrcIP, v.ip6.DstIP, uint8(v.ip6.NextHeader), true
	}
	return nil, nil, 0, false
}

// hostPort joins an address and a port, with brackets for IPv6.
func hostPort(ip net.IP, port int) string { return net.JoinHostPort(ip.String(), strconv.Itoa(port)) }

func viewOf(ls []gopacket.Layer) view {
	var v view
	for _, l := range ls {
		switch x := l.(type) {
		case *layers.IPv4:
			if v.ip == nil && v.ip6 == nil {
				v.ip = x
			}
		case *layers.IPv6:
			if v.ip == nil && v.ip6 == nil {
				v.ip6 = x
			}
		case *layers.ICMPv6:
			if v.icmp6 == nil {
				v.icmp6 = x
			}
		case *layers.TCP:
			if v.tcp == nil && v.udp == nil {
				v.tcp = x
			}
		case *layers.UDP:
			if v.tcp == nil && v.udp == nil {
				v.udp = x
			}
		case *layers.ICMPv4:
			if v.icmp == nil {
				v.icmp = x
			}
		case *layers.ARP:
			v.arp = x
		}
	}
	return v
}

func (a *analyzer) packet(point string, lt layers.LinkType, data []byte) {
	a.n++
	if !a.pointOK[point] {
		a.pointOK[point] = true
		a.points = append(a.points, point)
	}
	p := gopacket.NewPacket(data, lt, gopacket.Lazy)
	ls := p.Layers()
	// Cut at the first UDP layer: gopacket decodes 4789 as VXLAN itself,
	// and we decode 8472 ourselves; either way the inner packet is handled
	// separately.
	for i, l := range ls {
		if u, ok := l.(*layers.UDP); ok {
			ls = ls[:i+1]
			if VXLANPorts[uint16(u.DstPort)] {
				// The tunnel itself is reported in the VXLAN section; its
				// inner flow takes part in the per-point comparison.
				a.vxlan(point, viewOf(ls), u)
				return
			}
			break
		}
	}
	a.view(point, viewOf(ls))
}

func (a *analyzer) vxlan(point string, outer view, u *layers.UDP) {
	inner := gopacket.NewPacket(u.Payload, layers.LayerTypeVXLAN, gopacket.Lazy)
	vl, ok := inner.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN)
	if !ok || outer.ip == nil {
		return
	}
	key := fmt.Sprintf("%s|%s -> %s:%d|%d", point, outer.ip.SrcIP, outer.ip.DstIP, u.DstPort, vl.VNI)
	f := a.vx[key]
	if f == nil {
		f = &VXLANFlow{Point: point, Outer: fmt.Sprintf("%s -> %s:%d", outer.ip.SrcIP, outer.ip.DstIP, u.DstPort), VNI: vl.VNI}
		if len(a.opts.NodeIPs) > 0 {
			f.Foreign = true
			for _, ip := range a.opts.NodeIPs {
				if ip.Equal(outer.ip.SrcIP) {
					f.Foreign = false
				}
			}
		}
		a.vx[key] = f
	}
	f.Packets++
	iv := viewOf(inner.Layers())
	if iv.arp != nil {
		if d := arpText(iv.arp); !contains(f.Inner, d) && len(f.Inner) < 50 {
			f.Inner = append(f.Inner, d)
		}
		a.view(point, iv) // ARP inside the overlay: requests without replies count too
	}
	if d := flowOf(iv); d != "" {
		if !contains(f.Inner, d) && len(f.Inner) < 50 {
			f.Inner = append(f.Inner, d)
		}
		// The inner flow keeps its own name so that it matches the same flow
		// captured unencapsulated at another point (flannel.1 vs eth0).
		a.view(point, iv)
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// flowOf names the packet's directional flow.
func flowOf(v view) string {
	src, dst, proto, ok := v.addrs()
	switch {
	case !ok:
		return ""
	case v.tcp != nil:
		return fmt.Sprintf("tcp %s -> %s", hostPort(src, int(v.tcp.SrcPort)), hostPort(dst, int(v.tcp.DstPort)))
	case v.udp != nil:
		return fmt.Sprintf("udp %s -> %s", hostPort(src, int(v.udp.SrcPort)), hostPort(dst, int(v.udp.DstPort)))
	case v.icmp != nil:
		return fmt.Sprintf("icmp %s -> %s", src, dst)
	case v.icmp6 != nil:
		return fmt.Sprintf("icmp6 %s -> %s", src, dst)
	}
	return fmt.Sprintf("ip/%d %s -> %s", proto, src, dst)
}

// canonical orders the two ends so both directions share a key.
func canonical(flow string) string {
	proto, rest, _ := strings.Cut(flow, " ")
	src, dst, ok := strings.Cut(rest, " -> ")
	if !ok {
		return flow
	}
	if src > dst {
		src, dst = dst, src
	}
	return proto + " " + src + " <-> " + dst
}

func reverse(flow string) string {
	proto, rest, _ := strings.Cut(flow, " ")
	src, dst, _ := strings.Cut(rest, " -> ")
	return proto + " " + dst + " -> " + src
}

func (a *analyzer) view(point string, v view) {
	if v.arp != nil {
		a.arp(point, v.arp)
		return
	}
	flow := flowOf(v)
	if flow == "" {
		return
	}
	c := canonical(flow)
	if a.seen[c] == nil {
		a.seen[c] = map[string]int{}
		a.flowDir[c] = flow
	}
	a.seen[c][point]++
	switch {
	case v.tcp != nil:
		a.tcpSeg(point, flow, v.tcp)
		if v.tcp.SYN && !v.tcp.ACK {
			a.flowDir[c] = flow // the SYN's sender is the initiator
		}
	case v.icmp != nil:
		a.icmpMsg(point, v)
	case v.icmp6 != nil:
		a.icmp6Msg(point, v)
	}
}

// icmp6Msg reports ICMPv6 errors: packet too big (the IPv6 MTU signal),
// unreachable, hop limit exceeded.
func (a *analyzer) icmp6Msg(point string, v view) {
	ic := v.icmp6
	typ := ic.TypeCode.Type()
	if typ != layers.ICMPv6TypeDestinationUnreachable && typ != layers.ICMPv6TypePacketTooBig && typ != layers.ICMPv6TypeTimeExceeded {
		return
	}
	if len(ic.Payload) < 4 {
		return
	}
	quoted := ""
	if q := gopacket.NewPacket(ic.Payload[4:], layers.LayerTypeIPv6, gopacket.Lazy); q != nil {
		quoted = flowOf(viewOf(q.Layers()))
	}
	var kind, msg string
	switch typ {
	case layers.ICMPv6TypePacketTooBig:
		mtu := binary.BigEndian.Uint32(ic.Payload[:4])
		kind = "icmp-frag-needed"
		msg = fmt.Sprintf("%s says packet too big, MTU %d, for %s: packets larger than %d bytes do not pass that hop", v.ip6.SrcIP, mtu, quoted, mtu)
	case layers.ICMPv6TypeDestinationUnreachable:
		kind = "icmp-unreachable"
		msg = fmt.Sprintf("%s says %s for %s", v.ip6.SrcIP, ic.TypeCode.String(), quoted)
	default:
		kind = "icmp-time-exceeded"
		msg = fmt.Sprintf("%s says hop limit exceeded for %s (routing loop or traceroute)", v.ip6.SrcIP, quoted)
	}
	key := point + "|" + msg
	if a.icmpSet[key] == 0 {
		a.find = append(a.find, Finding{Kind: kind, Point: point, Flow: quoted, Message: msg})
	}
	a.icmpSet[key]++
}

func (a *analyzer) dir(point, flow string) *tcpDir {
	k := dirKey{point, flow}
	d := a.tcp[k]
	if d == nil {
		d = &tcpDir{retrans: map[int]int{}, firstSizes: map[int]int{}}
		a.tcp[k] = d
	}
	return d
}

func (a *analyzer) tcpSeg(point, flow string, t *layers.TCP) {
	d := a.dir(point, flow)
	peer := a.dir(point, reverse(flow))
	n := len(t.Payload)
	switch {
	case t.SYN && !t.ACK:
		d.syns++
		for _, o := range t.Options {
			if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
				d.mss = int(o.OptionData[0])<<8 | int(o.OptionData[1])
			}
		}
	case t.SYN && t.ACK:
		d.synAcks++
	}
	if t.RST {
		d.rsts++
	}
	if t.ACK {
		if !peer.acked || int32(t.Ack-peer.maxAck) > 0 {
			peer.maxAck, peer.acked = t.Ack, true
		}
	}
	seqLen := uint32(n)
	if t.SYN || t.FIN {
		seqLen++
	}
	if seqLen == 0 {
		return
	}
	end := t.Seq + seqLen
	if !d.started {
		d.maxEnd, d.started = end, true
		if n > 0 {
			d.firstSizes[n]++
			d.segs = append(d.segs, seg{t.Seq, n})
		}
		return
	}
	if int32(end-d.maxEnd) <= 0 {
		// Keep-alives (one byte below what was sent) are not retransmissions.
		if n > 1 || (n == 1 && end != d.maxEnd) || (n == 0 && t.SYN) {
			if n > 0 {
				d.retrans[n]++
			} else {
				d.retrans[0]++
			}
			d.nRetrans++
		}
		return
	}
	d.maxEnd = end
	if n > 0 {
		d.firstSizes[n]++
		if len(d.segs) < 1<<16 {
			d.segs = append(d.segs, seg{t.Seq, n})
		}
	}
}

func (a *analyzer) icmpMsg(point string, v view) {
	ic := v.icmp
	typ := ic.TypeCode.Type()
	code := ic.TypeCode.Code()
	if typ != layers.ICMPv4TypeDestinationUnreachable && typ != layers.ICMPv4TypeTimeExceeded {
		return
	}
	quoted := ""
	if q := gopacket.NewPacket(ic.Payload, layers.LayerTypeIPv4, gopacket.Lazy); q != nil {
		quoted = flowOf(viewOf(q.Layers()))
	}
	var kind, msg string
	switch {
	case typ == layers.ICMPv4TypeDestinationUnreachable && code == layers.ICMPv4CodeFragmentationNeeded:
		kind = "icmp-frag-needed"
		msg = fmt.Sprintf("%s says fragmentation needed, next-hop MTU %d, for %s: packets larger than %d bytes do not pass that hop", v.ip.SrcIP, ic.Seq, quoted, ic.Seq)
	case typ == layers.ICMPv4TypeDestinationUnreachable:
		kind = "icmp-unreachable"
		msg = fmt.Sprintf("%s says %s for %s", v.ip.SrcIP, ic.TypeCode.String(), quoted)
	default:
		kind = "icmp-time-exceeded"
		msg = fmt.Sprintf("%s says TTL exceeded for %s (routing loop or traceroute)", v.ip.SrcIP, quoted)
	}
	key := point + "|" + msg
	if a.icmpSet[key] == 0 {
		a.find = append(a.find, Finding{Kind: kind, Point: point, Flow: quoted, Message: msg})
	}
	a.icmpSet[key]++
}

func arpText(p *layers.ARP) string {
	if p.Operation == layers.ARPRequest {
		return fmt.Sprintf("arp who-has %s tell %s", net.IP(p.DstProtAddress), net.IP(p.SourceProtAddress))
	}
	return fmt.Sprintf("arp reply %s is-at %s", net.IP(p.SourceProtAddress), net.HardwareAddr(p.SourceHwAddress))
}

func (a *analyzer) arp(point string, p *layers.ARP) {
	target := net.IP(p.DstProtAddress).String()
	sender := net.IP(p.SourceProtAddress).String()
	switch p.Operation {
	case layers.ARPRequest:
		if target == sender { // gratuitous ARP
			return
		}
		a.arpReq[dirKey{point, target + "|" + sender}]++
	case layers.ARPReply:
		if a.arpRep[point] == nil {
			a.arpRep[point] = map[string]bool{}
		}
		a.arpRep[point][sender] = true
	}
}

func (a *analyzer) finish() *Analysis {
	out := &Analysis{Points: a.points, Packets: a.n, Findings: []Finding{}, Flows: []FlowSeen{}}
	if len(a.filters) > 0 {
		out.Filters = a.filters
	}
	var fs []Finding
	// TCP per point and direction.
	keys := make([]dirKey, 0, len(a.tcp))
	for k := range a.tcp {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].point < keys[j].point || keys[i].point == keys[j].point && keys[i].flow < keys[j].flow
	})
	for _, k := range keys {
		d := a.tcp[k]
		peer := a.tcp[dirKey{k.point, reverse(k.flow)}]
		if d.syns > 0 && (peer == nil || peer.synAcks == 0) {
			fs = append(fs, Finding{Kind: "syn-no-reply", Point: k.point, Flow: k.flow,
				Message: fmt.Sprintf("%d SYN(s) without a SYN-ACK seen here: the server does not answer or the SYN or its answer is dropped on the way", d.syns)})
		}
		if d.rsts > 0 {
			fs = append(fs, Finding{Kind: "rst", Point: k.point, Flow: k.flow,
				Message: fmt.Sprintf("%d RST(s) sent by %s", d.rsts, strings.Fields(k.flow)[1])})
		}
		if d.nRetrans > 0 {
			fs = append(fs, a.retransFinding(k, d))
			if f, ok := mtuFinding(k, d); ok {
				fs = append(fs, f)
			}
		}
	}
	// ARP requests without replies.
	var arpKeys []dirKey
	for k := range a.arpReq {
		arpKeys = append(arpKeys, k)
	}
	sort.Slice(arpKeys, func(i, j int) bool {
		return arpKeys[i].point < arpKeys[j].point || arpKeys[i].point == arpKeys[j].point && arpKeys[i].flow < arpKeys[j].flow
	})
	for _, k := range arpKeys {
		target, sender, _ := strings.Cut(k.flow, "|")
		if a.arpRep[k.point][target] {
			continue
		}
		fs = append(fs, Finding{Kind: "arp-no-reply", Point: k.point, Flow: "arp " + sender + " -> " + target,
			Message: fmt.Sprintf("%d ARP request(s) who-has %s tell %s without a reply: %s is down, elsewhere, or ARP is filtered", a.arpReq[k], target, sender, target)})
	}
	// ICMP findings, in packet order, after the TCP ones.
	fs = append(fs, a.find...)
	// VXLAN.
	var vkeys []string
	for k := range a.vx {
		vkeys = append(vkeys, k)
	}
	sort.Strings(vkeys)
	for _, k := range vkeys {
		f := a.vx[k]
		out.VXLAN = append(out.VXLAN, *f)
		if f.Foreign {
			fs = append(fs, Finding{Kind: "vxlan-foreign-source", Point: f.Point, Flow: f.Outer,
				Message: fmt.Sprintf("VXLAN (VNI %d) from %s, which is not a known node address", f.VNI, strings.Fields(f.Outer)[0])})
		}
	}
	// Seen / not seen per point.
	var flows []string
	for c := range a.seen {
		flows = append(flows, c)
	}
	sort.Strings(flows)
	for _, c := range flows {
		s := FlowSeen{Flow: a.flowDir[c], Packets: a.seen[c]}
		if len(a.points) > 1 {
			for _, p := range a.points {
				if a.seen[c][p] == 0 {
					s.Missing = append(s.Missing, p)
				}
			}
			if len(s.Missing) > 0 {
				var at []string
				for p := range a.seen[c] {
					at = append(at, p)
				}
				sort.Strings(at)
				fs = append(fs, Finding{Kind: "not-seen", Flow: s.Flow,
					Message: fmt.Sprintf("seen at %s, not seen at %s", strings.Join(at, ", "), strings.Join(s.Missing, ", "))})
			}
		}
		out.Flows = append(out.Flows, s)
	}
	out.Findings = append(out.Findings, fs...)
	return out
}

func sizesText(m map[int]int) string {
	type kv struct{ k, v int }
	var s []kv
	for k, v := range m {
		s = append(s, kv{k, v})
	}
	sort.Slice(s, func(i, j int) bool { return s[i].v > s[j].v || s[i].v == s[j].v && s[i].k > s[j].k })
	var parts []string
	for i, e := range s {
		if i == 6 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%d bytes x%d", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}

func (a *analyzer) retransFinding(k dirKey, d *tcpDir) Finding {
	first := 0
	for _, v := range d.firstSizes {
		first += v
	}
	return Finding{Kind: "retransmissions", Point: k.point, Flow: k.flow,
		Message:  fmt.Sprintf("%d retransmission(s) of %d segments sent", d.nRetrans, first),
		Evidence: []string{"retransmitted sizes: " + sizesText(d.retrans), "first transmissions: " + sizesText(d.firstSizes)}}
}

// mtuFinding spots the MTU pattern: one segment size retransmitted again
// and again while no segment that large was ever acknowledged, and smaller
// ones were.
func mtuFinding(k dirKey, d *tcpDir) (Finding, bool) {
	size, count := 0, 0
	for s, c := range d.retrans {
		if c > count || c == count && s > size {
			size, count = s, c
		}
	}
	if size == 0 || count < 3 {
		return Finding{}, false
	}
	maxAcked, bigAcked := 0, false
	for _, s := range d.segs {
		if d.acked && int32(d.maxAck-(s.seq+uint32(s.n))) >= 0 {
			maxAcked = max(maxAcked, s.n)
			if s.n >= size {
				bigAcked = true
			}
		}
	}
	if bigAcked {
		return Finding{}, false
	}
	msg := fmt.Sprintf("segments of %d bytes keep being retransmitted (%dx) and none that large was acknowledged", size, count)
	ev := []string{fmt.Sprintf("largest acknowledged segment: %d bytes", maxAcked)}
	if d.mss > 0 {
		ev = append(ev, fmt.Sprintf("MSS announced in the SYN: %d", d.mss))
	}
	msg += fmt.Sprintf(": packets of %d bytes (IP) are lost on the path while smaller ones pass; an MTU (or PMTU black hole) problem", size+40)
	return Finding{Kind: "mtu", Point: k.point, Flow: k.flow, Message: msg, Evidence: ev}, true
}

// Text renders the analysis for people.
func (an *Analysis) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d packets at %d point(s): %s\n", an.Packets, len(an.Points), strings.Join(an.Points, ", "))
	if len(an.Findings) == 0 {
		b.WriteString("nothing unusual: no retransmissions, unanswered SYNs, RSTs, ICMP errors or unanswered ARP\n")
	}
	for _, f := range an.Findings {
		where := f.Point
		if where == "" {
			where = "all points"
		}
		fmt.Fprintf(&b, "[%s] %s: %s\n", f.Kind, where, f.Flow)
		fmt.Fprintf(&b, "    %s\n", f.Message)
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "    - %s\n", e)
		}
	}
	if len(an.VXLAN) > 0 {
		b.WriteString("VXLAN:\n")
		for _, v := range an.VXLAN {
			fmt.Fprintf(&b, "  %s: %s VNI %d, %d packets, inner: %s\n", v.Point, v.Outer, v.VNI, v.Packets, strings.Join(v.Inner, "; "))
		}
	}
	if len(an.Points) > 1 {
		b.WriteString("flows per point:\n")
		for _, p := range an.Points {
			if f := an.Filters[p]; f != "" {
				fmt.Fprintf(&b, "  (%s captured with filter %q: what it excludes shows as not seen)\n", p, f)
			}
		}
		for _, f := range an.Flows {
			var parts []string
			for _, p := range an.Points {
				if n := f.Packets[p]; n > 0 {
					parts = append(parts, fmt.Sprintf("%s: %d", p, n))
				} else {
					parts = append(parts, p+": not seen")
				}
			}
			fmt.Fprintf(&b, "  %s  [%s]\n", f.Flow, strings.Join(parts, ", "))
		}
	}
	return b.String()
}
