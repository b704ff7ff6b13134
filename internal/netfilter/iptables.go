package netfilter

import (
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
	// one string for the whole input: rule texts and option values are
	// substrings of it, not copies
	return ParseIptablesSaveString(string(data))
}

// ParseIptablesSaveString is ParseIptablesSave for input already held as
// a string (facts.NodeSnapshot keeps dumps as strings): it does not copy
// the input; rule texts and option values are substrings of it.
func ParseIptablesSaveString(text string) (*Ruleset, error) {
	rs := &Ruleset{Backend: BackendIptables}
	var cur *Table
	lineNo := 0
	var scratch []iptToken
	var last *Chain // rules of a chain come in a row: skip the map lookup
	for len(text) > 0 {
		lineNo++
		var line string
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			line, text = text, ""
		}
		line = strings.TrimRight(line, "\r \t")
		if len(line) == 0 {
			continue
		}
		switch line[0] {
		case '#':
			s := line
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
			name := strings.TrimSpace(line[1:])
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
			if err := parseIptChainDecl(cur, line[1:], lineNo); err != nil {
				return nil, err
			}
			continue
		}
		s := line
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
		r, chainName, err := parseIptRule(s, lineNo, &scratch)
		if err != nil {
			return nil, err
		}
		c := last
		if c == nil || c.Name != chainName || c.table != cur {
			c = cur.Chain(chainName)
			last = c
		}
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
					if (o.Name == "s" || o.Name == "d") && int(o.n) > 0 {
						if strings.Contains(o.Arg, ":") {
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
	s          string
	quoted     bool
	start, end int // byte span in the line (quotes included)
}

// tokenizeIpt splits a rule line like iptables-restore does: on blanks,
// with double-quoted words (backslash escapes \" and \\). Tokens are
// appended to toks[:0].
func tokenizeIpt(s string, line int, toks []iptToken) ([]iptToken, error) {
	toks = toks[:0]
	i := 0
	for i < len(s) {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i >= len(s) {
			break
		}
		start := i
		if s[i] == '"' {
			// fast path: no escapes, the word is a substring
			if j := strings.IndexByte(s[i+1:], '"'); j >= 0 && !strings.Contains(s[i+1:i+1+j], "\\") {
				toks = append(toks, iptToken{s: s[i+1 : i+1+j], quoted: true, start: start, end: i + j + 2})
				i += j + 2
				continue
			}
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
			toks = append(toks, iptToken{s: b.String(), quoted: true, start: start, end: i})
			continue
		}
		j := i
		for j < len(s) && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		toks = append(toks, iptToken{s: s[i:j], start: start, end: j})
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

func isNeg(t iptToken) bool { return t.s == "!" && !t.quoted }

// basicName returns the one-letter name of a basic option token, or "".
func basicName(t string) string {
	if long, ok := iptBasicLong[t]; ok {
		return long
	}
	if len(t) == 2 && t[0] == '-' {
		switch t[1] {
		case 's', 'd', 'i', 'o', 'p', 'f':
			return t[1:]
		}
	}
	return ""
}

// parseIptRule parses "-A CHAIN ..." (optionally preceded by "[p:b]").
// Option values are substrings of s; the rule's options share one array.
func parseIptRule(s string, line int, scratch *[]iptToken) (*Rule, string, error) {
	toks, err := tokenizeIpt(s, line, *scratch)
	*scratch = toks
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
	nBasic, nOther, nMatch := 0, 0, 0
	for _, t := range toks {
		if !isOptTok(t) {
			continue
		}
		switch {
		case basicName(t.s) != "":
			nBasic++
		case t.s == "-m" || t.s == "--match":
			nMatch++
		case t.s == "-j" || t.s == "--jump" || t.s == "-g" || t.s == "--goto" || t.s == "-c" || t.s == "--set-counters":
		default:
			nOther++
		}
	}
	backing := make([]Option, nBasic+nOther)
	bi, oi := 0, nBasic
	if nMatch > 0 {
		r.Matches = make([]Match, 0, nMatch)
	}
	var curMatch *Match
	curStart, targetStart := 0, -1
	inTarget := false
	neg := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if isNeg(t) {
			if neg {
				return nil, "", iptErr(line, "double negation")
			}
			neg = true
			continue
		}
		if !isOptTok(t) {
			return nil, "", iptErr(line, "unexpected word %q", t.s)
		}
		// the values run up to the next option or "!"
		j := i + 1
		for j < len(toks) && !isOptTok(toks[j]) && !isNeg(toks[j]) {
			j++
		}
		nv := j - i - 1
		val := ""
		switch {
		case nv == 1:
			val = toks[i+1].s
		case nv > 1:
			quoted := false
			for _, v := range toks[i+1 : j] {
				quoted = quoted || v.quoted
			}
			if quoted {
				parts := make([]string, 0, nv)
				for _, v := range toks[i+1 : j] {
					parts = append(parts, v.s)
				}
				val = strings.Join(parts, " ")
			} else {
				val = s[toks[i+1].start:toks[j-1].end]
			}
		}
		name := t.s
		switch b := basicName(name); {
		case name == "-m" || name == "--match":
			if neg || nv != 1 {
				return nil, "", iptErr(line, "-m needs exactly one module name")
			}
			if inTarget {
				return nil, "", iptErr(line, "match -m %s after the target", val)
			}
			r.Matches = append(r.Matches, Match{Module: val})
			curMatch = &r.Matches[len(r.Matches)-1]
			curStart = oi
		case name == "-j" || name == "--jump" || name == "-g" || name == "--goto":
			if neg || nv != 1 {
				return nil, "", iptErr(line, "%s needs exactly one target", name)
			}
			if r.Target != "" {
				return nil, "", iptErr(line, "two targets")
			}
			r.Target = val
			r.Goto = name == "-g" || name == "--goto"
			inTarget = true
			targetStart = oi
			curMatch = nil
		case name == "-c" || name == "--set-counters":
			// "-c packets bytes" (iptables-nft -c): ignore
		case b != "":
			if b == "f" {
				if nv != 0 {
					return nil, "", iptErr(line, "option -f takes no value")
				}
			} else if nv != 1 {
				return nil, "", iptErr(line, "option %s needs one value", t.s)
			}
			if inTarget {
				return nil, "", iptErr(line, "option %s after the target", t.s)
			}
			backing[bi] = Option{Name: b, Negated: neg, n: uint8(min(nv, 255)), Arg: val}
			bi++
			curMatch = nil
		case len(name) == 2:
			return nil, "", iptErr(line, "unknown option %s", t.s)
		default:
			o := Option{Name: strings.TrimPrefix(name, "--"), Negated: neg, n: uint8(min(nv, 255)), Arg: val}
			switch {
			case inTarget:
				backing[oi] = o
				oi++
			case curMatch != nil:
				backing[oi] = o
				oi++
				curMatch.Options = backing[curStart:oi:oi]
				if curMatch.Module == "comment" && o.Name == "comment" && r.Comment == "" {
					r.Comment = o.Arg
				}
			default:
				// "-p tcp --dport 80": the protocol's match is implicit
				if proto := implicitProto(backing[:bi]); proto != "" {
					r.Matches = append(r.Matches, Match{Module: proto})
					curMatch = &r.Matches[len(r.Matches)-1]
					curStart = oi
					backing[oi] = o
					oi++
					curMatch.Options = backing[curStart:oi:oi]
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
	if bi > 0 {
		r.Basic = backing[:bi:bi]
	}
	if targetStart >= 0 && targetStart < oi {
		r.TargetOptions = backing[targetStart:oi:oi]
	}
	return r, chain, nil
}

func implicitProto(basic []Option) string {
	for _, o := range basic {
		if o.Name == "p" && !o.Negated && o.n == 1 {
			switch v := strings.ToLower(o.Arg); v {
			case "tcp", "udp", "sctp", "icmp", "icmpv6", "ipv6-icmp", "udplite":
				return v
			}
		}
	}
	return ""
}
