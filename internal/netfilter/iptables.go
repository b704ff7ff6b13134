package netfilter

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// iptables built-in chains and the kernel priority of each table.
var iptTablePriority = map[string]int{
	"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50,
}

var iptBuiltin = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// ParseError is a malformed input, naming the line (1-based) and what was
// wrong with it.
type ParseError struct {
	Input string // "iptables-save", "nft json", "ipset save"
	Line  int
	Msg   string
}

func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("parse %s: line %d: %s", e.Input, e.Line, e.Msg)
	}
	return fmt.Sprintf("parse %s: %s", e.Input, e.Msg)
}

func iptErr(line int, format string, a ...any) error {
	return &ParseError{Input: "iptables-save", Line: line, Msg: fmt.Sprintf(format, a...)}
}

// ParseIptablesSave parses the output of iptables-save or ip6tables-save
// (either backend; with or without -c counters) into a Ruleset.
//
// Equivalent to reading `iptables-save` / `ip6tables-save` output.
func ParseIptablesSave(data []byte) (*Ruleset, error) {
	rs := &Ruleset{Backend: BackendIptables}
	var cur *Table
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimRight(line, "\r \t")
		if len(line) == 0 {
			continue
		}
		switch line[0] {
		case '#':
			s := string(line)
			if strings.Contains(s, "ip6tables-save") {
				rs.Family = "ip6"
			} else if strings.Contains(s, "iptables-save") && rs.Family == "" {
				rs.Family = "ip"
			}
			continue
		case '*':
			if cur != nil {
				return nil, iptErr(lineNo, "table %q starts before COMMIT of table %q", line[1:], cur.Name)
			}
			name := strings.TrimSpace(string(line[1:]))
			if name == "" || strings.ContainsAny(name, " \t") {
				return nil, iptErr(lineNo, "bad table name %q", name)
			}
			cur = &Table{Name: name}
			rs.Tables = append(rs.Tables, cur)
			continue
		case ':':
			if cur == nil {
				return nil, iptErr(lineNo, "chain declaration outside a table")
			}
			if err := parseIptChainDecl(cur, string(line[1:]), lineNo); err != nil {
				return nil, err
			}
			continue
		}
		s := string(line)
		if s == "COMMIT" {
			if cur == nil {
				return nil, iptErr(lineNo, "COMMIT outside a table")
			}
			cur = nil
			continue
		}
		if cur == nil {
			return nil, iptErr(lineNo, "rule outside a table: %q", trunc(s))
		}
		r, chainName, err := parseIptRule(s, lineNo)
		if err != nil {
			return nil, err
		}
		c := cur.Chain(chainName)
		if c == nil {
			return nil, iptErr(lineNo, "rule appends to undeclared chain %q in table %s", chainName, cur.Name)
		}
		r.chain = c
		r.Position = len(c.Rules) + 1
		c.Rules = append(c.Rules, r)
	}
	if cur != nil {
		return nil, iptErr(lineNo, "table %s not terminated by COMMIT", cur.Name)
	}
	if rs.Family == "" {
		rs.Family = guessIptFamily(rs)
	}
	for _, t := range rs.Tables {
		t.Family = rs.Family
	}
	if err := compileIptables(rs); err != nil {
		return nil, err
	}
	return rs, nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

func guessIptFamily(rs *Ruleset) string {
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				for _, o := range r.Basic {
					if (o.Name == "s" || o.Name == "d") && len(o.Values) > 0 {
						if strings.Contains(o.Values[0], ":") {
							return "ip6"
						}
						return "ip"
					}
				}
			}
		}
	}
	return "ip"
}

func parseIptChainDecl(t *Table, s string, line int) error {
	f := strings.Fields(s)
	if len(f) < 2 {
		return iptErr(line, "chain declaration %q: want \":NAME POLICY [packets:bytes]\"", ":"+s)
	}
	c := &Chain{Name: f[0]}
	if f[1] != "-" {
		switch f[1] {
		case "ACCEPT", "DROP", "QUEUE", "RETURN":
		default:
			return iptErr(line, "chain %s: unknown policy %q", f[0], f[1])
		}
		c.Policy = f[1]
		c.Builtin = true
	}
	if len(f) >= 3 {
		cnt := strings.TrimSuffix(strings.TrimPrefix(f[2], "["), "]")
		p, b, ok := strings.Cut(cnt, ":")
		var err1, err2 error
		if ok {
			c.Packets, err1 = strconv.ParseUint(p, 10, 64)
			c.Bytes, err2 = strconv.ParseUint(b, 10, 64)
		}
		if !ok || err1 != nil || err2 != nil || !strings.HasPrefix(f[2], "[") {
			return iptErr(line, "chain %s: bad counters %q", f[0], f[2])
		}
	}
	if c.Builtin {
		c.Hook = strings.ToLower(c.Name)
		c.Priority = iptTablePriority[t.Name]
		if t.Name == "nat" && (c.Name == "INPUT" || c.Name == "POSTROUTING") {
			c.Priority = 100
		}
	}
	if err := t.addChain(c); err != nil {
		return iptErr(line, "%v", err)
	}
	return nil
}

type iptToken struct {
	s      string
	quoted bool
}

// tokenizeIpt splits a rule line like iptables-restore does: on blanks,
// with double-quoted words (backslash escapes \" and \\).
func tokenizeIpt(s string, line int) ([]iptToken, error) {
	var toks []iptToken
	i := 0
	for i < len(s) {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i >= len(s) {
			break
		}
		if s[i] == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				ch := s[i]
				if ch == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					b.WriteByte(s[i+1])
					i += 2
					continue
				}
				if ch == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(ch)
				i++
			}
			if !closed {
				return nil, iptErr(line, "unterminated quote")
			}
			toks = append(toks, iptToken{s: b.String(), quoted: true})
			continue
		}
		j := i
		for j < len(s) && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		toks = append(toks, iptToken{s: s[i:j]})
		i = j
	}
	return toks, nil
}

var iptBasicLong = map[string]string{
	"--source": "s", "--destination": "d", "--in-interface": "i", "--out-interface": "o",
	"--protocol": "p", "--fragment": "f", "--src": "s", "--dst": "d",
}

func isOptTok(t iptToken) bool {
	if t.quoted || len(t.s) < 2 || t.s[0] != '-' {
		return false
	}
	if t.s[1] == '-' {
		return len(t.s) > 2
	}
	// "-s", "-j"... but not negative numbers
	return len(t.s) == 2 && (t.s[1] < '0' || t.s[1] > '9')
}

// parseIptRule parses "-A CHAIN ..." (optionally preceded by "[p:b]").
func parseIptRule(s string, line int) (*Rule, string, error) {
	toks, err := tokenizeIpt(s, line)
	if err != nil {
		return nil, "", err
	}
	if len(toks) > 0 && strings.HasPrefix(toks[0].s, "[") && !toks[0].quoted {
		toks = toks[1:]
	}
	if len(toks) < 2 || (toks[0].s != "-A" && toks[0].s != "--append") {
		return nil, "", iptErr(line, "want \"-A CHAIN ...\", got %q", trunc(s))
	}
	r := &Rule{Line: line, Text: s}
	chain := toks[1].s
	toks = toks[2:]
	var curMatch *Match
	inTarget := false
	neg := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.s == "!" && !t.quoted {
			if neg {
				return nil, "", iptErr(line, "double negation")
			}
			neg = true
			continue
		}
		if !isOptTok(t) {
			return nil, "", iptErr(line, "unexpected word %q", t.s)
		}
		// collect values up to the next option or "!"
		j := i + 1
		for j < len(toks) && !isOptTok(toks[j]) && !(toks[j].s == "!" && !toks[j].quoted) {
			j++
		}
		vals := make([]string, 0, j-i-1)
		for _, v := range toks[i+1 : j] {
			vals = append(vals, v.s)
		}
		name := t.s
		if long, ok := iptBasicLong[name]; ok {
			name = "-" + long
		}
		switch {
		case name == "-m" || name == "--match":
			if neg || len(vals) != 1 {
				return nil, "", iptErr(line, "-m needs exactly one module name")
			}
			if inTarget {
				return nil, "", iptErr(line, "match -m %s after the target", vals[0])
			}
			r.Matches = append(r.Matches, Match{Module: vals[0]})
			curMatch = &r.Matches[len(r.Matches)-1]
		case name == "-j" || name == "--jump" || name == "-g" || name == "--goto":
			if neg || len(vals) != 1 {
				return nil, "", iptErr(line, "%s needs exactly one target", name)
			}
			if r.Target != "" {
				return nil, "", iptErr(line, "two targets")
			}
			r.Target = vals[0]
			r.Goto = name == "-g" || name == "--goto"
			inTarget = true
			curMatch = nil
		case name == "-c" || name == "--set-counters":
			// "-c packets bytes" (iptables-nft -c): ignore
		case len(name) == 2:
			b := name[1:]
			switch b {
			case "s", "d", "i", "o", "p":
				if len(vals) != 1 {
					return nil, "", iptErr(line, "option %s needs one value", t.s)
				}
			case "f":
				if len(vals) != 0 {
					return nil, "", iptErr(line, "option -f takes no value")
				}
			default:
				return nil, "", iptErr(line, "unknown option %s", t.s)
			}
			if inTarget {
				return nil, "", iptErr(line, "option %s after the target", t.s)
			}
			r.Basic = append(r.Basic, Option{Name: b, Negated: neg, Values: vals})
			curMatch = nil
		default:
			o := Option{Name: strings.TrimPrefix(name, "--"), Negated: neg, Values: vals}
			switch {
			case inTarget:
				r.TargetOptions = append(r.TargetOptions, o)
			case curMatch != nil:
				curMatch.Options = append(curMatch.Options, o)
				if curMatch.Module == "comment" && o.Name == "comment" && r.Comment == "" {
					r.Comment = o.Value()
				}
			default:
				// "-p tcp --dport 80": the protocol's match is implicit
				if proto := implicitProto(r.Basic); proto != "" {
					r.Matches = append(r.Matches, Match{Module: proto, Options: []Option{o}})
					curMatch = &r.Matches[len(r.Matches)-1]
					break
				}
				return nil, "", iptErr(line, "option %s outside a match (missing -m)", t.s)
			}
		}
		neg = false
		i = j - 1
	}
	if neg {
		return nil, "", iptErr(line, "dangling \"!\"")
	}
	return r, chain, nil
}

func implicitProto(basic []Option) string {
	for _, o := range basic {
		if o.Name == "p" && !o.Negated && len(o.Values) == 1 {
			switch v := strings.ToLower(o.Values[0]); v {
			case "tcp", "udp", "sctp", "icmp", "icmpv6", "ipv6-icmp", "udplite":
				return v
			}
		}
	}
	return ""
}
