package netfilter

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Ipset is one ipset with its members, as `ipset save` prints it.
type Ipset struct {
	Name string
	// Type is the set type, e.g. "hash:ip,port" or "bitmap:port".
	Type string
	// Family is "inet" or "inet6" (hash types).
	Family string
	// Options are the create options after the type ("hashsize 1024"...).
	Options []string
	// Entries are the members as printed ("10.96.0.1,tcp:443"), with
	// their per-entry options dropped ("timeout 0"); NoMatch entries of
	// hash:net types are in NoMatch.
	Entries []string
	NoMatch []string

	dims  []string // "ip", "net", "port", "mac", "iface", "mark", "set"
	elems []ipsetElem
	nomat []ipsetElem
	exact map[string]bool // fast path for ip / ip,port keys
}

type ipsetElem struct {
	pfx   [3]netip.Prefix
	proto [3]int
	ports [3]portRange
	name  [3]string // iface or set name
}

func ipsetErr(line int, format string, a ...any) error {
	return &ParseError{Input: "ipset save", Line: line, Msg: fmt.Sprintf(format, a...)}
}

// ParseIpsetSave parses the output of `ipset save` (or `ipset list -o save`)
// into sets by name.
func ParseIpsetSave(data []byte) (map[string]*Ipset, error) {
	sets := map[string]*Ipset{}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		f := strings.Fields(string(line))
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "create", "-N", "-exist":
			if len(f) < 3 {
				return nil, ipsetErr(lineNo, "want \"create NAME TYPE [options]\"")
			}
			if _, dup := sets[f[1]]; dup {
				return nil, ipsetErr(lineNo, "set %q created twice", f[1])
			}
			s := &Ipset{Name: f[1], Type: f[2], Options: f[3:], Family: "inet"}
			method, dims, ok := strings.Cut(f[2], ":")
			if !ok || (method != "hash" && method != "bitmap" && method != "list") || dims == "" {
				return nil, ipsetErr(lineNo, "set %s: unknown type %q", f[1], f[2])
			}
			s.dims = strings.Split(dims, ",")
			for i := 0; i < len(f)-1; i++ {
				if f[i] == "family" {
					s.Family = f[i+1]
				}
			}
			s.exact = map[string]bool{}
			sets[s.Name] = s
		case "add", "-A":
			if len(f) < 3 {
				return nil, ipsetErr(lineNo, "want \"add NAME ENTRY [options]\"")
			}
			s := sets[f[1]]
			if s == nil {
				return nil, ipsetErr(lineNo, "add to set %q that was not created", f[1])
			}
			nomatch := false
			for _, o := range f[3:] {
				if o == "nomatch" {
					nomatch = true
				}
			}
			e, err := s.parseEntry(f[2])
			if err != nil {
				return nil, ipsetErr(lineNo, "set %s entry %q: %v", s.Name, f[2], err)
			}
			if nomatch {
				s.NoMatch = append(s.NoMatch, f[2])
				s.nomat = append(s.nomat, e)
			} else {
				s.Entries = append(s.Entries, f[2])
				s.elems = append(s.elems, e)
				if k, ok := s.exactKey(e); ok {
					s.exact[k] = true
				}
			}
		default:
			return nil, ipsetErr(lineNo, "unknown command %q", f[0])
		}
	}
	return sets, nil
}

func (s *Ipset) parseEntry(v string) (ipsetElem, error) {
	var e ipsetElem
	parts := strings.Split(v, ",")
	if len(parts) != len(s.dims) || len(parts) > 3 {
		return e, fmt.Errorf("want %d parts for type %s", len(s.dims), s.Type)
	}
	for i, d := range s.dims {
		p := parts[i]
		switch d {
		case "ip", "net":
			if lo, hi, ok := strings.Cut(p, "-"); ok {
				a, e1 := netip.ParseAddr(lo)
				b, e2 := netip.ParseAddr(hi)
				if e1 != nil || e2 != nil || b.Less(a) {
					return e, fmt.Errorf("bad address range %q", p)
				}
				// ranges are expanded by `ipset save` in practice; keep the
				// smallest prefix covering the range only if exact
				pf, ok := rangePrefix(a, b)
				if !ok {
					return e, fmt.Errorf("address range %q is not a prefix", p)
				}
				e.pfx[i] = pf
				continue
			}
			pf, err := parseAddrOrPrefix(p)
			if err != nil {
				return e, err
			}
			e.pfx[i] = pf
		case "port":
			proto, port, ok := strings.Cut(p, ":")
			if !ok {
				proto, port = "tcp", p
				if strings.HasPrefix(s.Type, "bitmap:") {
					proto = "any" // bitmap:port members match tcp, udp, sctp
				}
			}
			if proto == "any" {
				pr, err := parsePortRange(strings.ReplaceAll(port, "-", ":"))
				if err != nil {
					return e, err
				}
				e.ports[i] = pr
				continue
			}
			if strings.HasPrefix(proto, "icmp") {
				// "icmp:8/0": type/code stored in the port range
				e.proto[i], _ = protoNum(proto)
				tc, err := parseIcmpTC(port)
				if err != nil {
					return e, err
				}
				e.ports[i] = portRange{tc, tc}
				continue
			}
			n, okp := protoNum(proto)
			if !okp {
				return e, fmt.Errorf("unknown protocol %q", proto)
			}
			pr, err := parsePortRange(strings.ReplaceAll(port, "-", ":"))
			if err != nil {
				return e, err
			}
			e.proto[i], e.ports[i] = n, pr
		case "iface", "set", "mac", "mark":
			e.name[i] = p
		default:
			return e, fmt.Errorf("unsupported dimension %q", d)
		}
	}
	return e, nil
}

func parseIcmpTC(s string) (uint16, error) {
	t, c, _ := strings.Cut(s, "/")
	tv, err := strconv.ParseUint(t, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("bad icmp type %q", s)
	}
	cv := uint64(0)
	if c != "" {
		if cv, err = strconv.ParseUint(c, 10, 8); err != nil {
			return 0, fmt.Errorf("bad icmp code %q", s)
		}
	}
	return uint16(tv<<8 | cv), nil
}

func rangePrefix(a, b netip.Addr) (netip.Prefix, bool) {
	if a.Is4() != b.Is4() {
		return netip.Prefix{}, false
	}
	for bits := 0; bits <= a.BitLen(); bits++ {
		p := netip.PrefixFrom(a, bits).Masked()
		if p.Addr() != a {
			continue
		}
		if lastAddr(p) == b {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// exactKey is the lookup key of an element made of single addresses and
// single ports only.
func (s *Ipset) exactKey(e ipsetElem) (string, bool) {
	var b strings.Builder
	for i, d := range s.dims {
		switch d {
		case "ip":
			if !e.pfx[i].IsSingleIP() {
				return "", false
			}
			b.WriteString(e.pfx[i].Addr().String())
		case "port":
			if e.ports[i].lo != e.ports[i].hi || e.proto[i] == 0 {
				return "", false
			}
			fmt.Fprintf(&b, "%d:%d", e.proto[i], e.ports[i].lo)
		default:
			return "", false
		}
		b.WriteByte(',')
	}
	return b.String(), true
}

// Contains reports whether the packet's fields selected by flags ("src",
// "dst" per dimension, as in --match-set NAME src,dst) are in the set.
// sets resolves the members of list:set sets.
func (s *Ipset) Contains(p Packet, flags []string, sets map[string]*Ipset) (bool, error) {
	return s.contains(p, flags, sets, 0)
}

func (s *Ipset) contains(p Packet, flags []string, sets map[string]*Ipset, depth int) (bool, error) {
	if depth > 8 {
		return false, fmt.Errorf("ipset %s: list:set nesting too deep", s.Name)
	}
	if len(s.dims) == 1 && s.dims[0] == "set" {
		for _, e := range s.elems {
			m := sets[e.name[0]]
			if m == nil {
				return false, fmt.Errorf("ipset %s: member set %q not known", s.Name, e.name[0])
			}
			ok, err := m.contains(p, flags, sets, depth+1)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	}
	if len(flags) < len(s.dims) {
		return false, fmt.Errorf("ipset %s (%s) needs %d direction flags, got %d", s.Name, s.Type, len(s.dims), len(flags))
	}
	if (s.Family == "inet6") == p.Dst.Is4() && !strings.HasPrefix(s.Type, "bitmap:port") {
		return false, nil
	}
	pn, _ := protoNum(p.Proto)
	field := func(i int) (netip.Addr, uint16, string) {
		if flags[i] == "src" {
			return p.Src, p.SrcPort, p.InIface
		}
		return p.Dst, p.DstPort, p.OutIface
	}
	portOf := func(i int) uint16 {
		_, port, _ := field(i)
		if pn == 1 || pn == 58 {
			return uint16(p.ICMPType)<<8 | uint16(p.ICMPCode)
		}
		return port
	}
	for _, d := range s.dims {
		if d == "mac" || d == "mark" {
			return false, fmt.Errorf("ipset %s: dimension %s is not traced", s.Name, d)
		}
	}
	// exact lookup
	var b strings.Builder
	exactOK := true
	for i, d := range s.dims {
		switch d {
		case "ip":
			a, _, _ := field(i)
			b.WriteString(a.String())
		case "port":
			fmt.Fprintf(&b, "%d:%d", pn, portOf(i))
		default:
			exactOK = false
		}
		b.WriteByte(',')
	}
	if exactOK && s.exact[b.String()] {
		return true, nil
	}
	elemMatch := func(e ipsetElem) bool {
		for i, d := range s.dims {
			a, _, iface := field(i)
			switch d {
			case "ip", "net":
				if !e.pfx[i].Contains(a) {
					return false
				}
			case "port":
				if !hasPorts(p.Proto) && pn != 1 && pn != 58 {
					return false
				}
				if (e.proto[i] != 0 && e.proto[i] != pn) || !e.ports[i].has(portOf(i)) {
					return false
				}
			case "iface":
				if !ifaceMatch(strings.TrimPrefix(e.name[i], "physdev:"), iface) {
					return false
				}
			}
		}
		return true
	}
	for _, e := range s.nomat {
		if elemMatch(e) {
			return false, nil
		}
	}
	if exactOK && len(s.exact) == len(s.elems) {
		return false, nil
	}
	for _, e := range s.elems {
		if elemMatch(e) {
			return true, nil
		}
	}
	return false, nil
}
