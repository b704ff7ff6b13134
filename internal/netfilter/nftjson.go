package netfilter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// NftSet is a named nftables set or map.
type NftSet struct {
	Family, Table, Name string
	// Type is the key type; concatenations have several parts
	// ("ipv4_addr", "inet_proto", "inet_service").
	Type []string
	// Map is the data type of a map ("verdict", "ipv4_addr"...); empty
	// for a plain set.
	Map   string
	Flags []string
	// Elements are the members (and for maps their data).
	Elements []NftElement
	Comment  string

	keys  [][]nval
	exact map[string]int // exact single-valued keys -> element index
}

// NftElement is one element of a set or map. Key holds one string per
// concatenated part ("198.19.0.10", "udp", "53"; prefixes as "10.0.0.0/8",
// ranges as "80-90"); Data is the mapped value for maps ("goto chain",
// "accept", an address).
type NftElement struct {
	Key     []string
	Data    string
	Comment string

	verdict *nftVerdict
}

// NftExpr is one statement of an nftables rule as printed by `nft -j`:
// Kind is its JSON key ("match", "jump", "dnat", "vmap", "counter"...), Raw
// its value.
type NftExpr struct {
	Kind string
	Raw  json.RawMessage
}

func nftErr(line int, format string, a ...any) error {
	return &ParseError{Input: "nft json", Line: line, Msg: fmt.Sprintf(format, a...)}
}

type nftObjTable struct {
	Family string `json:"family"`
	Name   string `json:"name"`
}

type nftObjChain struct {
	Family string          `json:"family"`
	Table  string          `json:"table"`
	Name   string          `json:"name"`
	Type   string          `json:"type"`
	Hook   string          `json:"hook"`
	Prio   json.RawMessage `json:"prio"`
	Policy string          `json:"policy"`
}

type nftObjRule struct {
	Family  string            `json:"family"`
	Table   string            `json:"table"`
	Chain   string            `json:"chain"`
	Handle  int               `json:"handle"`
	Comment string            `json:"comment"`
	Expr    []json.RawMessage `json:"expr"`
}

type nftObjSet struct {
	Family  string            `json:"family"`
	Table   string            `json:"table"`
	Name    string            `json:"name"`
	Type    json.RawMessage   `json:"type"`
	Map     json.RawMessage   `json:"map"`
	Flags   json.RawMessage   `json:"flags"`
	Elem    []json.RawMessage `json:"elem"`
	Comment string            `json:"comment"`
}

// ParseNftJSON parses the output of `nft -j list ruleset` into a Ruleset
// (tables of every family, chains, rules, named sets and maps).
//
// Equivalent to reading `nft -j list ruleset`.
func ParseNftJSON(data []byte) (*Ruleset, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// lineAt counts lines incrementally: objects are visited in order
	var lastOff int64
	lastLine := 1
	lineAt := func(off int64) int {
		if off > int64(len(data)) {
			off = int64(len(data))
		}
		if off < lastOff {
			lastOff, lastLine = 0, 1
		}
		lastLine += bytes.Count(data[lastOff:off], []byte("\n"))
		lastOff = off
		return lastLine
	}
	syntax := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nftErr(lineAt(se.Offset), "invalid JSON: %v", err)
		}
		if errors.Is(err, io.EOF) {
			return nftErr(lineAt(int64(len(data))), "unexpected end of input")
		}
		return nftErr(lineAt(dec.InputOffset()), "invalid JSON: %v", err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nftErr(1, "want a JSON object {\"nftables\": [...]}")
	}
	rs := &Ruleset{Backend: BackendNftables}
	found := false
	type pendingRule struct {
		obj  nftObjRule
		line int
		idx  int
	}
	var rules []pendingRule
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntax(err)
		}
		key, _ := tok.(string)
		if key != "nftables" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, syntax(err)
			}
			continue
		}
		found = true
		tok, err = dec.Token()
		if err != nil {
			return nil, syntax(err)
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return nil, nftErr(lineAt(dec.InputOffset()), "\"nftables\" must be an array")
		}
		idx := 0
		for dec.More() {
			idx++
			line := lineAt(dec.InputOffset())
			var obj map[string]json.RawMessage
			if err := dec.Decode(&obj); err != nil {
				return nil, syntax(err)
			}
			if len(obj) != 1 {
				return nil, nftErr(line, "object %d: want exactly one key, got %d", idx, len(obj))
			}
			for kind, raw := range obj {
				bad := func(err error) error {
					return nftErr(line, "object %d (%s): %v", idx, kind, err)
				}
				switch kind {
				case "table":
					var t nftObjTable
					if err := json.Unmarshal(raw, &t); err != nil {
						return nil, bad(err)
					}
					if t.Name == "" || t.Family == "" {
						return nil, bad(fmt.Errorf("table needs a family and a name"))
					}
					if rs.Table(t.Family, t.Name) != nil {
						return nil, bad(fmt.Errorf("table %s %s listed twice", t.Family, t.Name))
					}
					rs.Tables = append(rs.Tables, &Table{Family: t.Family, Name: t.Name, Sets: map[string]*NftSet{}})
				case "chain":
					var c nftObjChain
					if err := json.Unmarshal(raw, &c); err != nil {
						return nil, bad(err)
					}
					tb := rs.Table(c.Family, c.Table)
					if tb == nil {
						return nil, bad(fmt.Errorf("chain %s in unknown table %s %s", c.Name, c.Family, c.Table))
					}
					ch := &Chain{Name: c.Name, Hook: c.Hook, Type: c.Type, Policy: c.Policy}
					if c.Hook != "" {
						ch.Builtin = true
						if ch.Policy == "" {
							ch.Policy = "accept"
						}
						p, err := nftPriority(c.Prio, c.Family, c.Hook)
						if err != nil {
							return nil, bad(fmt.Errorf("chain %s: %w", c.Name, err))
						}
						ch.Priority = p
					}
					if err := tb.addChain(ch); err != nil {
						return nil, bad(err)
					}
				case "rule":
					var r nftObjRule
					if err := json.Unmarshal(raw, &r); err != nil {
						return nil, bad(err)
					}
					rules = append(rules, pendingRule{obj: r, line: line, idx: idx})
				case "set", "map":
					var s nftObjSet
					if err := json.Unmarshal(raw, &s); err != nil {
						return nil, bad(err)
					}
					tb := rs.Table(s.Family, s.Table)
					if tb == nil {
						return nil, bad(fmt.Errorf("%s %s in unknown table %s %s", kind, s.Name, s.Family, s.Table))
					}
					set, err := parseNftSet(s, kind == "map")
					if err != nil {
						return nil, bad(fmt.Errorf("%s %s: %w", kind, s.Name, err))
					}
					tb.Sets[s.Name] = set
				default:
					// metainfo, element, flowtable, named objects: not needed
				}
			}
		}
		if _, err := dec.Token(); err != nil {
			return nil, syntax(err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, syntax(err)
	}
	if !found {
		return nil, nftErr(1, "no \"nftables\" array (want the output of nft -j list ruleset)")
	}
	for _, pr := range rules {
		r := pr.obj
		tb := rs.Table(r.Family, r.Table)
		if tb == nil {
			return nil, nftErr(pr.line, "object %d (rule): unknown table %s %s", pr.idx, r.Family, r.Table)
		}
		c := tb.Chain(r.Chain)
		if c == nil {
			return nil, nftErr(pr.line, "object %d (rule): unknown chain %s in table %s %s", pr.idx, r.Chain, r.Family, r.Table)
		}
		rule := &Rule{Handle: r.Handle, Comment: r.Comment, Line: pr.line, chain: c, Position: len(c.Rules) + 1}
		for _, e := range r.Expr {
			k, v, err := oneKey(e)
			if err != nil {
				return nil, nftErr(pr.line, "object %d (rule %d in %s): %v", pr.idx, r.Handle, r.Chain, err)
			}
			rule.Exprs = append(rule.Exprs, NftExpr{Kind: k, Raw: v})
		}
		if err := compileNftRule(tb, rule); err != nil {
			return nil, nftErr(pr.line, "object %d (rule %d in %s %s/%s): %v", pr.idx, r.Handle, r.Family, r.Table, r.Chain, err)
		}
		c.Rules = append(c.Rules, rule)
	}
	return rs, nil
}

// nftPriority reads a chain priority: a number, or a name as older nft
// versions print it.
func nftPriority(raw json.RawMessage, family, hook string) (int, error) {
	if len(raw) == 0 {
		return 0, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		v, err := strconv.Atoi(n.String())
		if err != nil {
			return 0, fmt.Errorf("bad priority %s", raw)
		}
		return v, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("bad priority %s", raw)
	}
	base, off := s, 0
	for _, sep := range []string{" + ", " - ", "+", "-"} {
		if i := strings.Index(s, sep); i > 0 {
			base = strings.TrimSpace(s[:i])
			v, err := strconv.Atoi(strings.TrimSpace(s[i+len(sep):]))
			if err != nil {
				return 0, fmt.Errorf("bad priority %q", s)
			}
			off = v
			if strings.Contains(sep, "-") {
				off = -v
			}
			break
		}
	}
	names := map[string]int{"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100, "out": 100}
	if family == "bridge" {
		names = map[string]int{"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
	}
	v, ok := names[base]
	if !ok {
		return 0, fmt.Errorf("unknown priority %q", s)
	}
	return v + off, nil
}

func oneKey(raw json.RawMessage) (string, json.RawMessage, error) {
	var key string
	var val json.RawMessage
	n := 0
	ok := objFields(raw, func(k string, v json.RawMessage) bool {
		n++
		key, val = k, v
		return n < 2
	})
	if !ok {
		return "", nil, fmt.Errorf("expression %s: want an object", trunc(string(raw)))
	}
	if n != 1 {
		return "", nil, fmt.Errorf("expression %s: want exactly one key", trunc(string(raw)))
	}
	return key, val, nil
}

func stringOrList(raw json.RawMessage) []string {
	if len(raw) == 0 {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []string{s}
	}
	var l []string
	_ = json.Unmarshal(raw, &l)
	return l
}

func parseNftSet(s nftObjSet, isMap bool) (*NftSet, error) {
	set := &NftSet{Family: s.Family, Table: s.Table, Name: s.Name, Type: stringOrList(s.Type),
		Flags: stringOrList(s.Flags), Comment: s.Comment, exact: map[string]int{}}
	if isMap {
		set.Map = strings.Join(stringOrList(s.Map), " . ")
		if set.Map == "" {
			return nil, fmt.Errorf("map without a data type")
		}
	}
	for _, e := range s.Elem {
		var keyRaw, dataRaw json.RawMessage = e, nil
		if isMap {
			var pair []json.RawMessage
			if err := json.Unmarshal(e, &pair); err != nil || len(pair) != 2 {
				return nil, fmt.Errorf("map element %s: want [key, value]", trunc(string(e)))
			}
			keyRaw, dataRaw = pair[0], pair[1]
		}
		comment := ""
		keyRaw, comment = unwrapElem(keyRaw)
		key, err := compileNvalTuple(keyRaw, set.Type)
		if err != nil {
			return nil, fmt.Errorf("element %s: %w", trunc(string(keyRaw)), err)
		}
		el := NftElement{Comment: comment}
		for _, k := range key {
			el.Key = append(el.Key, k.String())
		}
		if dataRaw != nil {
			el.Data = renderNft(dataRaw)
			if set.Map == "verdict" {
				v, err := parseVerdict(dataRaw)
				if err != nil {
					return nil, fmt.Errorf("element %s: %w", trunc(string(keyRaw)), err)
				}
				el.verdict = v
			}
		}
		set.Elements = append(set.Elements, el)
		set.keys = append(set.keys, key)
		if k, ok := exactKey(key); ok {
			if _, dup := set.exact[k]; !dup {
				set.exact[k] = len(set.keys) - 1
			}
		}
	}
	return set, nil
}

// unwrapElem strips {"elem": {"val": X, "comment": ...}}.
func unwrapElem(raw json.RawMessage) (json.RawMessage, string) {
	k, v, err := oneKey(raw)
	if err != nil || k != "elem" {
		return raw, ""
	}
	var e struct {
		Val     json.RawMessage `json:"val"`
		Comment string          `json:"comment"`
	}
	if json.Unmarshal(v, &e) != nil || e.Val == nil {
		return raw, ""
	}
	return e.Val, e.Comment
}

// nval is a compiled nftables value: an address range, a number range or
// a string (with an optional trailing "*" wildcard for interface names).
type nval struct {
	kind   uint8 // vAddr, vNum, vStr
	lo, hi netip.Addr
	nlo    uint64
	nhi    uint64
	s      string
}

const (
	vAddr uint8 = iota + 1
	vNum
	vStr
)

func (v nval) String() string {
	switch v.kind {
	case vAddr:
		if v.lo == v.hi {
			return v.lo.String()
		}
		if p, ok := rangePrefix(v.lo, v.hi); ok {
			return p.String()
		}
		return v.lo.String() + "-" + v.hi.String()
	case vNum:
		if v.nlo == v.nhi {
			return strconv.FormatUint(v.nlo, 10)
		}
		return strconv.FormatUint(v.nlo, 10) + "-" + strconv.FormatUint(v.nhi, 10)
	}
	return v.s
}

func exactKey(key []nval) (string, bool) {
	var b strings.Builder
	for _, k := range key {
		switch k.kind {
		case vAddr:
			if k.lo != k.hi {
				return "", false
			}
			b.WriteString(k.lo.String())
		case vNum:
			if k.nlo != k.nhi {
				return "", false
			}
			b.WriteString(strconv.FormatUint(k.nlo, 10))
		default:
			if strings.HasSuffix(k.s, "*") {
				return "", false
			}
			b.WriteString(k.s)
		}
		b.WriteByte('|')
	}
	return b.String(), true
}

func rvKey(vals []rv) string {
	var b strings.Builder
	for _, v := range vals {
		switch v.kind {
		case vAddr:
			b.WriteString(v.a.String())
		case vNum:
			b.WriteString(strconv.FormatUint(v.n, 10))
		default:
			b.WriteString(v.s)
		}
		b.WriteByte('|')
	}
	return b.String()
}

// compileNvalTuple compiles a (possibly concatenated) element key.
func compileNvalTuple(raw json.RawMessage, types []string) ([]nval, error) {
	if k, v, err := oneKey(raw); err == nil && k == "concat" {
		var parts []json.RawMessage
		if err := json.Unmarshal(v, &parts); err != nil {
			return nil, fmt.Errorf("bad concat")
		}
		var out []nval
		for i, p := range parts {
			typ := ""
			if i < len(types) {
				typ = types[i]
			}
			x, err := compileNval(p, typ)
			if err != nil {
				return nil, err
			}
			out = append(out, x)
		}
		return out, nil
	}
	typ := ""
	if len(types) > 0 {
		typ = types[0]
	}
	x, err := compileNval(raw, typ)
	if err != nil {
		return nil, err
	}
	return []nval{x}, nil
}

// symbol tables for the value types that nft prints by name
var nftSymbols = map[string]map[string]uint64{
	"inet_proto": {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136,
		"gre": 47, "esp": 50, "ah": 51, "igmp": 2, "ipip": 4, "ipv6": 41},
	"nf_proto":    {"ipv4": 2, "ipv6": 10},
	"ether_type":  {"ip": 0x0800, "ip6": 0x86dd, "arp": 0x0806, "vlan": 0x8100},
	"icmp_type":   {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5, "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14},
	"icmpv6_type": {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4, "echo-request": 128, "echo-reply": 129, "nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137},
	"tcp_flag":    {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128},
}

// compileNval compiles one value; typ is the nft data type when known
// ("ipv4_addr", "inet_proto", "ifname"...), or a symbol table name.
func compileNval(raw json.RawMessage, typ string) (nval, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nval{}, fmt.Errorf("empty value")
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nval{}, err
		}
		return strNval(s, typ)
	case '{':
		k, v, err := oneKey(raw)
		if err != nil {
			return nval{}, err
		}
		switch k {
		case "prefix":
			var p struct {
				Addr string `json:"addr"`
				Len  int    `json:"len"`
			}
			if err := json.Unmarshal(v, &p); err != nil {
				return nval{}, fmt.Errorf("bad prefix %s", v)
			}
			a, err := netip.ParseAddr(p.Addr)
			if err != nil {
				return nval{}, fmt.Errorf("bad prefix address %q", p.Addr)
			}
			pf, err := a.Unmap().Prefix(p.Len)
			if err != nil {
				return nval{}, fmt.Errorf("bad prefix length %d", p.Len)
			}
			return nval{kind: vAddr, lo: pf.Addr(), hi: lastAddr(pf)}, nil
		case "range":
			var r []json.RawMessage
			if err := json.Unmarshal(v, &r); err != nil || len(r) != 2 {
				return nval{}, fmt.Errorf("bad range %s", v)
			}
			a, err1 := compileNval(r[0], typ)
			b, err2 := compileNval(r[1], typ)
			if err1 != nil || err2 != nil || a.kind != b.kind || a.kind == vStr {
				return nval{}, fmt.Errorf("bad range %s", v)
			}
			if a.kind == vAddr {
				return nval{kind: vAddr, lo: a.lo, hi: b.hi}, nil
			}
			return nval{kind: vNum, nlo: a.nlo, nhi: b.nhi}, nil
		case "elem":
			inner, _ := unwrapElem(raw)
			if bytes.Equal(inner, raw) {
				return nval{}, fmt.Errorf("element without a value")
			}
			return compileNval(inner, typ)
		}
		return nval{}, fmt.Errorf("unsupported value %s", trunc(string(raw)))
	case '[':
		return nval{}, fmt.Errorf("unexpected list %s", trunc(string(raw)))
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return nval{}, fmt.Errorf("bad value %s", trunc(string(raw)))
	}
	u, err := strconv.ParseUint(n.String(), 10, 64)
	if err != nil {
		return nval{}, fmt.Errorf("bad number %s", n)
	}
	return nval{kind: vNum, nlo: u, nhi: u}, nil
}

func strNval(s, typ string) (nval, error) {
	if syms, ok := nftSymbols[typ]; ok {
		if v, ok := syms[s]; ok {
			return nval{kind: vNum, nlo: v, nhi: v}, nil
		}
	}
	switch typ {
	case "ifname", "string", "fib_addrtype", "ct_state", "ct_status", "ct_dir", "pkt_type", "":
	default:
		if strings.HasSuffix(typ, "_addr") || typ == "ipaddr" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nval{}, fmt.Errorf("bad address %q", s)
			}
			a = a.Unmap()
			return nval{kind: vAddr, lo: a, hi: a}, nil
		}
	}
	if typ == "" || strings.HasSuffix(typ, "_addr") {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			return nval{kind: vAddr, lo: a, hi: a}, nil
		}
	}
	if strings.HasPrefix(s, "0x") || (s != "" && s[0] >= '0' && s[0] <= '9' && typ != "ifname") {
		if u, err := strconv.ParseUint(s, 0, 64); err == nil {
			return nval{kind: vNum, nlo: u, nhi: u}, nil
		}
	}
	if typ == "" || typ == "inet_service" {
		if u, ok := serviceNames[s]; ok {
			return nval{kind: vNum, nlo: u, nhi: u}, nil
		}
	}
	if typ == "" || typ == "inet_proto" {
		if n, ok := protoNum(s); ok {
			u := uint64(n)
			return nval{kind: vNum, nlo: u, nhi: u}, nil
		}
	}
	return nval{kind: vStr, s: s}, nil
}

func (v nval) matches(x rv) bool {
	switch v.kind {
	case vAddr:
		return x.kind == vAddr && x.a.Is4() == v.lo.Is4() && x.a.Compare(v.lo) >= 0 && x.a.Compare(v.hi) <= 0
	case vNum:
		return x.kind == vNum && x.n >= v.nlo && x.n <= v.nhi
	default:
		if x.kind != vStr {
			return false
		}
		if strings.HasSuffix(v.s, "*") {
			return x.s != "" && strings.HasPrefix(x.s, v.s[:len(v.s)-1])
		}
		return x.s == v.s
	}
}

// lookup finds the element matching a runtime key.
func (s *NftSet) lookup(key []rv) int {
	if i, ok := s.exact[rvKey(key)]; ok {
		return i
	}
	if len(s.exact) == len(s.keys) {
		return -1
	}
	for i, k := range s.keys {
		if len(k) != len(key) {
			continue
		}
		ok := true
		for j := range k {
			if !k[j].matches(key[j]) {
				ok = false
				break
			}
		}
		if ok {
			return i
		}
	}
	return -1
}

// SortedElements returns the element keys joined by " . ", sorted (for
// stable output and tests).
func (s *NftSet) SortedElements() []string {
	out := make([]string, 0, len(s.Elements))
	for _, e := range s.Elements {
		out = append(out, strings.Join(e.Key, " . "))
	}
	sort.Strings(out)
	return out
}
