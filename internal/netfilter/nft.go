package netfilter

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// rv is a runtime value read from the packet.
type rv struct {
	kind uint8 // vAddr, vNum, vStr
	a    netip.Addr
	n    uint64
	s    string
	fl   []string // flag sets (ct status)
}

// nexpr is a compiled nftables expression that reads the packet.
type nexpr struct {
	kind    string // "payload", "meta", "ct", "fib", "bitwise", "numgen", "concat", "unsupported"
	proto   string // payload protocol
	field   string // payload field, meta/ct key, fib result
	flags   []string
	op      string // bitwise op
	sub     *nexpr
	mask    uint64
	mod     uint64
	offset  uint64
	parts   []*nexpr
	typ     string // nft data type of the value
	why     string // unsupported: what
	numgenR bool
}

type nftVerdict struct {
	kind   string // accept, drop, continue, return, jump, goto, queue
	target string
	chain  *Chain
}

func (v *nftVerdict) String() string {
	if v.target != "" {
		return v.kind + " " + v.target
	}
	return v.kind
}

// sres is the result of one statement.
type sres struct {
	st     *tstate
	kind   uint8 // sCont, sBreak, sVerdict, sUnknown
	v      *nftVerdict
	note   string
	reason string
}

const (
	sCont uint8 = iota
	sBreak
	sVerdict
	sUnknown
	sReject
	sNATAccept
)

type nftStmt func(t *tracer, st *tstate) []sres

func one(st *tstate, kind uint8) []sres { return []sres{{st: st, kind: kind}} }

func unknownStmt(why string) nftStmt {
	return func(_ *tracer, st *tstate) []sres { return []sres{{st: st, kind: sUnknown, reason: why}} }
}

func compileNftRule(tb *Table, r *Rule) error {
	r.nftCompiled = &nftCompiled{}
	var parts []string
	for _, e := range r.Exprs {
		s, err := compileNftStmt(tb, e)
		if err != nil {
			return fmt.Errorf("%s: %w", e.Kind, err)
		}
		r.nft = append(r.nft, s)
		r.nftMatch = append(r.nftMatch, e.Kind == "match")
		parts = append(parts, renderStmt(e.Kind, e.Raw))
		switch e.Kind {
		case "accept", "drop", "return", "continue", "jump", "goto", "reject", "queue":
			r.Target = e.Kind
			if e.Kind == "goto" {
				r.Goto = true
			}
		}
	}
	r.Text = strings.Join(parts, " ")
	if r.Comment != "" {
		r.Text += " comment " + strconv.Quote(r.Comment)
	}
	return nil
}

func parseVerdict(raw json.RawMessage) (*nftVerdict, error) {
	k, v, err := oneKey(raw)
	if err != nil {
		return nil, err
	}
	switch k {
	case "accept", "drop", "continue", "return", "queue":
		return &nftVerdict{kind: k}, nil
	case "jump", "goto":
		var t struct {
			Target string `json:"target"`
		}
		if err := json.Unmarshal(v, &t); err != nil || t.Target == "" {
			return nil, fmt.Errorf("%s without target", k)
		}
		return &nftVerdict{kind: k, target: t.Target}, nil
	}
	return nil, fmt.Errorf("unknown verdict %q", k)
}

func compileNftStmt(tb *Table, e NftExpr) (nftStmt, error) {
	switch e.Kind {
	case "counter", "log", "dup", "set", "update", "add", "synproxy":
		return func(_ *tracer, st *tstate) []sres { return one(st, sCont) }, nil
	case "accept", "drop", "continue", "return", "jump", "goto":
		v, err := parseVerdict(mustObj(e.Kind, e.Raw))
		if err != nil {
			return nil, err
		}
		if v.target != "" {
			if v.chain = tb.Chain(v.target); v.chain == nil {
				return nil, fmt.Errorf("%s to unknown chain %q", v.kind, v.target)
			}
		}
		return func(_ *tracer, st *tstate) []sres { return []sres{{st: st, kind: sVerdict, v: v}} }, nil
	case "reject":
		return func(_ *tracer, st *tstate) []sres { return one(st, sReject) }, nil
	case "notrack":
		return func(_ *tracer, st *tstate) []sres {
			st.pkt.CTState = CTUntracked
			return one(st, sCont)
		}, nil
	case "limit":
		var l struct {
			Inv bool `json:"inv"`
		}
		_ = json.Unmarshal(e.Raw, &l)
		// one packet is within any rate; "limit rate over" does not match it
		return func(_ *tracer, st *tstate) []sres {
			if l.Inv {
				return one(st, sBreak)
			}
			return one(st, sCont)
		}, nil
	case "match":
		return compileNftMatch(tb, e.Raw)
	case "mangle":
		return compileMangle(e.Raw)
	case "vmap":
		return compileVmap(tb, e.Raw)
	case "dnat", "snat", "masquerade", "redirect":
		return compileNftNAT(e.Kind, e.Raw)
	case "xt":
		return unknownStmt("iptables extension inside nftables (xt): trace it through iptables-save instead"), nil
	}
	return unknownStmt("unsupported nftables statement " + e.Kind), nil
}

func mustObj(k string, v json.RawMessage) json.RawMessage {
	b, _ := json.Marshal(map[string]json.RawMessage{k: v})
	return b
}

func compileNexpr(raw json.RawMessage) (*nexpr, error) {
	k, v, err := oneKey(raw)
	if err != nil {
		return nil, err
	}
	switch k {
	case "payload":
		var p struct {
			Protocol string `json:"protocol"`
			Field    string `json:"field"`
			Base     string `json:"base"`
		}
		if err := json.Unmarshal(v, &p); err != nil {
			return nil, fmt.Errorf("bad payload %s", v)
		}
		x := &nexpr{kind: "payload", proto: p.Protocol, field: p.Field}
		switch {
		case (p.Protocol == "ip" || p.Protocol == "ip6") && (p.Field == "saddr" || p.Field == "daddr"):
			x.typ = "ipv4_addr"
			if p.Protocol == "ip6" {
				x.typ = "ipv6_addr"
			}
		case (p.Protocol == "th" || p.Protocol == "tcp" || p.Protocol == "udp" || p.Protocol == "sctp" || p.Protocol == "udplite") && (p.Field == "sport" || p.Field == "dport"):
			x.typ = "inet_service"
		case p.Protocol == "ip" && p.Field == "protocol", p.Protocol == "ip6" && p.Field == "nexthdr":
			x.typ = "inet_proto"
		case p.Protocol == "icmp" && p.Field == "type":
			x.typ = "icmp_type"
		case p.Protocol == "icmpv6" && p.Field == "type":
			x.typ = "icmpv6_type"
		case (p.Protocol == "icmp" || p.Protocol == "icmpv6") && p.Field == "code":
			x.typ = "num"
		case p.Protocol == "tcp" && p.Field == "flags":
			x.typ = "tcp_flag"
		default:
			return &nexpr{kind: "unsupported", why: "payload " + p.Protocol + " " + p.Field + p.Base}, nil
		}
		return x, nil
	case "meta":
		var m struct {
			Key string `json:"key"`
		}
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, fmt.Errorf("bad meta %s", v)
		}
		typ := map[string]string{"mark": "num", "l4proto": "inet_proto", "iifname": "ifname", "oifname": "ifname",
			"nfproto": "nf_proto", "protocol": "ether_type", "pkttype": "pkt_type", "length": "num"}[m.Key]
		if typ == "" {
			return &nexpr{kind: "unsupported", why: "meta " + m.Key}, nil
		}
		return &nexpr{kind: "meta", field: m.Key, typ: typ}, nil
	case "ct":
		var c struct {
			Key string `json:"key"`
			Dir string `json:"dir"`
		}
		if err := json.Unmarshal(v, &c); err != nil {
			return nil, fmt.Errorf("bad ct %s", v)
		}
		typ := map[string]string{"state": "ct_state", "mark": "num", "status": "ct_status", "direction": "ct_dir"}[c.Key]
		if c.Dir == "original" && (c.Key == "saddr" || c.Key == "daddr" || c.Key == "ip saddr" || c.Key == "ip daddr") {
			return &nexpr{kind: "ct", field: "original " + strings.TrimPrefix(c.Key, "ip "), typ: "ipv4_addr"}, nil
		}
		if typ == "" || c.Dir != "" {
			return &nexpr{kind: "unsupported", why: "ct " + strings.TrimSpace(c.Dir+" "+c.Key)}, nil
		}
		return &nexpr{kind: "ct", field: c.Key, typ: typ}, nil
	case "fib":
		var f struct {
			Result string          `json:"result"`
			Flags  json.RawMessage `json:"flags"`
		}
		if err := json.Unmarshal(v, &f); err != nil {
			return nil, fmt.Errorf("bad fib %s", v)
		}
		fl := stringOrList(f.Flags)
		x := &nexpr{kind: "fib", field: f.Result, flags: fl, typ: "fib_addrtype"}
		if f.Result != "type" {
			return &nexpr{kind: "unsupported", why: "fib " + strings.Join(fl, " . ") + " " + f.Result + " (needs the routing table)"}, nil
		}
		for _, g := range fl {
			if g == "oif" || g == "mark" {
				return &nexpr{kind: "unsupported", why: "fib " + strings.Join(fl, " . ") + " type"}, nil
			}
		}
		return x, nil
	case "&", "|", "^":
		var args []json.RawMessage
		if err := json.Unmarshal(v, &args); err != nil || len(args) != 2 {
			return nil, fmt.Errorf("bad %s expression", k)
		}
		sub, err := compileNexpr(args[0])
		if err != nil {
			return nil, err
		}
		m, err := literalNum(args[1], sub.typ)
		if err != nil {
			return nil, err
		}
		return &nexpr{kind: "bitwise", op: k, sub: sub, mask: m, typ: sub.typ}, nil
	case "numgen":
		var n struct {
			Mode   string `json:"mode"`
			Mod    uint64 `json:"mod"`
			Offset uint64 `json:"offset"`
		}
		if err := json.Unmarshal(v, &n); err != nil || n.Mod == 0 || n.Mod > 1<<16 {
			return nil, fmt.Errorf("bad numgen %s", v)
		}
		return &nexpr{kind: "numgen", mod: n.Mod, offset: n.Offset, typ: "num", numgenR: n.Mode == "random"}, nil
	case "concat":
		var parts []json.RawMessage
		if err := json.Unmarshal(v, &parts); err != nil {
			return nil, fmt.Errorf("bad concat")
		}
		x := &nexpr{kind: "concat"}
		for _, p := range parts {
			sub, err := compileNexpr(p)
			if err != nil {
				return nil, err
			}
			x.parts = append(x.parts, sub)
		}
		return x, nil
	}
	return &nexpr{kind: "unsupported", why: "expression " + k}, nil
}

// literalNum reads a number, a symbol or a list of flag symbols (ORed).
func literalNum(raw json.RawMessage, typ string) (uint64, error) {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		var v uint64
		for _, x := range list {
			n, err := literalNum(x, typ)
			if err != nil {
				return 0, err
			}
			v |= n
		}
		return v, nil
	}
	x, err := compileNval(raw, typ)
	if err != nil {
		return 0, err
	}
	if x.kind != vNum || x.nlo != x.nhi {
		return 0, fmt.Errorf("want a number, got %s", trunc(string(raw)))
	}
	return x.nlo, nil
}

func (x *nexpr) types() []string {
	if x.kind == "concat" {
		var t []string
		for _, p := range x.parts {
			t = append(t, p.typ)
		}
		return t
	}
	return []string{x.typ}
}

// weighted is one possible value of an expression with its probability.
type weighted struct {
	v []rv
	p float64
}

// eval reads the expression from the packet. ok=false means the
// expression does not apply to this packet (e.g. "tcp dport" of a udp
// packet): the rule does not match. why != "" means it cannot be known.
func (t *tracer) eval(x *nexpr, st *tstate) (vals []weighted, ok bool, why string) {
	if x.kind == "numgen" {
		out := make([]weighted, 0, x.mod)
		p := 1 / float64(x.mod)
		for i := uint64(0); i < x.mod; i++ {
			out = append(out, weighted{v: []rv{{kind: vNum, n: i + x.offset}}, p: p})
		}
		return out, true, ""
	}
	if x.kind == "concat" {
		key := make([]rv, 0, len(x.parts))
		for _, p := range x.parts {
			v, ok, why := t.eval1(p, st)
			if why != "" || !ok {
				return nil, ok, why
			}
			key = append(key, v)
		}
		return []weighted{{v: key, p: 1}}, true, ""
	}
	v, ok, why := t.eval1(x, st)
	if why != "" || !ok {
		return nil, ok, why
	}
	return []weighted{{v: []rv{v}, p: 1}}, true, ""
}

func num(n uint64) rv { return rv{kind: vNum, n: n} }

func (t *tracer) eval1(x *nexpr, st *tstate) (rv, bool, string) {
	p := &st.pkt
	switch x.kind {
	case "payload":
		switch x.field {
		case "saddr", "daddr":
			if (x.proto == "ip") != p.Dst.Is4() {
				return rv{}, false, ""
			}
			if x.field == "saddr" {
				return rv{kind: vAddr, a: p.Src}, true, ""
			}
			return rv{kind: vAddr, a: p.Dst}, true, ""
		case "sport", "dport":
			if x.proto == "th" {
				if !hasPorts(p.Proto) {
					return rv{}, false, ""
				}
			} else if x.proto != p.Proto {
				return rv{}, false, ""
			}
			if x.field == "sport" {
				return num(uint64(p.SrcPort)), true, ""
			}
			return num(uint64(p.DstPort)), true, ""
		case "protocol", "nexthdr":
			if (x.proto == "ip") != p.Dst.Is4() {
				return rv{}, false, ""
			}
			n, _ := protoNum(p.Proto)
			return num(uint64(n)), true, ""
		case "type", "code":
			if x.proto != p.Proto {
				return rv{}, false, ""
			}
			if x.field == "type" {
				return num(uint64(p.ICMPType)), true, ""
			}
			return num(uint64(p.ICMPCode)), true, ""
		case "flags":
			if p.Proto != "tcp" {
				return rv{}, false, ""
			}
			return num(uint64(p.TCPFlags)), true, ""
		}
	case "meta":
		switch x.field {
		case "mark":
			return num(uint64(p.Mark)), true, ""
		case "l4proto":
			n, _ := protoNum(p.Proto)
			return num(uint64(n)), true, ""
		case "iifname":
			return rv{kind: vStr, s: p.InIface}, true, ""
		case "oifname":
			return rv{kind: vStr, s: p.OutIface}, true, ""
		case "nfproto":
			if p.Dst.Is4() {
				return num(2), true, ""
			}
			return num(10), true, ""
		case "protocol":
			if p.Dst.Is4() {
				return num(0x0800), true, ""
			}
			return num(0x86dd), true, ""
		case "pkttype":
			s := "host"
			if p.Dst.IsMulticast() {
				s = "multicast"
			} else if p.Dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
				s = "broadcast"
			}
			return rv{kind: vStr, s: s}, true, ""
		case "length":
			if p.Length == 0 {
				return rv{}, false, "meta length: packet length not given"
			}
			return num(uint64(p.Length)), true, ""
		}
	case "ct":
		switch x.field {
		case "state":
			return rv{kind: vStr, s: strings.ToLower(p.CTState)}, true, ""
		case "mark":
			return num(uint64(p.CTMark)), true, ""
		case "status":
			var fl []string
			if st.dnat {
				fl = append(fl, "dnat")
			}
			if st.snat {
				fl = append(fl, "snat")
			}
			if p.CTState != CTNew {
				return rv{}, false, "ct status of a non-NEW packet is not known"
			}
			return rv{kind: vStr, fl: fl, s: "\x00status"}, true, ""
		case "direction":
			if p.CTState != CTNew {
				return rv{}, false, "ct direction of a non-NEW packet is not known"
			}
			return rv{kind: vStr, s: "original"}, true, ""
		case "original saddr":
			return rv{kind: vAddr, a: st.orig.Src}, true, ""
		case "original daddr":
			return rv{kind: vAddr, a: st.orig.Dst}, true, ""
		}
	case "fib":
		src := false
		iface, limit := "", false
		for _, f := range x.flags {
			switch f {
			case "saddr":
				src = true
			case "iif":
				iface, limit = p.InIface, true
			}
		}
		a := p.Dst
		if src {
			a = p.Src
		}
		typ, ok := t.addrType(a, iface, limit)
		if !ok {
			return rv{}, false, fmt.Sprintf("fib: addresses of interface %q not known", iface)
		}
		return rv{kind: vStr, s: strings.ToLower(typ)}, true, ""
	case "bitwise":
		v, ok, why := t.eval1(x.sub, st)
		if !ok || why != "" || v.kind != vNum {
			if ok && why == "" {
				why = "bitwise operation on a non-number"
			}
			return rv{}, ok, why
		}
		switch x.op {
		case "&":
			v.n &= x.mask
		case "|":
			v.n |= x.mask
		case "^":
			v.n ^= x.mask
		}
		return v, true, ""
	case "unsupported":
		return rv{}, true, "unsupported nftables expression " + x.why
	}
	return rv{}, true, "unsupported nftables expression " + x.kind + " " + x.field
}

// nrhs is the right-hand side of a match.
type nrhs struct {
	lit   *nval
	list  []nval // flag list: any of
	set   *NftSet
	anon  [][]nval
	isSet bool
}

func compileRHS(tb *Table, raw json.RawMessage, types []string) (*nrhs, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil && strings.HasPrefix(s, "@") {
		set := tb.Sets[s[1:]]
		if set == nil {
			return nil, fmt.Errorf("unknown set %s", s)
		}
		return &nrhs{set: set, isSet: true}, nil
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		r := &nrhs{}
		for _, x := range list {
			v, err := compileNval(x, types[0])
			if err != nil {
				return nil, err
			}
			r.list = append(r.list, v)
		}
		return r, nil
	}
	if k, v, err := oneKey(raw); err == nil && k == "set" {
		var elems []json.RawMessage
		if err := json.Unmarshal(v, &elems); err != nil {
			// a set of one element may be printed as a scalar
			elems = []json.RawMessage{v}
		}
		r := &nrhs{isSet: true}
		for _, e := range elems {
			e, _ = unwrapElem(e)
			key, err := compileNvalTuple(e, types)
			if err != nil {
				return nil, err
			}
			r.anon = append(r.anon, key)
		}
		return r, nil
	}
	if len(types) > 1 {
		key, err := compileNvalTuple(raw, types)
		if err != nil {
			return nil, err
		}
		return &nrhs{anon: [][]nval{key}, isSet: true}, nil
	}
	v, err := compileNval(raw, types[0])
	if err != nil {
		return nil, err
	}
	return &nrhs{lit: &v}, nil
}

func tupleMatch(k []nval, key []rv) bool {
	if len(k) != len(key) {
		return false
	}
	for j := range k {
		if !k[j].matches(key[j]) {
			return false
		}
	}
	return true
}

// contains reports whether the key is in the right-hand side.
func (r *nrhs) contains(key []rv) bool {
	switch {
	case r.set != nil:
		return r.set.lookup(key) >= 0
	case r.anon != nil:
		for _, k := range r.anon {
			if tupleMatch(k, key) {
				return true
			}
		}
		return false
	case r.list != nil:
		for _, v := range r.list {
			if flagMatch(v, key[0]) {
				return true
			}
		}
		return false
	}
	return flagMatch(*r.lit, key[0])
}

func flagMatch(v nval, x rv) bool {
	if x.s == "\x00status" {
		for _, f := range x.fl {
			if f == v.s {
				return true
			}
		}
		return false
	}
	return v.matches(x)
}

func compileNftMatch(tb *Table, raw json.RawMessage) (nftStmt, error) {
	var m struct {
		Op    string          `json:"op"`
		Left  json.RawMessage `json:"left"`
		Right json.RawMessage `json:"right"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Left == nil || m.Right == nil {
		return nil, fmt.Errorf("want {op, left, right}")
	}
	left, err := compileNexpr(m.Left)
	if err != nil {
		return nil, err
	}
	if left.kind == "unsupported" {
		return unknownStmt("unsupported nftables expression " + left.why), nil
	}
	types := left.types()
	if left.typ == "tcp_flag" && m.Op == "in" {
		// "tcp flags syn": any of the flags set
		mask, err := literalNum(m.Right, "tcp_flag")
		if err != nil {
			return nil, err
		}
		return func(t *tracer, st *tstate) []sres {
			vals, ok, why := t.eval(left, st)
			if why != "" {
				return []sres{{st: st, kind: sUnknown, reason: why}}
			}
			if !ok || vals[0].v[0].n&mask == 0 {
				return one(st, sBreak)
			}
			return one(st, sCont)
		}, nil
	}
	rhs, err := compileRHS(tb, m.Right, types)
	if err != nil {
		return nil, err
	}
	op := m.Op
	switch op {
	case "==", "!=", "in", "<", ">", "<=", ">=":
	default:
		return nil, fmt.Errorf("unknown operator %q", op)
	}
	if (op == "<" || op == ">" || op == "<=" || op == ">=") && (rhs.lit == nil || rhs.lit.kind != vNum) {
		return nil, fmt.Errorf("operator %s needs a number", op)
	}
	return func(t *tracer, st *tstate) []sres {
		vals, ok, why := t.eval(left, st)
		if why != "" {
			return []sres{{st: st, kind: sUnknown, reason: why}}
		}
		if !ok {
			return one(st, sBreak)
		}
		var out []sres
		for i, w := range vals {
			var res bool
			switch op {
			case "==", "in":
				res = rhs.contains(w.v)
			case "!=":
				res = !rhs.contains(w.v)
			default:
				n, lim := w.v[0].n, rhs.lit.nlo
				res = (op == "<" && n < lim) || (op == ">" && n > lim) || (op == "<=" && n <= lim) || (op == ">=" && n >= lim)
			}
			s := st
			if len(vals) > 1 {
				if i < len(vals)-1 {
					if s = t.split(st); s == nil {
						return []sres{{st: st, kind: sUnknown, reason: tooManyBranches}}
					}
				}
				s.prob *= w.p
			}
			if res {
				out = append(out, sres{st: s, kind: sCont})
			} else {
				out = append(out, sres{st: s, kind: sBreak})
			}
		}
		return out
	}, nil
}

func compileMangle(raw json.RawMessage) (nftStmt, error) {
	var m struct {
		Key   json.RawMessage `json:"key"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Key == nil || m.Value == nil {
		return nil, fmt.Errorf("want {key, value}")
	}
	key, err := compileNexpr(m.Key)
	if err != nil {
		return nil, err
	}
	isMark := (key.kind == "meta" || key.kind == "ct") && key.field == "mark"
	if !isMark {
		if key.kind == "ct" || strings.Contains(string(m.Key), "\"ct\"") {
			// ct zone/helper/expectation: no effect on the trace
			return func(_ *tracer, st *tstate) []sres { return one(st, sCont) }, nil
		}
		return unknownStmt("unsupported nftables statement: set " + renderNft(m.Key)), nil
	}
	ct := key.kind == "ct"
	var lit *uint64
	var val *nexpr
	if n, err := literalNum(m.Value, "num"); err == nil {
		lit = &n
	} else {
		if val, err = compileNexpr(m.Value); err != nil {
			return nil, err
		}
	}
	return func(t *tracer, st *tstate) []sres {
		var n uint64
		if lit != nil {
			n = *lit
		} else {
			v, ok, why := t.eval1(val, st)
			if why != "" || !ok || v.kind != vNum {
				if why == "" {
					why = "mark value not computable"
				}
				return []sres{{st: st, kind: sUnknown, reason: why}}
			}
			n = v.n
		}
		if ct {
			st.pkt.CTMark = uint32(n)
		} else {
			st.pkt.Mark = uint32(n)
		}
		return one(st, sCont)
	}, nil
}

func compileVmap(tb *Table, raw json.RawMessage) (nftStmt, error) {
	var m struct {
		Key  json.RawMessage `json:"key"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Key == nil || m.Data == nil {
		return nil, fmt.Errorf("want {key, data}")
	}
	key, err := compileNexpr(m.Key)
	if err != nil {
		return nil, err
	}
	if key.kind == "unsupported" {
		return unknownStmt("unsupported nftables expression " + key.why), nil
	}
	var set *NftSet
	var s string
	if json.Unmarshal(m.Data, &s) == nil && strings.HasPrefix(s, "@") {
		if set = tb.Sets[s[1:]]; set == nil {
			return nil, fmt.Errorf("unknown map %s", s)
		}
		if set.Map != "verdict" {
			return nil, fmt.Errorf("map %s is not a verdict map", s)
		}
	} else {
		k, v, err := oneKey(m.Data)
		if err != nil || k != "set" {
			return nil, fmt.Errorf("vmap data: want @map or {\"set\": [...]}")
		}
		set, err = parseNftSet(nftObjSet{Name: "(anonymous)", Type: mustJSON(key.types()), Map: mustJSON("verdict"), Elem: splitList(v)}, true)
		if err != nil {
			return nil, err
		}
		set.Map = "verdict"
		for i := range set.Elements {
			if set.Elements[i].verdict == nil {
				v, err := parseVerdictData(set.Elements[i])
				if err != nil {
					return nil, err
				}
				set.Elements[i].verdict = v
			}
		}
	}
	for i := range set.Elements {
		v := set.Elements[i].verdict
		if v != nil && v.target != "" && v.chain == nil {
			if v.chain = tb.Chain(v.target); v.chain == nil {
				return nil, fmt.Errorf("map %s: %s to unknown chain %q", set.Name, v.kind, v.target)
			}
		}
	}
	return func(t *tracer, st *tstate) []sres {
		label := func(w weighted) string { return fmt.Sprintf("numgen %d", w.v[0].n) }
		return t.branchOn(key, st, label, func(s *tstate, w weighted, note string) sres {
			idx := set.lookup(w.v)
			if idx < 0 {
				return sres{st: s, kind: sBreak}
			}
			el := set.Elements[idx]
			return sres{st: s, kind: sVerdict, v: el.verdict, note: " via " + strings.Join(el.Key, " . ") + note}
		})
	}, nil
}

// branchOn evaluates key on the packet and calls each once per value it can take, on its own
// copy of the state when there are several (numgen, a map keyed on a random value), with the
// value's probability applied and a note naming it (label) and the probability. A key that
// cannot be evaluated gives unknown; one that does not apply to the packet, no match (break).
func (t *tracer) branchOn(key *nexpr, st *tstate, label func(weighted) string, each func(s *tstate, w weighted, note string) sres) []sres {
	vals, ok, why := t.eval(key, st)
	if why != "" {
		return []sres{{st: st, kind: sUnknown, reason: why}}
	}
	if !ok {
		return one(st, sBreak)
	}
	out := make([]sres, 0, len(vals))
	for i, w := range vals {
		s := st
		note := ""
		if len(vals) > 1 {
			if i < len(vals)-1 {
				if s = t.split(st); s == nil {
					return []sres{{st: st, kind: sUnknown, reason: tooManyBranches}}
				}
			}
			s.prob *= w.p
			note = fmt.Sprintf(" (%s, probability %.4g)", label(w), w.p)
		}
		out = append(out, each(s, w, note))
	}
	return out
}

func parseVerdictData(el NftElement) (*nftVerdict, error) {
	f := strings.Fields(el.Data)
	switch {
	case len(f) == 1:
		return &nftVerdict{kind: f[0]}, nil
	case len(f) == 2:
		return &nftVerdict{kind: f[0], target: f[1]}, nil
	}
	return nil, fmt.Errorf("bad verdict %q", el.Data)
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func splitList(raw json.RawMessage) []json.RawMessage {
	var l []json.RawMessage
	if json.Unmarshal(raw, &l) != nil {
		return []json.RawMessage{raw}
	}
	return l
}

// natEntry is one element of a NAT map: key -> address[:port].
type natEntry struct {
	key  []nval
	addr netip.Addr
	port uint64
}

// natTargetValue compiles a NAT target: a literal address, or a
// concatenation address . port as in maps.
func natTargetValue(raw json.RawMessage) (netip.Addr, uint64, bool) {
	if k, v, err := oneKey(raw); err == nil && k == "concat" {
		var parts []json.RawMessage
		if json.Unmarshal(v, &parts) != nil || len(parts) != 2 {
			return netip.Addr{}, 0, false
		}
		a, err1 := compileNval(parts[0], "ipv4_addr")
		p, err2 := compileNval(parts[1], "inet_service")
		if err1 != nil || err2 != nil || a.kind != vAddr || p.kind != vNum {
			return netip.Addr{}, 0, false
		}
		return a.lo, p.nlo, true
	}
	a, err := compileNval(raw, "ipv4_addr")
	if err != nil || a.kind != vAddr {
		return netip.Addr{}, 0, false
	}
	return a.lo, 0, true
}

// compileNATMap compiles "dnat to KEY map { k : addr . port, ... }" with
// an anonymous map (kube-proxy's numgen load balancing).
func compileNATMap(raw json.RawMessage) (*nexpr, []natEntry, bool) {
	k, v, err := oneKey(raw)
	if err != nil || k != "map" {
		return nil, nil, false
	}
	var m struct {
		Key  json.RawMessage `json:"key"`
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(v, &m) != nil || m.Key == nil {
		return nil, nil, false
	}
	key, err := compileNexpr(m.Key)
	if err != nil || key.kind == "unsupported" {
		return nil, nil, false
	}
	dk, dv, err := oneKey(m.Data)
	if err != nil || dk != "set" {
		return nil, nil, false
	}
	var entries []natEntry
	for _, e := range splitList(dv) {
		var pair []json.RawMessage
		if json.Unmarshal(e, &pair) != nil || len(pair) != 2 {
			return nil, nil, false
		}
		kraw, _ := unwrapElem(pair[0])
		kv, err := compileNvalTuple(kraw, key.types())
		if err != nil {
			return nil, nil, false
		}
		a, port, ok := natTargetValue(pair[1])
		if !ok {
			return nil, nil, false
		}
		entries = append(entries, natEntry{key: kv, addr: a, port: port})
	}
	return key, entries, true
}

func compileNftNAT(kind string, raw json.RawMessage) (nftStmt, error) {
	var n struct {
		Addr   json.RawMessage `json:"addr"`
		Port   json.RawMessage `json:"port"`
		Family string          `json:"family"`
	}
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("bad %s %s", kind, trunc(string(raw)))
		}
	}
	k := map[string]iptTargetKind{"dnat": tDNAT, "snat": tSNAT, "masquerade": tMasquerade, "redirect": tRedirect}[kind]
	if n.Addr != nil {
		if key, entries, ok := compileNATMap(n.Addr); ok && n.Port == nil {
			return func(t *tracer, st *tstate) []sres {
				label := func(w weighted) string { return "map key " + rvKeyText(w.v) }
				return t.branchOn(key, st, label, func(s *tstate, w weighted, note string) sres {
					for _, e := range entries {
						if tupleMatch(e.key, w.v) {
							if why := t.nat(s, k, e.addr, uint16(e.port)); why != "" {
								return sres{st: s, kind: sUnknown, reason: why}
							}
							return sres{st: s, kind: sNATAccept, note: " -> " + natTo(k, s.pkt) + note}
						}
					}
					return sres{st: s, kind: sBreak}
				})
			}, nil
		}
	}
	var addr netip.Addr
	var port uint64
	ranged := false
	if n.Addr != nil {
		a, p, ok := natTargetValue(n.Addr)
		if !ok {
			if v, err := compileNval(n.Addr, "ipv4_addr"); err == nil && v.kind == vAddr {
				a, ok, ranged = v.lo, true, v.lo != v.hi
			}
		}
		if !ok {
			return unknownStmt(kind + " to a computed address (" + renderNft(n.Addr) + ")"), nil
		}
		addr, port = a, p
	}
	if n.Port != nil {
		v, err := compileNval(n.Port, "inet_service")
		if err != nil || v.kind != vNum {
			return unknownStmt(kind + " to a computed port (" + renderNft(n.Port) + ")"), nil
		}
		port, ranged = v.nlo, ranged || v.nlo != v.nhi
	}
	note := ""
	if ranged {
		note = " (first of the range; the kernel picks one)"
	}
	return func(t *tracer, st *tstate) []sres {
		if why := t.nat(st, k, addr, uint16(port)); why != "" {
			return []sres{{st: st, kind: sUnknown, reason: why}}
		}
		return []sres{{st: st, kind: sNATAccept, note: " -> " + natTo(k, st.pkt) + note}}
	}, nil
}

func rvKeyText(vals []rv) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		switch v.kind {
		case vAddr:
			parts[i] = v.a.String()
		case vNum:
			parts[i] = strconv.FormatUint(v.n, 10)
		default:
			parts[i] = v.s
		}
	}
	return strings.Join(parts, " . ")
}

// nftBase runs a base chain and applies its policy.
func (t *tracer) nftBase(st *tstate, bc baseChain) []branch {
	var out []branch
	for _, b := range t.nftRun(bc.rs, st, bc.chain, 0, 0) {
		if b.kind == endReturn {
			pol := bc.chain.Policy
			if pol != "accept" || len(bc.chain.Rules) > 0 {
				b.st.hit(bc.rs, bc.chain, 0, policyText(pol), policyText(pol))
			}
			if pol == "drop" {
				b.kind = endDrop
				b.st.reason = fmt.Sprintf("policy drop of %s %s/%s", bc.table.Family, bc.table.Name, bc.chain.Name)
			} else {
				b.kind = endAccept
			}
		}
		out = append(out, b)
	}
	return out
}

func (t *tracer) nftRun(rs *Ruleset, st *tstate, c *Chain, start, depth int) []branch {
	if depth > maxDepth {
		st.reason = "jump depth exceeds " + strconv.Itoa(maxDepth) + " at chain " + c.Name + " (loop?)"
		return []branch{{st: st, kind: endUnknown}}
	}
	for i := start; i < len(c.Rules); i++ {
		r := c.Rules[i]
		res := t.nftStmts(r, st, 0)
		if len(res) == 1 && res[0].st == st && res[0].kind == sBreak {
			continue
		}
		var out []branch
		for _, x := range res {
			out = append(out, t.nftAfter(rs, x, c, i, depth)...)
		}
		return out
	}
	return []branch{{st: st, kind: endReturn}}
}

// nftStmts runs the statements of r from index k.
func (t *tracer) nftStmts(r *Rule, st *tstate, k int) []sres {
	for ; k < len(r.nft); k++ {
		res := r.nft[k](t, st)
		if len(res) == 1 && res[0].st == st && res[0].kind == sCont {
			continue
		}
		if len(res) == 1 && res[0].kind == sUnknown && r.nftMatch[k] && t.laterMismatch(r, st, k+1) {
			// the conditions are a conjunction: a definite mismatch of a
			// later match wins over an unknown one
			return []sres{{st: st, kind: sBreak}}
		}
		var out []sres
		for _, x := range res {
			if x.kind == sCont {
				out = append(out, t.nftStmts(r, x.st, k+1)...)
			} else {
				out = append(out, x)
			}
		}
		return out
	}
	// every statement ran without a verdict: the rule matched, go on
	return []sres{{st: st, kind: sCont}}
}

// laterMismatch reports whether one of the pure matches following
// statement k certainly fails for st.
func (t *tracer) laterMismatch(r *Rule, st *tstate, k int) bool {
	for ; k < len(r.nft) && r.nftMatch[k]; k++ {
		probe := st.clone()
		res := r.nft[k](t, probe)
		all := len(res) > 0
		for _, x := range res {
			all = all && x.kind == sBreak
		}
		if all {
			return true
		}
	}
	return false
}

func (t *tracer) nftAfter(rs *Ruleset, x sres, c *Chain, i, depth int) []branch {
	r := c.Rules[i]
	st := x.st
	hit := func(action string) { st.hit(rs, c, r.Position, r.Text, action) }
	switch x.kind {
	case sBreak:
		return t.nftRun(rs, st, c, i+1, depth)
	case sCont:
		hit("continue")
		return t.nftRun(rs, st, c, i+1, depth)
	case sUnknown:
		return []branch{st.unknownAt(rs, r, x.reason)}
	case sReject:
		hit("reject")
		st.reason = fmt.Sprintf("rejected by %s %s/%s rule %d", c.table.Family, c.table.Name, c.Name, r.Position)
		return []branch{{st: st, kind: endReject}}
	case sNATAccept:
		hit(strings.Fields(r.Exprs[len(r.Exprs)-1].Kind)[0] + x.note)
		return []branch{{st: st, kind: endAccept}}
	}
	v := x.v
	hit(v.String() + x.note)
	switch v.kind {
	case "accept":
		return []branch{{st: st, kind: endAccept}}
	case "drop":
		st.reason = fmt.Sprintf("dropped by %s %s/%s rule %d", c.table.Family, c.table.Name, c.Name, r.Position)
		return []branch{{st: st, kind: endDrop}}
	case "continue":
		return t.nftRun(rs, st, c, i+1, depth)
	case "return":
		return []branch{{st: st, kind: endReturn}}
	case "goto":
		return t.nftRun(rs, st, v.chain, 0, depth+1)
	case "jump":
		sub := t.nftRun(rs, st, v.chain, 0, depth+1)
		var out []branch
		for _, b := range sub {
			if b.kind == endReturn {
				out = append(out, t.nftRun(rs, b.st, c, i+1, depth)...)
			} else {
				out = append(out, b)
			}
		}
		return out
	}
	return []branch{st.unknownAt(rs, r, "verdict "+v.kind+" hands the packet to userspace")}
}
