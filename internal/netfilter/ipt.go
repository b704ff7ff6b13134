package netfilter

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

type mres uint8

const (
	mNo mres = iota
	mYes
	mProb    // matches with a probability
	mUnknown // cannot be decided: the reason says why
)

// matcher decides one condition of a rule for a state.
type matcher func(t *tracer, st *tstate) (res mres, p float64, reason string)

type iptTargetKind uint8

const (
	tNone iptTargetKind = iota
	tAccept
	tDrop
	tReject
	tReturn
	tJump
	tContinue // LOG, NFLOG, TCPMSS...: record and go on
	tMark
	tConnmark
	tNotrack
	tDNAT
	tSNAT
	tMasquerade
	tRedirect
	tUnknown
)

// condKind is a compiled condition kind; the common ones are evaluated
// inline, the rest through a matcher function.
type condKind uint8

const (
	cFunc condKind = iota
	cSrc
	cDst
	cIn
	cOut
	cProto
	cProtoIs
	cSport
	cDport
	cMark
	cConnmark
	cCtstate
	cProb
	cTrue
	cSrc4
	cDst4
)

// cond is one compiled condition of an iptables rule, kept small: a
// ruleset of 170,000 rules holds ~500,000 of them.
type cond struct {
	kind condKind
	neg  bool
	pr   portRange
	v, m uint32 // addr/mask (IPv4), mark/mask, ctstate bits, proto, probability bits
	x    *condX
}

// condX holds what few conditions need.
type condX struct {
	pfx netip.Prefix
	s   string
	fn  matcher
}

func probCond(p float64) cond {
	b := math.Float64bits(p)
	return cond{kind: cProb, v: uint32(b >> 32), m: uint32(b)}
}

func addrCond(kind condKind, neg bool, pfx netip.Prefix) cond {
	if pfx.Addr().Is4() {
		a := pfx.Addr().As4()
		mask := uint32(0)
		if pfx.Bits() > 0 {
			mask = ^uint32(0) << (32 - pfx.Bits())
		}
		k := cSrc4
		if kind == cDst {
			k = cDst4
		}
		return cond{kind: k, neg: neg, v: binary.BigEndian.Uint32(a[:]) & mask, m: mask}
	}
	return cond{kind: kind, neg: neg, x: &condX{pfx: pfx}}
}

func addr4(a netip.Addr) (uint32, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]), true
}

// ctstate bits for cCtstate
const (
	ctbNew uint32 = 1 << iota
	ctbEstablished
	ctbRelated
	ctbInvalid
	ctbUntracked
	ctbSNAT
	ctbDNAT
)

var ctStateBits = map[string]uint32{CTNew: ctbNew, CTEstablished: ctbEstablished, CTRelated: ctbRelated,
	CTInvalid: ctbInvalid, CTUntracked: ctbUntracked, "SNAT": ctbSNAT, "DNAT": ctbDNAT}

func (c *cond) eval(t *tracer, st *tstate) (mres, float64, string) {
	p := &st.pkt
	var ok bool
	switch c.kind {
	case cFunc:
		return c.x.fn(t, st)
	case cSrc4:
		a, is4 := addr4(p.Src)
		ok = is4 && a&c.m == c.v
	case cDst4:
		a, is4 := addr4(p.Dst)
		ok = is4 && a&c.m == c.v
	case cSrc:
		ok = c.x.pfx.Contains(p.Src)
	case cDst:
		ok = c.x.pfx.Contains(p.Dst)
	case cIn:
		ok = ifaceMatch(c.x.s, p.InIface)
	case cOut:
		ok = ifaceMatch(c.x.s, p.OutIface)
	case cProto:
		ok = t.pn == c.v
	case cProtoIs:
		if t.pn != c.v {
			return mNo, 0, ""
		}
		return mYes, 0, ""
	case cSport, cDport:
		if !hasPorts(p.Proto) {
			return mNo, 0, ""
		}
		port := p.DstPort
		if c.kind == cSport {
			port = p.SrcPort
		}
		ok = c.pr.has(port)
	case cMark:
		ok = p.Mark&c.m == c.v
	case cConnmark:
		ok = p.CTMark&c.m == c.v
	case cCtstate:
		b := ctStateBits[p.CTState]
		if st.dnat {
			b |= ctbDNAT
		}
		if st.snat {
			b |= ctbSNAT
		}
		ok = b&c.v != 0
	case cProb:
		return mProb, math.Float64frombits(uint64(c.v)<<32 | uint64(c.m)), ""
	case cTrue:
		ok = true
	}
	return boolM(c.neg, ok), 0, ""
}

// iptRule is the compiled form of an iptables rule (its target kind is
// Rule.iptKind). The action text of a hit is derived from the rule's target
// (Rule.iptAction); only targets whose text is not just the target name
// keep one in iptExtra.
type iptRule struct {
	conds []cond
	jump  *Chain
	*iptExtra
}

// iptExtra holds what NAT, MARK/CONNMARK and unsupported targets need.
type iptExtra struct {
	natAddr   netip.Addr
	natPort   uint16
	natRanged bool
	// marks: new = (old &^ clear) ^ xor, or the connmark save/restore masks
	markClear, markXor uint32
	ctSave, ctRestore  bool
	nfmask, ctmask     uint32
	reason             string
	// action is the hit's action text when it is not the target name
	// ("REJECT icmp-port-unreachable", "DNAT 10.0.0.1:80")
	action string
}

// iptAction is the action text of a hit on an iptables rule: the target
// name, a text kept at compile time, or "" for a jump (made when an outcome
// is reported: a dump of 100,000 jumps need not hold them all).
func (r *Rule) iptAction() string {
	if x := r.ipt.iptExtra; x != nil && x.action != "" {
		return x.action
	}
	switch r.iptKind {
	case tNone:
		return "match (no target)"
	case tJump:
		return ""
	case tNotrack:
		if r.Target == "CT" {
			return "CT --notrack"
		}
	}
	return r.Target
}

// setAction keeps a hit action text other than the target name.
func (ir *iptRule) setAction(a string) {
	if ir.iptExtra == nil {
		ir.iptExtra = &iptExtra{}
	}
	ir.action = a
}

func compileIptables(rs *Ruleset, a *iptAlloc) error {
	for _, tb := range rs.Tables {
		for _, c := range tb.Chains {
			if c.Builtin {
				c.Type = "filter"
				if tb.Name == "nat" {
					c.Type = "nat"
				}
			}
			for _, r := range c.Rules {
				if err := compileIptRule(tb, r, &r.ipt, a); err != nil {
					return iptErr(r.Line, "%v", err)
				}
			}
			c.index = buildDstIndex(c)
		}
	}
	return nil
}

func unknownMatcher(reason string) matcher {
	return func(*tracer, *tstate) (mres, float64, string) { return mUnknown, 0, reason }
}

func boolM(neg bool, ok bool) mres {
	if ok != neg {
		return mYes
	}
	return mNo
}

func compileIptRule(tb *Table, r *Rule, ir *iptRule, a *iptAlloc) error {
	var buf [16]cond
	conds := buf[:0]
	for _, o := range r.Basic {
		c, err := compileBasic(o)
		if err != nil {
			return err
		}
		conds = append(conds, c)
	}
	for _, m := range r.Matches {
		var err error
		if conds, err = compileIptMatch(m, conds); err != nil {
			return fmt.Errorf("-m %s: %w", m.Module, err)
		}
	}
	if len(conds) > 0 {
		ir.conds = a.condList(conds)
	}
	if err := compileIptTarget(tb, r, ir); err != nil {
		return fmt.Errorf("-j %s: %w", r.Target, err)
	}
	return nil
}

func compileBasic(o Option) (cond, error) {
	v := ""
	if int(o.n) > 0 {
		v = o.Arg
	}
	neg := o.Negated
	switch o.Name {
	case "s", "d":
		pfx, err := parseAddrOrPrefix(v)
		if err != nil {
			return cond{}, fmt.Errorf("-%s %q: %w", o.Name, v, err)
		}
		if o.Name == "s" {
			return addrCond(cSrc, neg, pfx), nil
		}
		return addrCond(cDst, neg, pfx), nil
	case "i":
		return cond{kind: cIn, neg: neg, x: &condX{s: v}}, nil
	case "o":
		return cond{kind: cOut, neg: neg, x: &condX{s: v}}, nil
	case "p":
		lv := strings.ToLower(v)
		if lv == "all" || lv == "0" {
			return cond{kind: cTrue, neg: neg}, nil
		}
		n, ok := protoNum(lv)
		if !ok {
			return cond{}, fmt.Errorf("-p %q: unknown protocol", v)
		}
		return cond{kind: cProto, neg: neg, v: uint32(n)}, nil
	case "f":
		// traced packets are unfragmented (or first fragments)
		return cond{kind: cTrue, neg: !neg}, nil
	}
	return cond{}, fmt.Errorf("unknown option -%s", o.Name)
}

func portCond(o Option, src bool) (cond, error) {
	if int(o.n) != 1 {
		return cond{}, fmt.Errorf("--%s needs one value", o.Name)
	}
	pr, err := parsePortRange(o.Arg)
	if err != nil {
		return cond{}, fmt.Errorf("--%s: %w", o.Name, err)
	}
	if src {
		return cond{kind: cSport, neg: o.Negated, pr: pr}, nil
	}
	return cond{kind: cDport, neg: o.Negated, pr: pr}, nil
}

func protoCond(proto string) cond {
	n, _ := protoNum(proto)
	return cond{kind: cProtoIs, v: uint32(n)}
}

func fc(m matcher) cond { return cond{kind: cFunc, x: &condX{fn: m}} }

var tcpFlagNames = map[string]uint8{
	"FIN": TCPFin, "SYN": TCPSyn, "RST": TCPRst, "PSH": TCPPsh, "ACK": TCPAck, "URG": TCPUrg,
	"ECE": TCPEce, "CWR": TCPCwr, "ALL": 0xff, "NONE": 0,
}

func parseTCPFlags(s string) (uint8, error) {
	var v uint8
	for _, f := range strings.Split(s, ",") {
		b, ok := tcpFlagNames[strings.ToUpper(f)]
		if !ok {
			return 0, fmt.Errorf("unknown tcp flag %q", f)
		}
		v |= b
	}
	return v, nil
}

func ctStateCond(o Option) (cond, error) {
	if int(o.n) != 1 {
		return cond{}, fmt.Errorf("--%s needs one value", o.Name)
	}
	var want uint32
	for _, s := range strings.Split(o.Arg, ",") {
		b, ok := ctStateBits[strings.ToUpper(s)]
		if !ok {
			return cond{}, fmt.Errorf("--%s: unknown state %q", o.Name, s)
		}
		want |= b
	}
	return cond{kind: cCtstate, neg: o.Negated, v: want}, nil
}

func markCond(o Option, ct bool) (cond, error) {
	if int(o.n) != 1 {
		return cond{}, fmt.Errorf("--%s needs one value", o.Name)
	}
	v, m, err := parseMarkMask(o.Arg)
	if err != nil {
		return cond{}, fmt.Errorf("--%s: %w", o.Name, err)
	}
	if ct {
		return cond{kind: cConnmark, neg: o.Negated, v: v, m: m}, nil
	}
	return cond{kind: cMark, neg: o.Negated, v: v, m: m}, nil
}

// addrType classifies an address as the kernel's addrtype match would.
func (t *tracer) addrType(a netip.Addr, iface string, limit bool) (string, bool) {
	if limit {
		addrs, ok := t.env.IfaceAddrs[iface]
		if !ok {
			return "", false
		}
		for _, x := range addrs {
			if x.Unmap() == a {
				return "LOCAL", true
			}
		}
	} else if t.isLocal(a) {
		return "LOCAL", true
	}
	switch {
	case a.IsMulticast():
		return "MULTICAST", true
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "BROADCAST", true
	case a.IsUnspecified():
		return "UNSPEC", true
	}
	return "UNICAST", true
}

func addrtypeMatcher(o Option, src bool, limitIn, limitOut bool) (matcher, error) {
	if int(o.n) != 1 {
		return nil, fmt.Errorf("--%s needs one value", o.Name)
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.Arg, ",") {
		s = strings.ToUpper(s)
		switch s {
		case "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
			"UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE":
		default:
			return nil, fmt.Errorf("--%s: unknown address type %q", o.Name, s)
		}
		want[s] = true
	}
	neg := o.Negated
	return func(t *tracer, st *tstate) (mres, float64, string) {
		a := st.pkt.Dst
		if src {
			a = st.pkt.Src
		}
		iface, limit := "", limitIn || limitOut
		if limitIn {
			iface = st.pkt.InIface
		} else if limitOut {
			iface = st.pkt.OutIface
		}
		typ, ok := t.addrType(a, iface, limit)
		if !ok {
			return mUnknown, 0, fmt.Sprintf("addrtype: addresses of interface %q not known", iface)
		}
		if !want[typ] {
			for w := range want {
				switch w {
				case "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE", "ANYCAST":
					// route types: the routing table would tell
					return mUnknown, 0, "addrtype " + w + " needs the routing table"
				}
			}
		}
		return boolM(neg, want[typ]), 0, ""
	}, nil
}

var icmpTypeNames = map[string][2]int{
	"any": {-1, -1}, "echo-reply": {0, -1}, "pong": {0, -1}, "destination-unreachable": {3, -1},
	"network-unreachable": {3, 0}, "host-unreachable": {3, 1}, "protocol-unreachable": {3, 2},
	"port-unreachable": {3, 3}, "fragmentation-needed": {3, 4}, "source-route-failed": {3, 5},
	"network-unknown": {3, 6}, "host-unknown": {3, 7}, "network-prohibited": {3, 9},
	"host-prohibited": {3, 10}, "communication-prohibited": {3, 13}, "source-quench": {4, -1},
	"redirect": {5, -1}, "echo-request": {8, -1}, "ping": {8, -1}, "router-advertisement": {9, -1},
	"router-solicitation": {10, -1}, "time-exceeded": {11, -1}, "ttl-zero-during-transit": {11, 0},
	"ttl-zero-during-reassembly": {11, 1}, "parameter-problem": {12, -1},
	"timestamp-request": {13, -1}, "timestamp-reply": {14, -1},
}

var icmp6TypeNames = map[string][2]int{
	"any": {-1, -1}, "destination-unreachable": {1, -1}, "no-route": {1, 0},
	"communication-prohibited": {1, 1}, "address-unreachable": {1, 3}, "port-unreachable": {1, 4},
	"packet-too-big": {2, -1}, "time-exceeded": {3, -1}, "ttl-zero-during-transit": {3, 0},
	"parameter-problem": {4, -1}, "echo-request": {128, -1}, "ping": {128, -1},
	"echo-reply": {129, -1}, "pong": {129, -1}, "router-solicitation": {133, -1},
	"router-advertisement": {134, -1}, "neighbour-solicitation": {135, -1},
	"neighbor-solicitation": {135, -1}, "neighbour-advertisement": {136, -1},
	"neighbor-advertisement": {136, -1}, "redirect": {137, -1},
}

func icmpTypeMatcher(o Option, v6 bool) (matcher, error) {
	if int(o.n) != 1 {
		return nil, fmt.Errorf("--%s needs one value", o.Name)
	}
	s := o.Arg
	names := icmpTypeNames
	proto := "icmp"
	if v6 {
		names, proto = icmp6TypeNames, "icmpv6"
	}
	tc, ok := names[strings.ToLower(s)]
	if !ok {
		ts, cs, hasCode := strings.Cut(s, "/")
		t, err := strconv.ParseUint(ts, 10, 8)
		if err != nil {
			return nil, fmt.Errorf("--%s: unknown type %q", o.Name, s)
		}
		tc = [2]int{int(t), -1}
		if hasCode {
			c, err := strconv.ParseUint(cs, 10, 8)
			if err != nil {
				return nil, fmt.Errorf("--%s: bad code in %q", o.Name, s)
			}
			tc[1] = int(c)
		}
	}
	neg := o.Negated
	return func(_ *tracer, st *tstate) (mres, float64, string) {
		if st.pkt.Proto != proto {
			return mNo, 0, ""
		}
		ok := tc[0] < 0 || (int(st.pkt.ICMPType) == tc[0] && (tc[1] < 0 || int(st.pkt.ICMPCode) == tc[1]))
		return boolM(neg, ok), 0, ""
	}, nil
}

func compileIptMatch(m Match, ms []cond) ([]cond, error) {
	unsupported := func(o Option) cond {
		return fc(unknownMatcher(fmt.Sprintf("unsupported option --%s of match -m %s", o.Name, m.Module)))
	}
	add := func(x cond, err error) error {
		if err != nil {
			return err
		}
		ms = append(ms, x)
		return nil
	}
	addf := func(x matcher, err error) error {
		if err != nil {
			return err
		}
		ms = append(ms, fc(x))
		return nil
	}
	switch m.Module {
	case "comment", "nfacct", "counter":
		return ms, nil
	case "tcp", "udp", "sctp", "udplite":
		ms = append(ms, protoCond(m.Module))
		for _, o := range m.Options {
			var err error
			switch o.Name {
			case "dport", "destination-port", "dports":
				err = add(portCond(o, false))
			case "sport", "source-port", "sports":
				err = add(portCond(o, true))
			case "tcp-flags":
				if m.Module != "tcp" || int(o.n) != 2 {
					return nil, fmt.Errorf("--tcp-flags needs MASK COMP")
				}
				args := o.Values()
				if len(args) != 2 {
					return nil, fmt.Errorf("--tcp-flags needs MASK COMP")
				}
				mask, e1 := parseTCPFlags(args[0])
				comp, e2 := parseTCPFlags(args[1])
				if e1 != nil || e2 != nil {
					return nil, fmt.Errorf("--tcp-flags %q: bad flags", o.Arg)
				}
				neg := o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					return boolM(neg, st.pkt.TCPFlags&mask == comp), 0, ""
				}))
			case "syn":
				neg := o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					return boolM(neg, st.pkt.TCPFlags&(TCPSyn|TCPRst|TCPAck|TCPFin) == TCPSyn), 0, ""
				}))
			default:
				ms = append(ms, unsupported(o))
			}
			if err != nil {
				return nil, err
			}
		}
	case "icmp", "icmp6", "icmpv6":
		v6 := m.Module != "icmp"
		ms = append(ms, protoCond(map[bool]string{false: "icmp", true: "icmpv6"}[v6]))
		for _, o := range m.Options {
			if o.Name == "icmp-type" || o.Name == "icmpv6-type" {
				if err := addf(icmpTypeMatcher(o, v6)); err != nil {
					return nil, err
				}
				continue
			}
			ms = append(ms, unsupported(o))
		}
	case "multiport":
		for _, o := range m.Options {
			var src, dst bool
			switch o.Name {
			case "dports", "destination-ports":
				dst = true
			case "sports", "source-ports":
				src = true
			case "ports":
				src, dst = true, true
			default:
				ms = append(ms, unsupported(o))
				continue
			}
			if int(o.n) != 1 {
				return nil, fmt.Errorf("--%s needs one value", o.Name)
			}
			var prs []portRange
			for _, p := range strings.Split(o.Arg, ",") {
				pr, err := parsePortRange(p)
				if err != nil {
					return nil, fmt.Errorf("--%s: %w", o.Name, err)
				}
				prs = append(prs, pr)
			}
			neg := o.Negated
			ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
				if !hasPorts(st.pkt.Proto) {
					return mNo, 0, ""
				}
				ok := false
				for _, pr := range prs {
					if (dst && pr.has(st.pkt.DstPort)) || (src && pr.has(st.pkt.SrcPort)) {
						ok = true
						break
					}
				}
				return boolM(neg, ok), 0, ""
			}))
		}
	case "mark", "connmark":
		for _, o := range m.Options {
			if o.Name != "mark" {
				ms = append(ms, unsupported(o))
				continue
			}
			if err := add(markCond(o, m.Module == "connmark")); err != nil {
				return nil, err
			}
		}
	case "conntrack", "state":
		for _, o := range m.Options {
			var err error
			switch o.Name {
			case "ctstate", "state":
				err = add(ctStateCond(o))
			case "ctorigsrc", "ctorigdst":
				pfx, perr := parseAddrOrPrefix(o.Arg)
				if perr != nil {
					return nil, fmt.Errorf("--%s: %w", o.Name, perr)
				}
				src, neg := o.Name == "ctorigsrc", o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					a := st.orig.Dst
					if src {
						a = st.orig.Src
					}
					return boolM(neg, pfx.Contains(a)), 0, ""
				}))
			case "ctorigdstport", "ctorigsrcport":
				pr, perr := parsePortRange(o.Arg)
				if perr != nil {
					return nil, fmt.Errorf("--%s: %w", o.Name, perr)
				}
				src, neg := o.Name == "ctorigsrcport", o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					p := st.orig.DstPort
					if src {
						p = st.orig.SrcPort
					}
					return boolM(neg, pr.has(p)), 0, ""
				}))
			case "ctproto":
				n, ok := protoNum(o.Arg)
				if !ok {
					return nil, fmt.Errorf("--ctproto %q: unknown protocol", o.Arg)
				}
				neg := o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					pn, _ := protoNum(st.orig.Proto)
					return boolM(neg, pn == n), 0, ""
				}))
			case "ctdir":
				// traced packets travel in the original direction unless
				// they are replies (ESTABLISHED/RELATED): that is unknown
				orig := strings.EqualFold(o.Arg, "ORIGINAL")
				neg := o.Negated
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					if st.pkt.CTState == CTNew {
						return boolM(neg, orig), 0, ""
					}
					return mUnknown, 0, "conntrack --ctdir of a non-NEW packet is not known"
				}))
			default:
				ms = append(ms, unsupported(o))
			}
			if err != nil {
				return nil, err
			}
		}
	case "addrtype":
		limitIn, limitOut := false, false
		for _, o := range m.Options {
			limitIn = limitIn || o.Name == "limit-iface-in"
			limitOut = limitOut || o.Name == "limit-iface-out"
		}
		for _, o := range m.Options {
			var err error
			switch o.Name {
			case "src-type":
				err = addf(addrtypeMatcher(o, true, limitIn, limitOut))
			case "dst-type":
				err = addf(addrtypeMatcher(o, false, limitIn, limitOut))
			case "limit-iface-in", "limit-iface-out":
			default:
				ms = append(ms, unsupported(o))
			}
			if err != nil {
				return nil, err
			}
		}
	case "statistic":
		mode, _ := m.Option("mode")
		switch mode.Arg {
		case "random":
			po, ok := m.Option("probability")
			if !ok {
				return nil, fmt.Errorf("--mode random needs --probability")
			}
			p, err := strconv.ParseFloat(po.Arg, 64)
			if err != nil || p < 0 || p > 1 {
				return nil, fmt.Errorf("--probability %q: want a number in [0,1]", po.Arg)
			}
			if po.Negated {
				p = 1 - p
			}
			ms = append(ms, probCond(p))
		case "nth":
			eo, ok := m.Option("every")
			if !ok {
				return nil, fmt.Errorf("--mode nth needs --every")
			}
			n, err := strconv.ParseUint(eo.Arg, 10, 32)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("--every %q: want a positive number", eo.Arg)
			}
			p := 1 / float64(n)
			if eo.Negated {
				p = 1 - p
			}
			ms = append(ms, probCond(p))
		default:
			ms = append(ms, fc(unknownMatcher(fmt.Sprintf("unsupported statistic mode %q", mode.Arg))))
		}
	case "set":
		for _, o := range m.Options {
			switch o.Name {
			case "match-set":
				if int(o.n) != 2 {
					return nil, fmt.Errorf("--match-set needs NAME FLAGS")
				}
				args := o.Values()
				if len(args) != 2 {
					return nil, fmt.Errorf("--match-set needs NAME FLAGS")
				}
				name, flags := args[0], strings.Split(args[1], ",")
				for _, f := range flags {
					if f != "src" && f != "dst" {
						return nil, fmt.Errorf("--match-set %s: bad flag %q", name, f)
					}
				}
				neg := o.Negated
				ms = append(ms, fc(func(t *tracer, st *tstate) (mres, float64, string) {
					set := t.env.Ipsets[name]
					if set == nil {
						return mUnknown, 0, fmt.Sprintf("contents of ipset %q not known", name)
					}
					ok, err := set.Contains(st.pkt, flags, t.env.Ipsets)
					if err != nil {
						return mUnknown, 0, err.Error()
					}
					return boolM(neg, ok), 0, ""
				}))
			case "return-nomatch", "update-counters", "update-subcounters":
				if o.Name == "return-nomatch" {
					ms = append(ms, unsupported(o))
				}
			default:
				ms = append(ms, unsupported(o))
			}
		}
	case "physdev":
		for _, o := range m.Options {
			neg := o.Negated
			switch o.Name {
			case "physdev-in", "physdev-out":
				in, pat := o.Name == "physdev-in", o.Arg
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					n := st.pkt.PhysOutIface
					if in {
						n = st.pkt.PhysInIface
					}
					return boolM(neg, ifaceMatch(pat, n)), 0, ""
				}))
			case "physdev-is-in", "physdev-is-out", "physdev-is-bridged":
				name := o.Name
				ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
					var ok bool
					switch name {
					case "physdev-is-in":
						ok = st.pkt.PhysInIface != ""
					case "physdev-is-out":
						ok = st.pkt.PhysOutIface != ""
					default:
						ok = st.pkt.PhysInIface != "" || st.pkt.PhysOutIface != ""
					}
					return boolM(neg, ok), 0, ""
				}))
			default:
				ms = append(ms, unsupported(o))
			}
		}
	case "limit":
		// A single traced packet is within any rate limit (the burst
		// allows at least one packet): the match is true.
		for _, o := range m.Options {
			if o.Name != "limit" && o.Name != "limit-burst" {
				ms = append(ms, unsupported(o))
			}
		}
		ms = append(ms, fc(func(*tracer, *tstate) (mres, float64, string) { return mYes, 0, "" }))
	case "hashlimit":
		above := false
		for _, o := range m.Options {
			above = above || o.Name == "hashlimit-above"
		}
		// one packet is under the limit: "--hashlimit-upto" matches,
		// "--hashlimit-above" does not
		ms = append(ms, fc(func(*tracer, *tstate) (mres, float64, string) { return boolM(above, true), 0, "" }))
	case "recent":
		for _, o := range m.Options {
			switch o.Name {
			case "set":
				neg := o.Negated
				ms = append(ms, fc(func(*tracer, *tstate) (mres, float64, string) { return boolM(neg, true), 0, "" }))
			case "name", "rsource", "rdest", "mask", "reap", "rttl", "seconds", "hitcount":
			case "rcheck", "update", "remove":
				// true when the source is in the list: that depends on
				// earlier packets, known only if the caller says the lists
				// are empty (a new client)
				neg, why := o.Negated, fmt.Sprintf("match -m recent --%s depends on earlier packets", o.Name)
				ms = append(ms, fc(func(t *tracer, _ *tstate) (mres, float64, string) {
					if t.env.NoHistory {
						return boolM(neg, false), 0, ""
					}
					return mUnknown, 0, why
				}))
			default:
				ms = append(ms, fc(unknownMatcher(fmt.Sprintf("unsupported option --%s of match -m recent", o.Name))))
			}
		}
	case "length":
		for _, o := range m.Options {
			if o.Name != "length" {
				ms = append(ms, unsupported(o))
				continue
			}
			pr, err := parsePortRange(o.Arg)
			if err != nil {
				return nil, fmt.Errorf("--length: %w", err)
			}
			neg := o.Negated
			ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
				if st.pkt.Length == 0 {
					return mUnknown, 0, "match -m length: packet length not given"
				}
				return boolM(neg, pr.has(st.pkt.Length)), 0, ""
			}))
		}
	case "iprange":
		for _, o := range m.Options {
			if o.Name != "src-range" && o.Name != "dst-range" {
				ms = append(ms, unsupported(o))
				continue
			}
			a, b, ok := strings.Cut(o.Arg, "-")
			lo, e1 := netip.ParseAddr(a)
			hi, e2 := netip.ParseAddr(b)
			if !ok || e1 != nil || e2 != nil {
				return nil, fmt.Errorf("--%s %q: want ADDR-ADDR", o.Name, o.Arg)
			}
			src, neg := o.Name == "src-range", o.Negated
			ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
				x := st.pkt.Dst
				if src {
					x = st.pkt.Src
				}
				return boolM(neg, x.Compare(lo) >= 0 && x.Compare(hi) <= 0), 0, ""
			}))
		}
	case "pkttype":
		for _, o := range m.Options {
			if o.Name != "pkt-type" {
				ms = append(ms, unsupported(o))
				continue
			}
			want, neg := strings.ToLower(o.Arg), o.Negated
			ms = append(ms, fc(func(_ *tracer, st *tstate) (mres, float64, string) {
				typ := "unicast"
				if st.pkt.Dst.IsMulticast() {
					typ = "multicast"
				} else if st.pkt.Dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
					typ = "broadcast"
				}
				return boolM(neg, typ == want), 0, ""
			}))
		}
	default:
		ms = append(ms, fc(unknownMatcher("unsupported match -m "+m.Module)))
	}
	return ms, nil
}

func compileIptTarget(tb *Table, r *Rule, ir *iptRule) error {
	opt := func(name string) (string, bool) {
		o, ok := r.TargetOption(name)
		return o.Arg, ok
	}
	switch r.Target {
	case "MARK", "CONNMARK", "DNAT", "SNAT", "MASQUERADE", "REDIRECT":
		ir.iptExtra = &iptExtra{}
	}
	switch r.Target {
	case "":
		r.iptKind = tNone
	case "ACCEPT":
		r.iptKind = tAccept
	case "DROP":
		r.iptKind = tDrop
	case "REJECT":
		r.iptKind = tReject
		if v, ok := opt("reject-with"); ok {
			ir.setAction("REJECT " + v)
		}
	case "RETURN":
		r.iptKind = tReturn
	case "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "TCPMSS", "CLASSIFY", "DSCP", "TOS", "TTL", "HL",
		"CHECKSUM", "SET", "ECN", "IDLETIMER", "LED", "TEE", "SECMARK", "CONNSECMARK", "RATEEST", "TPROXY_MARK":
		r.iptKind = tContinue
		if v, ok := opt("log-prefix"); ok {
			ir.setAction(r.Target + " " + strconv.Quote(v))
		}
	case "NOTRACK":
		r.iptKind = tNotrack
	case "CT":
		r.iptKind = tContinue
		if _, ok := opt("notrack"); ok {
			r.iptKind = tNotrack
		}
	case "MARK", "CONNMARK":
		r.iptKind = tMark
		if r.Target == "CONNMARK" {
			r.iptKind = tConnmark
		}
		ir.nfmask, ir.ctmask = 0xffffffff, 0xffffffff
		for _, o := range r.TargetOptions {
			var v, m uint32
			var err error
			if int(o.n) > 0 {
				v, m, err = parseMarkMask(o.Arg)
				if err != nil {
					return fmt.Errorf("--%s: %w", o.Name, err)
				}
			}
			switch o.Name {
			case "set-xmark":
				ir.markClear, ir.markXor = m, v
			case "set-mark":
				ir.markClear, ir.markXor = m|v, v
			case "and-mark":
				ir.markClear, ir.markXor = ^v, 0
			case "or-mark":
				ir.markClear, ir.markXor = v, v
			case "xor-mark":
				ir.markClear, ir.markXor = 0, v
			case "save-mark":
				if r.Target != "CONNMARK" {
					return fmt.Errorf("--save-mark is a CONNMARK option")
				}
				ir.ctSave = true
				if int(o.n) > 0 { // old "--save-mark --mask"
					ir.nfmask, ir.ctmask = m, m
				}
			case "restore-mark":
				if r.Target != "CONNMARK" {
					return fmt.Errorf("--restore-mark is a CONNMARK option")
				}
				ir.ctRestore = true
			case "nfmask":
				ir.nfmask = v
			case "ctmask":
				ir.ctmask = v
			case "mask":
				ir.nfmask, ir.ctmask = v, v
			default:
				r.iptKind = tUnknown
				ir.reason = fmt.Sprintf("unsupported option --%s of target %s", o.Name, r.Target)
			}
		}
		ir.setAction(strings.TrimSpace(r.Target + " " + optsText(r.TargetOptions)))
	case "DNAT", "SNAT":
		name := "to-destination"
		r.iptKind = tDNAT
		if r.Target == "SNAT" {
			name, r.iptKind = "to-source", tSNAT
		}
		v, ok := opt(name)
		if !ok {
			return fmt.Errorf("missing --%s", name)
		}
		a, p, ranged, err := parseNATTarget(v)
		if err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
		ir.natAddr, ir.natPort, ir.natRanged = a, p, ranged
		ir.setAction(r.Target + " " + v)
	case "MASQUERADE", "REDIRECT":
		r.iptKind = tMasquerade
		if r.Target == "REDIRECT" {
			r.iptKind = tRedirect
		}
		if v, ok := opt("to-ports"); ok {
			pr, err := parsePortRange(v)
			if err != nil {
				return fmt.Errorf("--to-ports: %w", err)
			}
			ir.natPort = pr.lo
			ir.natRanged = pr.lo != pr.hi
		}
	default:
		if c := tb.Chain(r.Target); c != nil {
			r.iptKind = tJump
			ir.jump = c
			return nil
		}
		if strings.ToUpper(r.Target) != r.Target {
			return fmt.Errorf("jump to undeclared chain %q", r.Target)
		}
		r.iptKind = tUnknown
		ir.iptExtra = &iptExtra{reason: "unsupported target -j " + r.Target}
	}
	return nil
}

// jumpAction is the action text of a jump or goto rule.
func jumpAction(r *Rule) string {
	if r.Goto {
		return "goto " + r.Target
	}
	return "jump " + r.Target
}

func optsText(os []Option) string {
	var b strings.Builder
	for i, o := range os {
		if i > 0 {
			b.WriteByte(' ')
		}
		if o.Negated {
			b.WriteString("! ")
		}
		b.WriteString("--" + o.Name)
		if o.Arg != "" {
			b.WriteByte(' ')
			b.WriteString(o.Arg)
		}
	}
	return b.String()
}

// matchRule evaluates all conditions of a rule. All must hold; a definite
// mismatch wins over an unknown one (the conditions are a conjunction).
func (ir *iptRule) match(t *tracer, st *tstate) (mres, float64, string) {
	res, p, reason := mYes, 1.0, ""
	for i := range ir.conds {
		r, q, why := ir.conds[i].eval(t, st)
		switch r {
		case mNo:
			return mNo, 0, ""
		case mUnknown:
			if res != mUnknown {
				res, reason = mUnknown, why
			}
		case mProb:
			p *= q
			if res == mYes {
				res = mProb
			}
		}
	}
	if res == mProb && p >= 1 {
		res = mYes
	}
	if res == mProb && p <= 0 {
		return mNo, 0, ""
	}
	return res, p, reason
}

func (t *tracer) iptBase(st *tstate, bc baseChain) []branch {
	var out []branch
	for _, b := range t.iptRun(bc.rs, st, bc.chain, 0, 0) {
		if b.kind == endReturn {
			pol := bc.chain.Policy
			if pol != "ACCEPT" || len(bc.chain.Rules) > 0 {
				b.st.hit(bc.rs, bc.chain, 0, policyText(pol), policyText(pol))
			}
			switch pol {
			case "DROP":
				b.kind = endDrop
				b.st.reason = fmt.Sprintf("policy DROP of %s/%s", bc.table.Name, bc.chain.Name)
			case "ACCEPT", "RETURN":
				b.kind = endAccept
			default:
				b.kind = endUnknown
				b.st.reason = fmt.Sprintf("policy %s of %s/%s hands the packet to userspace", pol, bc.table.Name, bc.chain.Name)
			}
		}
		out = append(out, b)
	}
	return out
}

// iptRun evaluates chain c from rule index start.
func (t *tracer) iptRun(rs *Ruleset, st *tstate, c *Chain, start, depth int) []branch {
	if depth > maxDepth {
		st.reason = "jump depth exceeds " + strconv.Itoa(maxDepth) + " at chain " + c.Name + " (loop?)"
		return []branch{{st: st, kind: endUnknown}}
	}
	rules := c.Rules
	for i := start; i < len(rules); i++ {
		if c.index != nil {
			i = c.index.next(i, st.pkt.Dst)
			if i >= len(rules) {
				break
			}
		}
		r := rules[i]
		res, p, reason := r.ipt.match(t, st)
		switch res {
		case mNo:
			continue
		case mUnknown:
			return []branch{st.unknownAt(rs, r, reason)}
		case mProb:
			taken := t.split(st)
			if taken == nil {
				return []branch{st.unknownAt(rs, r, tooManyBranches)}
			}
			taken.prob *= p
			st.prob *= 1 - p
			out := t.iptApply(rs, taken, c, i, depth, probNote(p))
			return append(out, t.iptRun(rs, st, c, i+1, depth)...)
		}
		bs, cont := t.iptTarget(rs, st, c, i, depth, "")
		if cont {
			continue
		}
		return bs
	}
	return []branch{{st: st, kind: endReturn}}
}

// probNote is " (probability P)" with P as %.4g prints it, without fmt.
func probNote(p float64) string {
	var buf [40]byte
	b := append(buf[:0], " (probability "...)
	b = strconv.AppendFloat(b, p, 'g', 4, 64)
	return string(append(b, ')'))
}

// iptApply applies rule i's target and continues the chain where needed.
func (t *tracer) iptApply(rs *Ruleset, st *tstate, c *Chain, i, depth int, note string) []branch {
	bs, cont := t.iptTarget(rs, st, c, i, depth, note)
	if cont {
		return t.iptRun(rs, st, c, i+1, depth)
	}
	return bs
}

// iptTarget applies the target of rule i. It returns the resulting
// branches, or cont=true when st continues with the next rule.
func (t *tracer) iptTarget(rs *Ruleset, st *tstate, c *Chain, i, depth int, note string) ([]branch, bool) {
	r := c.Rules[i]
	ir := &r.ipt
	hit := func(action string) {
		if action == "" && note != "" {
			action = jumpAction(r)
		}
		st.hit(rs, c, r.Position, r.Text, action+note)
	}
	switch r.iptKind {
	case tNone, tContinue:
		hit(r.iptAction())
		return nil, true
	case tAccept:
		hit(r.iptAction())
		return []branch{{st: st, kind: endAccept}}, false
	case tDrop:
		hit(r.iptAction())
		st.reason = fmt.Sprintf("dropped by %s/%s rule %d", c.table.Name, c.Name, r.Position)
		return []branch{{st: st, kind: endDrop}}, false
	case tReject:
		hit(r.iptAction())
		st.reason = fmt.Sprintf("rejected by %s/%s rule %d", c.table.Name, c.Name, r.Position)
		return []branch{{st: st, kind: endReject}}, false
	case tReturn:
		hit(r.iptAction())
		return []branch{{st: st, kind: endReturn}}, false
	case tNotrack:
		hit(r.iptAction())
		st.pkt.CTState = CTUntracked
		return nil, true
	case tMark:
		hit(r.iptAction())
		st.pkt.Mark = st.pkt.Mark&^ir.markClear ^ ir.markXor
		return nil, true
	case tConnmark:
		hit(r.iptAction())
		switch {
		case ir.ctSave:
			st.pkt.CTMark = st.pkt.CTMark&^ir.ctmask ^ st.pkt.Mark&ir.nfmask
		case ir.ctRestore:
			st.pkt.Mark = st.pkt.Mark&^ir.nfmask ^ st.pkt.CTMark&ir.ctmask
		default:
			st.pkt.CTMark = st.pkt.CTMark&^ir.markClear ^ ir.markXor
		}
		return nil, true
	case tDNAT, tSNAT, tMasquerade, tRedirect:
		if why := t.nat(st, r.iptKind, ir.natAddr, ir.natPort); why != "" {
			return []branch{st.unknownAt(rs, r, why)}, false
		}
		a := r.iptAction()
		if r.iptKind == tMasquerade || r.iptKind == tRedirect {
			a += " to " + natTo(r.iptKind, st.pkt)
		}
		if ir.natRanged {
			a += " (first of the range; the kernel picks one)"
		}
		hit(a)
		return []branch{{st: st, kind: endAccept}}, false
	case tJump:
		hit(r.iptAction())
		sub := t.iptRun(rs, st, ir.jump, 0, depth+1)
		if r.Goto {
			return sub, false
		}
		if len(sub) == 1 && sub[0].kind == endReturn && sub[0].st == st {
			return nil, true
		}
		var out []branch
		for _, b := range sub {
			if b.kind == endReturn {
				out = append(out, t.iptRun(rs, b.st, c, i+1, depth)...)
			} else {
				out = append(out, b)
			}
		}
		return out, false
	default:
		return []branch{st.unknownAt(rs, r, ir.reason)}, false
	}
}

func natTo(k iptTargetKind, p Packet) string {
	if k == tMasquerade {
		if p.SrcPort != 0 {
			return netip.AddrPortFrom(p.Src, p.SrcPort).String()
		}
		return p.Src.String()
	}
	if p.DstPort != 0 {
		return netip.AddrPortFrom(p.Dst, p.DstPort).String()
	}
	return p.Dst.String()
}

// nat rewrites the packet; it returns a reason when it cannot.
func (t *tracer) nat(st *tstate, k iptTargetKind, addr netip.Addr, port uint16) string {
	v4 := st.pkt.Dst.Is4()
	if addr.IsValid() && addr.Is4() != v4 {
		return "NAT address family differs from the packet's"
	}
	switch k {
	case tDNAT:
		if addr.IsValid() {
			st.pkt.Dst = addr
		}
		if port != 0 && hasPorts(st.pkt.Proto) {
			st.pkt.DstPort = port
		}
		st.dnat = true
	case tRedirect:
		var a netip.Addr
		if st.hook == "output" {
			a = netip.MustParseAddr("127.0.0.1")
			if !v4 {
				a = netip.IPv6Loopback()
			}
		} else {
			a = t.ifaceAddr(st.pkt.InIface, v4)
			if !a.IsValid() {
				return fmt.Sprintf("REDIRECT: address of in interface %q not known", st.pkt.InIface)
			}
		}
		st.pkt.Dst = a
		if port != 0 && hasPorts(st.pkt.Proto) {
			st.pkt.DstPort = port
		}
		st.dnat = true
	case tSNAT:
		if addr.IsValid() {
			st.pkt.Src = addr
		}
		if port != 0 && hasPorts(st.pkt.Proto) {
			st.pkt.SrcPort = port
		}
		st.snat = true
	case tMasquerade:
		a := t.ifaceAddr(st.pkt.OutIface, v4)
		if !a.IsValid() {
			return fmt.Sprintf("MASQUERADE: address of out interface %q not known", st.pkt.OutIface)
		}
		st.pkt.Src = a
		if port != 0 && hasPorts(st.pkt.Proto) {
			st.pkt.SrcPort = port
		}
		st.snat = true
	}
	st.natted = true
	return ""
}

func (t *tracer) ifaceAddr(iface string, v4 bool) netip.Addr {
	for _, a := range t.env.IfaceAddrs[iface] {
		a = a.Unmap()
		if a.Is4() == v4 {
			return a
		}
	}
	return netip.Addr{}
}

// dstIndex lets a chain of many "-d ADDR/32 ..." rules (kube-proxy's
// KUBE-SERVICES) skip straight to the rules that can match a destination.
// Rules without such a host destination are never skipped.
type dstIndex struct {
	keyed  []bool
	runEnd []int32
	byDst  map[netip.Addr][]int32
}

const minIndexedRules = 16

func hostDst(r *Rule) (netip.Addr, bool) {
	var a netip.Addr
	n := 0
	for _, o := range r.Basic {
		if o.Name == "d" {
			n++
			if o.Negated || int(o.n) != 1 {
				return a, false
			}
			p, err := parseAddrOrPrefix(o.Arg)
			if err != nil || !p.IsSingleIP() {
				return a, false
			}
			a = p.Addr()
		}
	}
	return a, n == 1
}

func buildDstIndex(c *Chain) *dstIndex {
	if len(c.Rules) < minIndexedRules {
		return nil
	}
	ix := &dstIndex{keyed: make([]bool, len(c.Rules)), runEnd: make([]int32, len(c.Rules)), byDst: map[netip.Addr][]int32{}}
	keyed := 0
	for i, r := range c.Rules {
		if a, ok := hostDst(r); ok {
			ix.keyed[i] = true
			ix.byDst[a] = append(ix.byDst[a], int32(i))
			keyed++
		}
	}
	if keyed < minIndexedRules {
		return nil
	}
	end := int32(len(c.Rules))
	for i := len(c.Rules) - 1; i >= 0; i-- {
		if !ix.keyed[i] {
			end = int32(i)
		}
		ix.runEnd[i] = end
	}
	return ix
}

// next returns the first index >= i whose rule may match dst.
func (ix *dstIndex) next(i int, dst netip.Addr) int {
	if !ix.keyed[i] {
		return i
	}
	end := int(ix.runEnd[i])
	list := ix.byDst[dst]
	k := sort.Search(len(list), func(k int) bool { return int(list[k]) >= i })
	if k < len(list) && int(list[k]) < end {
		return int(list[k])
	}
	return end
}
