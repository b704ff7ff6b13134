package capture

// A compiler for the common part of the tcpdump (pcap-filter) language to
// classic BPF, so that capture needs nothing installed on the node. What it
// does not know (an expression outside the subset below) is handed to
// `tcpdump -ddd` when tcpdump is there.
//
// Subset: ip, ip6, arp, tcp, udp, icmp, icmp6, sctp; [src|dst] host ADDR
// (IPv4 or IPv6), [src|dst] net CIDR, [tcp|udp] [src|dst] port N, portrange
// A-B, less N, greater N, ether/ip/tcp/udp/icmp[OFF(:SIZE)] with & | + - *
// << >> by constants compared with == = != < <= > >=, len, the named
// constants (tcpflags, tcp-syn..., icmptype, icmp-echo...), and/&&, or/||,
// not/!, parentheses and tcpdump's carried-over qualifiers
// ("host a and b" = "host a and host b").

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

// errUnsupported marks valid-looking filters outside the built-in subset.
var errUnsupported = errors.New("not supported by the built-in filter compiler")

// ---- lexer ----

type token struct {
	s    string
	word bool // identifier, number or address
}

func lex(expr string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			i++
		case isWordChar(c) && c != '-' && c != ':' && c != '.' && c != '/':
			j := i
			for j < len(expr) && isWordChar(expr[j]) {
				j++
			}
			toks = append(toks, token{s: expr[i:j], word: true})
			i = j
		default:
			two := ""
			if i+1 < len(expr) {
				two = expr[i : i+2]
			}
			switch two {
			case "&&", "||", "==", "!=", "<=", ">=", "<<", ">>":
				toks = append(toks, token{s: two})
				i += 2
				continue
			}
			if strings.IndexByte("()[]:!&|+-*/<>=", c) < 0 {
				return nil, fmt.Errorf("unexpected character %q", c)
			}
			toks = append(toks, token{s: string(c)})
			i++
		}
	}
	return toks, nil
}

func isWordChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '-' || c == '.' || c == ':' || c == '/'
}

// ---- AST ----

type node interface{}

type andNode struct{ a, b node }
type orNode struct{ a, b node }
type notNode struct{ a node }

// prim is a primitive: protocol, direction and type qualifiers and a value.
type prim struct {
	proto, dir, typ string
	value           string
}

// rel is a relation between an arithmetic expression over one packet load
// and a constant.
type rel struct {
	load  *load
	ops   []aluOp
	op    string
	value uint32
}

type load struct {
	proto string // ether, ip, tcp, udp, icmp, or len
	off   uint32
	size  int
}

type aluOp struct {
	op bpf.ALUOp
	k  uint32
}

// ---- parser ----

type parser struct {
	toks []token
	pos  int
	last prim // qualifiers carried over to bare values
}

func (p *parser) peek() string {
	if p.pos < len(p.toks) {
		return p.toks[p.pos].s
	}
	return ""
}

func (p *parser) next() string {
	s := p.peek()
	p.pos++
	return s
}

func (p *parser) expect(s string) error {
	if got := p.next(); got != s {
		return fmt.Errorf("expected %q, got %q", s, got)
	}
	return nil
}

func parseFilter(expr string) (node, error) {
	toks, err := lex(expr)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.peek())
	}
	return n, nil
}

func (p *parser) or() (node, error) {
	a, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.peek() == "or" || p.peek() == "||" {
		p.next()
		b, err := p.and()
		if err != nil {
			return nil, err
		}
		a = orNode{a, b}
	}
	return a, nil
}

func (p *parser) and() (node, error) {
	a, err := p.unary()
	if err != nil {
		return nil, err
	}
	for p.peek() == "and" || p.peek() == "&&" {
		p.next()
		b, err := p.unary()
		if err != nil {
			return nil, err
		}
		a = andNode{a, b}
	}
	return a, nil
}

var protoWords = map[string]bool{"ip": true, "ip6": true, "arp": true, "tcp": true, "udp": true,
	"icmp": true, "icmp6": true, "sctp": true, "ether": true}

// keywords cannot be values.
var keywords = map[string]bool{"and": true, "or": true, "not": true, "src": true, "dst": true, "host": true,
	"net": true, "port": true, "portrange": true, "less": true, "greater": true, "ip": true, "ip6": true,
	"arp": true, "tcp": true, "udp": true, "icmp": true, "icmp6": true, "sctp": true, "ether": true, "len": true}

var typeWords = map[string]bool{"host": true, "net": true, "port": true, "portrange": true}

func (p *parser) unary() (node, error) {
	switch p.peek() {
	case "not", "!":
		p.next()
		a, err := p.unary()
		if err != nil {
			return nil, err
		}
		return notNode{a}, nil
	case "":
		return nil, errors.New("expression ends too early")
	}
	if p.peek() == "(" {
		// "(expr) op ..." is arithmetic; "(expr)" followed by anything
		// else groups a boolean expression. Deciding by the token after
		// the matching parenthesis keeps the parser linear.
		after := p.afterGroup()
		if _, alu := aluOps[after]; alu || relops[after] {
			return p.relation()
		}
		p.next()
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		return n, p.expect(")")
	}
	// A relation? Try it first and fall back to a primitive (one step back,
	// never nested: relations do not contain boolean expressions).
	save := p.pos
	if r, err := p.relation(); err == nil {
		return r, nil
	} else if errors.Is(err, errUnsupported) {
		return nil, err
	}
	p.pos = save
	return p.primitive()
}

var relops = map[string]bool{"==": true, "=": true, "!=": true, "<": true, "<=": true, ">": true, ">=": true}

// afterGroup returns the token after the parenthesis that closes the one at
// the current position ("" if none).
func (p *parser) afterGroup() string {
	depth := 0
	for i := p.pos; i < len(p.toks); i++ {
		switch p.toks[i].s {
		case "(":
			depth++
		case ")":
			depth--
			if depth == 0 {
				if i+1 < len(p.toks) {
					return p.toks[i+1].s
				}
				return ""
			}
		}
	}
	return ""
}

func (p *parser) primitive() (node, error) {
	var q prim
	switch p.peek() {
	case "less", "greater":
		op := p.next()
		v, err := parseNum(p.next())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if op == "less" {
			return rel{load: &load{proto: "len"}, op: "<=", value: v}, nil
		}
		return rel{load: &load{proto: "len"}, op: ">=", value: v}, nil
	}
	if protoWords[p.peek()] {
		q.proto = p.next()
	}
	if d := p.peek(); d == "src" || d == "dst" {
		q.dir = p.next()
		if p.peek() == "or" || p.peek() == "and" {
			return nil, fmt.Errorf("%w: src or dst / src and dst", errUnsupported)
		}
	}
	if typeWords[p.peek()] {
		q.typ = p.next()
	}
	if q.typ == "" && q.dir == "" {
		if q.proto != "" { // a bare protocol: "tcp", "ip6"...
			return prim{proto: q.proto}, nil
		}
		// A bare value: the qualifiers of the previous primitive carry over.
		if p.last.typ == "" {
			q = prim{typ: "host"}
		} else {
			q = p.last
		}
	}
	if q.typ == "" {
		q.typ = "host"
	}
	v := p.next()
	if v == "" || !p.toks[p.pos-1].word || keywords[v] {
		return nil, fmt.Errorf("%s needs a value, got %q", q.typ, v)
	}
	q.value = v
	p.last = q
	return q, nil
}

var namedConst = map[string]uint32{
	"tcpflags": 13, "tcp-fin": 0x01, "tcp-syn": 0x02, "tcp-rst": 0x04, "tcp-push": 0x08,
	"tcp-ack": 0x10, "tcp-urg": 0x20, "tcp-ece": 0x40, "tcp-cwr": 0x80,
	"icmptype": 0, "icmpcode": 1, "icmp-echoreply": 0, "icmp-unreach": 3, "icmp-sourcequench": 4,
	"icmp-redirect": 5, "icmp-echo": 8, "icmp-routeradvert": 9, "icmp-routersolicit": 10,
	"icmp-timxceed": 11, "icmp-paramprob": 12, "icmp-tstamp": 13, "icmp-tstampreply": 14,
}

func parseNum(s string) (uint32, error) {
	if v, ok := namedConst[s]; ok {
		return v, nil
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return uint32(v), nil
}

// relation: arith relop arith, one side a packet load (or len) with
// constant operations, the other a constant.
func (p *parser) relation() (node, error) {
	l, ops, k, err := p.arith()
	if err != nil {
		return nil, err
	}
	op := p.next()
	switch op {
	case "==", "=", "!=", "<", "<=", ">", ">=":
	default:
		return nil, fmt.Errorf("expected a comparison, got %q", op)
	}
	l2, ops2, k2, err := p.arith()
	if err != nil {
		return nil, err
	}
	switch {
	case l != nil && l2 == nil:
		return rel{load: l, ops: ops, op: op, value: k2}, nil
	case l == nil && l2 != nil:
		flip := map[string]string{"==": "==", "=": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
		return rel{load: l2, ops: ops2, op: flip[op], value: k}, nil
	case l == nil && l2 == nil:
		return nil, fmt.Errorf("%w: comparison of two constants", errUnsupported)
	}
	return nil, fmt.Errorf("%w: comparison of two packet fields", errUnsupported)
}

var aluOps = map[string]bpf.ALUOp{"&": bpf.ALUOpAnd, "|": bpf.ALUOpOr, "+": bpf.ALUOpAdd, "-": bpf.ALUOpSub,
	"*": bpf.ALUOpMul, "/": bpf.ALUOpDiv, "<<": bpf.ALUOpShiftLeft, ">>": bpf.ALUOpShiftRight}

// arith parses a left-to-right chain of terms; it returns the load (nil for
// a constant), the operations applied to it, or the constant's value.
// Operator precedence is not modelled: a chain mixing precedences is
// unsupported unless it is constant.
func (p *parser) arith() (*load, []aluOp, uint32, error) {
	l, ops, k, err := p.term()
	if err != nil {
		return nil, nil, 0, err
	}
	var seen []string
	if len(ops) > 0 {
		seen = append(seen, "()") // a parenthesised group counts as a different operator
	}
	for {
		op, ok := aluOps[p.peek()]
		if !ok {
			break
		}
		seen = append(seen, p.next())
		l2, _, k2, err := p.term()
		if err != nil {
			return nil, nil, 0, err
		}
		if l2 != nil {
			return nil, nil, 0, fmt.Errorf("%w: arithmetic between packet fields", errUnsupported)
		}
		if l == nil {
			k = constOp(op, k, k2)
		} else {
			ops = append(ops, aluOp{op, k2})
		}
	}
	// Without precedence rules, only one operator may follow the load (or
	// its parenthesised group), repeated: x & a & b, (x & m) >> s.
	if rest := seen; l != nil && len(rest) > 0 {
		if rest[0] == "()" {
			rest = rest[1:]
		}
		for _, s := range rest {
			if s != rest[0] {
				return nil, nil, 0, fmt.Errorf("%w: mixed arithmetic operators", errUnsupported)
			}
		}
	}
	return l, ops, k, nil
}

func constOp(op bpf.ALUOp, a, b uint32) uint32 {
	switch op {
	case bpf.ALUOpAnd:
		return a & b
	case bpf.ALUOpOr:
		return a | b
	case bpf.ALUOpAdd:
		return a + b
	case bpf.ALUOpSub:
		return a - b
	case bpf.ALUOpMul:
		return a * b
	case bpf.ALUOpDiv:
		if b == 0 {
			return 0
		}
		return a / b
	case bpf.ALUOpShiftLeft:
		return a << b
	case bpf.ALUOpShiftRight:
		return a >> b
	}
	return 0
}

// term: number, named constant, len, proto[off(:size)], or ( arith ); a
// parenthesised group returns its load's operations.
func (p *parser) term() (*load, []aluOp, uint32, error) {
	t := p.next()
	switch {
	case t == "(":
		l, ops, k, err := p.arith()
		if err != nil {
			return nil, nil, 0, err
		}
		if err := p.expect(")"); err != nil {
			return nil, nil, 0, err
		}
		return l, ops, k, nil
	case t == "len":
		return &load{proto: "len"}, nil, 0, nil
	case protoWords[t] && p.peek() == "[":
		p.next()
		l := &load{proto: t, size: 1}
		off := p.next()
		if a, b, ok := strings.Cut(off, ":"); ok { // "6:2" lexes as one word
			off = a
			if b == "" {
				b = p.next()
			}
			n, err := strconv.Atoi(b)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("size %q", b)
			}
			l.size = n
		} else if p.peek() == ":" {
			p.next()
			n, err := strconv.Atoi(p.next())
			if err != nil {
				return nil, nil, 0, fmt.Errorf("bad size")
			}
			l.size = n
		}
		o, err := parseNum(off)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("%w: offset %q (only constant offsets)", errUnsupported, off)
		}
		if l.size != 1 && l.size != 2 && l.size != 4 {
			return nil, nil, 0, fmt.Errorf("data size must be 1, 2, or 4")
		}
		l.off = o
		if err := p.expect("]"); err != nil {
			return nil, nil, 0, err
		}
		if t == "ip6" || t == "arp" || t == "sctp" || t == "icmp6" {
			return nil, nil, 0, fmt.Errorf("%w: %s[]", errUnsupported, t)
		}
		return l, nil, 0, nil
	}
	if t == "" {
		return nil, nil, 0, errors.New("expression ends too early")
	}
	if _, ok := namedConst[t]; !ok && (t[0] < '0' || t[0] > '9') {
		return nil, nil, 0, fmt.Errorf("%q is not a value", t)
	}
	k, err := parseNum(t)
	return nil, nil, k, err
}

// ---- code generation ----

type label int

type insn struct {
	ins    bpf.Instruction // a non-jump instruction, or nil for a jump or a label
	jump   bool
	cond   bpf.JumpTest // JumpEqual, JumpGreaterThan, JumpGreaterOrEqual or JumpBitsSet
	k      uint32
	t, f   label
	isMark bool
	mark   label
}

type gen struct {
	code   []insn
	labels int
	link   uint32 // link-layer header length (14 for Ethernet, 0 for raw IP)
	raw    bool
}

func (g *gen) newLabel() label { g.labels++; return label(g.labels) }
func (g *gen) place(l label)   { g.code = append(g.code, insn{isMark: true, mark: l}) }
func (g *gen) emit(i bpf.Instruction) {
	g.code = append(g.code, insn{ins: i})
}
func (g *gen) jump(cond bpf.JumpTest, k uint32, t, f label) {
	g.code = append(g.code, insn{jump: true, cond: cond, k: k, t: t, f: f})
}

// cond is a boolean sub-expression generated with true and false targets.
type cond func(g *gen, t, f label) error

func and(cs ...cond) cond {
	return func(g *gen, t, f label) error {
		for i, c := range cs {
			next := t
			if i < len(cs)-1 {
				next = g.newLabel()
			}
			if err := c(g, next, f); err != nil {
				return err
			}
			if i < len(cs)-1 {
				g.place(next)
			}
		}
		return nil
	}
}

func or(cs ...cond) cond {
	return func(g *gen, t, f label) error {
		for i, c := range cs {
			next := f
			if i < len(cs)-1 {
				next = g.newLabel()
			}
			if err := c(g, t, next); err != nil {
				return err
			}
			if i < len(cs)-1 {
				g.place(next)
			}
		}
		return nil
	}
}

func not(c cond) cond { return func(g *gen, t, f label) error { return c(g, f, t) } }

// cmp loads with ld then compares A op k.
func cmp(ld func(g *gen), op string, k uint32) cond {
	return func(g *gen, t, f label) error {
		ld(g)
		switch op {
		case "==", "=":
			g.jump(bpf.JumpEqual, k, t, f)
		case "!=":
			g.jump(bpf.JumpEqual, k, f, t)
		case ">":
			g.jump(bpf.JumpGreaterThan, k, t, f)
		case ">=":
			g.jump(bpf.JumpGreaterOrEqual, k, t, f)
		case "<":
			g.jump(bpf.JumpGreaterOrEqual, k, f, t)
		case "<=":
			g.jump(bpf.JumpGreaterThan, k, f, t)
		default:
			return fmt.Errorf("operator %q", op)
		}
		return nil
	}
}

func abs(off uint32, size int) func(g *gen) {
	return func(g *gen) { g.emit(bpf.LoadAbsolute{Off: g.link + off, Size: size}) }
}

func absMasked(off uint32, size int, mask uint32) func(g *gen) {
	return func(g *gen) {
		g.emit(bpf.LoadAbsolute{Off: g.link + off, Size: size})
		g.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
	}
}

// l4 loads from the transport header of an IPv4 packet (X = IHL*4).
func l4(off uint32, size int) func(g *gen) {
	return func(g *gen) {
		g.emit(bpf.LoadMemShift{Off: g.link})
		g.emit(bpf.LoadIndirect{Off: g.link + off, Size: size})
	}
}

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd
	ethARP  = 0x0806
)

func isEther(typ uint32) cond {
	return func(g *gen, t, f label) error {
		if g.raw {
			switch typ {
			case ethIPv4:
				return cmp(absMasked(0, 1, 0xf0), "==", 0x40)(g, t, f)
			case ethIPv6:
				return cmp(absMasked(0, 1, 0xf0), "==", 0x60)(g, t, f)
			}
			g.jump(bpf.JumpEqual, 0, f, f) // no ARP on a raw IP link: always false
			return nil
		}
		g.emit(bpf.LoadAbsolute{Off: 12, Size: 2})
		g.jump(bpf.JumpEqual, typ, t, f)
		return nil
	}
}

var ipProto = map[string]uint32{"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "icmp6": 58}

func ip4Proto(n uint32) cond { return and(isEther(ethIPv4), cmp(abs(9, 1), "==", n)) }
func ip6Proto(n uint32) cond { return and(isEther(ethIPv6), cmp(abs(6, 1), "==", n)) }

// notFrag: IPv4 fragment offset zero (transport header present).
func notFrag() cond {
	return func(g *gen, t, f label) error {
		g.emit(bpf.LoadAbsolute{Off: g.link + 6, Size: 2})
		g.jump(bpf.JumpBitsSet, 0x1fff, f, t)
		return nil
	}
}

func protoCond(p string) (cond, error) {
	switch p {
	case "ip":
		return isEther(ethIPv4), nil
	case "ip6":
		return isEther(ethIPv6), nil
	case "arp":
		return isEther(ethARP), nil
	case "tcp", "udp", "sctp":
		return or(ip4Proto(ipProto[p]), ip6Proto(ipProto[p])), nil
	case "icmp":
		return ip4Proto(1), nil
	case "icmp6":
		return ip6Proto(58), nil
	case "ether":
		return func(g *gen, t, f label) error { g.jump(bpf.JumpEqual, 0, t, t); return nil }, nil
	}
	return nil, fmt.Errorf("%w: protocol %s", errUnsupported, p)
}

func (g *gen) compile(n node) (cond, error) {
	switch x := n.(type) {
	case andNode:
		a, err := g.compile(x.a)
		if err != nil {
			return nil, err
		}
		b, err := g.compile(x.b)
		if err != nil {
			return nil, err
		}
		return and(a, b), nil
	case orNode:
		a, err := g.compile(x.a)
		if err != nil {
			return nil, err
		}
		b, err := g.compile(x.b)
		if err != nil {
			return nil, err
		}
		return or(a, b), nil
	case notNode:
		a, err := g.compile(x.a)
		if err != nil {
			return nil, err
		}
		return not(a), nil
	case prim:
		return g.prim(x)
	case rel:
		return g.rel(x)
	}
	return nil, fmt.Errorf("unknown node %T", n)
}

func (g *gen) rel(r rel) (cond, error) {
	ld := func(g *gen) {
		switch r.load.proto {
		case "len":
			g.emit(bpf.LoadExtension{Num: bpf.ExtLen})
		case "ether":
			g.emit(bpf.LoadAbsolute{Off: r.load.off, Size: r.load.size})
		case "ip":
			g.emit(bpf.LoadAbsolute{Off: g.link + r.load.off, Size: r.load.size})
		default:
			l4(r.load.off, r.load.size)(g)
		}
		for _, o := range r.ops {
			g.emit(bpf.ALUOpConstant{Op: o.op, Val: o.k})
		}
	}
	c := cmp(ld, r.op, r.value)
	switch r.load.proto {
	case "len":
		return c, nil
	case "ether":
		if g.raw {
			return nil, fmt.Errorf("%w: ether[] on a raw IP link", errUnsupported)
		}
		return c, nil
	case "ip":
		return and(isEther(ethIPv4), c), nil
	case "tcp", "udp", "icmp", "sctp":
		return and(ip4Proto(ipProto[r.load.proto]), notFrag(), c), nil
	}
	return nil, fmt.Errorf("%w: %s[]", errUnsupported, r.load.proto)
}

func (g *gen) prim(q prim) (cond, error) {
	if q.value == "" {
		return protoCond(q.proto)
	}
	switch q.typ {
	case "host", "net":
		return g.hostNet(q)
	case "port", "portrange":
		return g.port(q)
	}
	return nil, fmt.Errorf("%w: %s", errUnsupported, q.typ)
}

func dirs(dir string, src, dst cond) cond {
	switch dir {
	case "src":
		return src
	case "dst":
		return dst
	}
	return or(src, dst)
}

func (g *gen) hostNet(q prim) (cond, error) {
	var ip net.IP
	var mask net.IPMask
	if q.typ == "net" || strings.Contains(q.value, "/") {
		v := q.value
		if !strings.Contains(v, "/") {
			if ip := net.ParseIP(v); ip != nil && ip.To4() != nil {
				v += "/32"
			} else if ip != nil {
				v += "/128"
			}
		}
		pip, n, err := net.ParseCIDR(v)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network", q.value)
		}
		if !pip.Mask(n.Mask).Equal(pip) {
			return nil, fmt.Errorf("non-network bits set in %q", q.value)
		}
		ip, mask = n.IP, n.Mask
	} else {
		ip = net.ParseIP(q.value)
		if ip == nil {
			return nil, fmt.Errorf("%w: host name %q (give an address)", errUnsupported, q.value)
		}
	}
	if q.proto != "" && q.proto != "ip" && q.proto != "ip6" && q.proto != "arp" {
		return nil, fmt.Errorf("%w: %s %s", errUnsupported, q.proto, q.typ)
	}
	if ip4 := ip.To4(); ip4 != nil {
		k := be32(ip4)
		m := uint32(0xffffffff)
		if mask != nil {
			m = be32(net.IP(mask).To4())
			if len(mask) == 16 {
				m = be32(net.IP(mask[12:]))
			}
		}
		field := func(off uint32) cond {
			if m == 0xffffffff {
				return cmp(abs(off, 4), "==", k)
			}
			return cmp(absMasked(off, 4, m), "==", k&m)
		}
		ipc := and(isEther(ethIPv4), dirs(q.dir, field(12), field(16)))
		arpc := and(isEther(ethARP), dirs(q.dir, field(14), field(24)))
		switch q.proto {
		case "ip":
			return ipc, nil
		case "arp":
			return arpc, nil
		case "ip6":
			return nil, fmt.Errorf("%q is not an IPv6 address", q.value)
		}
		return or(ipc, arpc), nil
	}
	if q.proto == "ip" || q.proto == "arp" {
		return nil, fmt.Errorf("%q is not an IPv4 address", q.value)
	}
	ip16 := ip.To16()
	ones := 128
	if mask != nil {
		ones, _ = mask.Size()
	}
	field := func(off uint32) cond {
		var cs []cond
		for w := 0; w < 4 && ones > w*32; w++ {
			bits := min(32, ones-w*32)
			m := uint32(0xffffffff)
			if bits < 32 {
				m = ^uint32(0) << (32 - bits)
			}
			k := be32(ip16[w*4:w*4+4]) & m
			if m == 0xffffffff {
				cs = append(cs, cmp(abs(off+uint32(w*4), 4), "==", k))
			} else {
				cs = append(cs, cmp(absMasked(off+uint32(w*4), 4, m), "==", k))
			}
		}
		if len(cs) == 0 {
			return func(g *gen, t, f label) error { g.jump(bpf.JumpEqual, 0, t, t); return nil }
		}
		return and(cs...)
	}
	return and(isEther(ethIPv6), dirs(q.dir, field(8), field(24))), nil
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func (g *gen) port(q prim) (cond, error) {
	lo, hi := uint32(0), uint32(0)
	if q.typ == "portrange" {
		a, b, ok := strings.Cut(q.value, "-")
		if !ok {
			return nil, fmt.Errorf("portrange %q is not A-B", q.value)
		}
		x, err1 := strconv.ParseUint(a, 10, 16)
		y, err2 := strconv.ParseUint(b, 10, 16)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("portrange %q is not A-B", q.value)
		}
		lo, hi = uint32(min(x, y)), uint32(max(x, y))
	} else {
		x, err := strconv.ParseUint(q.value, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: port %q (give a number)", errUnsupported, q.value)
		}
		lo, hi = uint32(x), uint32(x)
	}
	match := func(ld func(off uint32) func(g *gen)) cond {
		one := func(off uint32) cond {
			if lo == hi {
				return cmp(ld(off), "==", lo)
			}
			return and(cmp(ld(off), ">=", lo), cmp(ld(off), "<=", hi))
		}
		return dirs(q.dir, one(0), one(2))
	}
	protos := []string{"tcp", "udp", "sctp"}
	switch q.proto {
	case "":
	case "tcp", "udp", "sctp":
		protos = []string{q.proto}
	default:
		return nil, fmt.Errorf("%w: %s port", errUnsupported, q.proto)
	}
	var v4, v6 []cond
	for _, p := range protos {
		v4 = append(v4, cmp(abs(9, 1), "==", ipProto[p]))
		v6 = append(v6, cmp(abs(6, 1), "==", ipProto[p]))
	}
	ip6Port := func(off uint32) func(g *gen) {
		return func(g *gen) { g.emit(bpf.LoadAbsolute{Off: g.link + 40 + off, Size: 2}) }
	}
	ip4Port := func(off uint32) func(g *gen) { return l4(off, 2) }
	return or(
		and(isEther(ethIPv4), or(v4...), notFrag(), match(ip4Port)),
		and(isEther(ethIPv6), or(v6...), match(ip6Port)),
	), nil
}

// assemble resolves labels into relative jumps and ends the program with
// "accept snaplen bytes" and "reject".
func (g *gen) assemble(c cond, snaplen int) ([]bpf.RawInstruction, error) {
	accept, reject := g.newLabel(), g.newLabel()
	if err := c(g, accept, reject); err != nil {
		return nil, err
	}
	g.place(accept)
	g.emit(bpf.RetConstant{Val: uint32(snaplen)})
	g.place(reject)
	g.emit(bpf.RetConstant{Val: 0})
	pos := map[label]int{}
	n := 0
	for _, in := range g.code {
		if in.isMark {
			pos[in.mark] = n
			continue
		}
		n++
	}
	var prog []bpf.Instruction
	i := 0
	for _, in := range g.code {
		switch {
		case in.isMark:
			continue
		case in.jump:
			st, sf := pos[in.t]-(i+1), pos[in.f]-(i+1)
			if st < 0 || sf < 0 || st > 255 || sf > 255 {
				return nil, fmt.Errorf("%w: program too large for 8-bit jumps", errUnsupported)
			}
			prog = append(prog, bpf.JumpIf{Cond: in.cond, Val: in.k, SkipTrue: uint8(st), SkipFalse: uint8(sf)})
		default:
			prog = append(prog, in.ins)
		}
		i++
	}
	if len(prog) > maxInstructions {
		return nil, fmt.Errorf("%w: program of %d instructions", errUnsupported, len(prog))
	}
	return bpf.Assemble(prog)
}

// CompileBuiltin compiles a filter with netdoctor's own compiler. Errors
// wrap ErrBadFilter (not a filter) or errUnsupported (outside the subset).
func CompileBuiltin(expr string, lt layers.LinkType, snaplen int) ([]bpf.RawInstruction, error) {
	g := &gen{}
	switch lt {
	case layers.LinkTypeEthernet:
		g.link = 14
	case layers.LinkTypeRaw:
		g.raw = true
	default:
		return nil, fmt.Errorf("%w: link type %v", errUnsupported, lt)
	}
	n, err := parseFilter(expr)
	if err != nil {
		if errors.Is(err, errUnsupported) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %q: %w", ErrBadFilter, expr, err)
	}
	c, err := g.compile(n)
	if err != nil {
		if errors.Is(err, errUnsupported) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %q: %w", ErrBadFilter, expr, err)
	}
	return g.assemble(c, snaplen)
}
