package collect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// nf_tables netlink: the few constants the inventory needs
// (linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h).
const (
	nfnlSubsysNftables = 10
	nftMsgGetTable     = 1
	nftMsgGetChain     = 4
	nftaChainTable     = 1
	nftaChainName      = 3
	nftMsgGetRule      = 7
	nftaTableName      = 1
	nftaRuleTable      = 1
	nftaRuleChain      = 2
	nftaRuleExprs      = 4
	nftaListElem       = 1
	nftaExprName       = 1
	nlaTypeMask        = 0x3fff
)

// nftFamilies names the nf_tables families as nft prints them.
var nftFamilies = map[uint8]string{
	unix.NFPROTO_INET: "inet", unix.NFPROTO_IPV4: "ip", unix.NFPROTO_ARP: "arp",
	unix.NFPROTO_NETDEV: "netdev", unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_IPV6: "ip6",
}

// iptablesNftExprs are the nf_tables expressions iptables-nft (1.8.x)
// builds for rules of its ip/ip6 tables: matches on addresses, ports,
// interfaces and protocols as payload/meta/cmp/bitwise, verdicts as
// immediate, counters, and every other -m/-j as an xtables match or target.
// A rule with any other expression (a set lookup, numgen, ct, fib, dynset,
// a native nat or log...) was written with nft: iptables-nft-save cannot
// print it (1.8.9 prints "ip saddr @set drop" as "-j DROP").
var iptablesNftExprs = map[string]bool{
	"payload": true, "meta": true, "cmp": true, "bitwise": true, "immediate": true,
	"counter": true, "match": true, "target": true,
}

// nftTableRef is a table of the nf_tables inventory.
type nftTableRef struct {
	Family, Name string
}

// compat reports whether the table is one iptables-nft creates (and
// iptables-nft-save / ip6tables-nft-save prints).
func (t nftTableRef) compat() bool {
	if t.Family != "ip" && t.Family != "ip6" {
		return false
	}
	switch t.Name {
	case "filter", "nat", "mangle", "raw", "security":
		return true
	}
	return false
}

func (t nftTableRef) String() string { return t.Family + " " + t.Name }

// nftRuleScan sums up the rules of one table without rendering them.
type nftRuleScan struct {
	Rules  int
	Native int      // rules with an expression iptables-nft does not make
	Exprs  []string // those expressions' names, sorted
	Chains []string // the chains holding them (at most 5)
}

// nftConn is an nf_tables netlink socket opened in the target namespace.
type nftConn struct {
	fd  int
	seq uint32
	buf []byte
}

// openNftConn opens a NETLINK_NETFILTER socket inside nsPath ("" = the
// current namespace); the socket stays in that namespace.
func openNftConn(nsPath string) (*nftConn, error) {
	fd := -1
	err := namespace.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open nf_tables netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("bind nf_tables netlink socket: %w", err)
	}
	return &nftConn{fd: fd, buf: make([]byte, 256<<10)}, nil
}

func (c *nftConn) Close() error { return unix.Close(c.fd) }

// errDumpInterrupted: the ruleset changed during the dump.
var errDumpInterrupted = errors.New("nf_tables dump interrupted by a ruleset change")

// dump sends a dump request and hands each reply's attributes to fn, one
// receive buffer at a time (the replies are never all held at once).
func (c *nftConn) dump(msg uint16, family uint8, attrs []byte, fn func(family uint8, attrs []byte) error) error {
	for try := 0; ; try++ {
		err := c.dumpOnce(msg, family, attrs, fn)
		if errors.Is(err, errDumpInterrupted) && try < 3 {
			continue
		}
		return err
	}
}

func (c *nftConn) dumpOnce(msg uint16, family uint8, attrs []byte, fn func(family uint8, attrs []byte) error) error {
	c.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+4+len(attrs))
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], nfnlSubsysNftables<<8|msg)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], c.seq)
	req[unix.NLMSG_HDRLEN] = family // nfgenmsg: family, version 0, res_id 0
	copy(req[unix.NLMSG_HDRLEN+4:], attrs)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send nf_tables dump request: %w", err)
	}
	var cbErr error
	intr := false
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive nf_tables dump: %w", err)
		}
		b := c.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			typ := binary.NativeEndian.Uint16(b[4:])
			flags := binary.NativeEndian.Uint16(b[6:])
			seq := binary.NativeEndian.Uint32(b[8:])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("receive nf_tables dump: truncated message")
			}
			m := b[unix.NLMSG_HDRLEN:l]
			b = b[min(nlAlign(l), len(b)):]
			if seq != c.seq {
				continue
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch typ {
			case unix.NLMSG_DONE:
				if intr {
					return errDumpInterrupted
				}
				return cbErr
			case unix.NLMSG_ERROR:
				if len(m) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m)); e != 0 {
						return fmt.Errorf("nf_tables dump: %w", unix.Errno(-e))
					}
				}
				return cbErr
			}
			if len(m) < 4 || cbErr != nil {
				continue
			}
			cbErr = fn(m[0], m[4:])
		}
	}
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// nlAttrs calls fn for each netlink attribute in b.
func nlAttrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return
		}
		fn(typ, b[4:l])
		b = b[min(nlAlign(l), len(b)):]
	}
}

// nlString encodes a string attribute.
func nlString(typ uint16, s string) []byte {
	l := 4 + len(s) + 1
	b := make([]byte, nlAlign(l))
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], s)
	return b
}

func cString(v []byte) string {
	if i := slices.Index(v, 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}

// tables lists every nf_tables table (cheap: no chains, no rules).
func (c *nftConn) tables() ([]nftTableRef, error) {
	var out []nftTableRef
	err := c.dump(nftMsgGetTable, unix.AF_UNSPEC, nil, func(family uint8, attrs []byte) error {
		t := nftTableRef{Family: nftFamilies[family]}
		if t.Family == "" {
			t.Family = fmt.Sprintf("family-%d", family)
		}
		nlAttrs(attrs, func(typ uint16, v []byte) {
			if typ == nftaTableName {
				t.Name = cString(v)
			}
		})
		out = append(out, t)
		return nil
	})
	return out, err
}

// chains lists the chain names of every table of a family, by table.
func (c *nftConn) chains(fam uint8) (map[string][]string, error) {
	out := map[string][]string{}
	err := c.dump(nftMsgGetChain, fam, nil, func(_ uint8, attrs []byte) error {
		var tb, name []byte
		nlAttrs(attrs, func(typ uint16, v []byte) {
			switch typ {
			case nftaChainTable:
				tb = v
			case nftaChainName:
				name = v
			}
		})
		t := cString(tb)
		out[t] = append(out[t], cString(name))
		return nil
	})
	return out, err
}

// scanRules counts the rules of a table and those iptables-nft did not
// make, reading only the expression names of each rule. It asks chain by
// chain: the kernel resumes a rule dump by skipping the rules already sent,
// so one dump of a 170,000-rule table costs quadratic time (17 s here),
// while dumps of its 60,000 chains one by one take about a second.
func (c *nftConn) scanRules(t nftTableRef, chains []string) (nftRuleScan, error) {
	var s nftRuleScan
	fam := uint8(unix.NFPROTO_IPV4)
	if t.Family == "ip6" {
		fam = unix.NFPROTO_IPV6
	}
	names := map[string]bool{}
	tableAttr := nlString(nftaRuleTable, t.Name)
	for _, ch := range chains {
		attrs := append(slices.Clip(tableAttr), nlString(nftaRuleChain, ch)...)
		if err := c.scanChain(fam, attrs, &s, names); err != nil {
			return s, fmt.Errorf("chain %s: %w", ch, err)
		}
	}
	for n := range names {
		s.Exprs = append(s.Exprs, n)
	}
	slices.Sort(s.Exprs)
	return s, nil
}

func (c *nftConn) scanChain(fam uint8, filter []byte, s *nftRuleScan, names map[string]bool) error {
	return c.dump(nftMsgGetRule, fam, filter, func(_ uint8, attrs []byte) error {
		s.Rules++
		native := false
		var chain []byte
		nlAttrs(attrs, func(typ uint16, v []byte) {
			switch typ {
			case nftaRuleChain:
				chain = v
			case nftaRuleExprs:
				nlAttrs(v, func(typ uint16, elem []byte) {
					if typ != nftaListElem {
						return
					}
					nlAttrs(elem, func(typ uint16, v []byte) {
						if typ != nftaExprName {
							return
						}
						if n := cString(v); !iptablesNftExprs[n] {
							native = true
							names[n] = true
						}
					})
				})
			}
		})
		if native {
			s.Native++
			if ch := cString(chain); len(s.Chains) < 5 && !slices.Contains(s.Chains, ch) {
				s.Chains = append(s.Chains, ch)
			}
		}
		return nil
	})
}

// mergeNftJSON joins `nft -j list table` documents into one document of
// the shape `nft -j list ruleset` prints: {"nftables": [metainfo, objects
// of every table...]}. Each document is an object with one array; its
// first element (metainfo) is kept from the first document only.
func mergeNftJSON(docs []string) (string, error) {
	var b strings.Builder
	b.WriteString(`{"nftables": [`)
	n := 0
	for i, d := range docs {
		open := strings.IndexByte(d, '[')
		end := strings.LastIndexByte(d, ']')
		if open < 0 || end < open {
			return "", fmt.Errorf("nft -j output is not a {\"nftables\": [...]} document: %.80q", d)
		}
		items := strings.TrimSpace(d[open+1 : end])
		if i > 0 {
			// drop this document's metainfo object
			if !strings.HasPrefix(items, `{"metainfo"`) {
				return "", fmt.Errorf("nft -j output does not start with metainfo: %.80q", items)
			}
			cut := metainfoEnd(items)
			if cut < 0 {
				return "", fmt.Errorf("nft -j output: unterminated metainfo: %.80q", items)
			}
			items = strings.TrimLeft(items[cut:], " \t\r\n,")
		}
		if items == "" {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteString(items)
		n++
	}
	b.WriteString("]}\n")
	return b.String(), nil
}

// metainfoEnd returns the index after the first JSON object of s (which
// starts with '{'), or -1. Strings are skipped with their escapes.
func metainfoEnd(s string) int {
	depth, inStr := 0, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if inStr {
			switch ch {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch ch {
		case '"':
			inStr = true
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}
