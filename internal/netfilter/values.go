package netfilter

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// parseAddrOrPrefix parses "10.0.0.1", "10.0.0.0/8" or
// "10.0.0.0/255.0.0.0" (contiguous masks only).
func parseAddrOrPrefix(s string) (netip.Prefix, error) {
	if a, m, ok := strings.Cut(s, "/"); ok && strings.Contains(m, ".") {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return netip.Prefix{}, err
		}
		mask, err := netip.ParseAddr(m)
		if err != nil || !mask.Is4() {
			return netip.Prefix{}, fmt.Errorf("bad mask %q", m)
		}
		b := mask.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		bits := 0
		for v&0x80000000 != 0 {
			bits++
			v <<= 1
		}
		if v != 0 {
			return netip.Prefix{}, fmt.Errorf("non-contiguous mask %q not supported", m)
		}
		return addr.Prefix(bits)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// portRange is an inclusive range of ports.
type portRange struct{ lo, hi uint16 }

func (r portRange) has(p uint16) bool { return p >= r.lo && p <= r.hi }

// parsePortRange parses "80", "80:90", ":90", "80:" (also "80-90").
func parsePortRange(s string) (portRange, error) {
	sep := ":"
	if !strings.Contains(s, ":") && strings.Contains(s, "-") {
		sep = "-"
	}
	a, b, isRange := strings.Cut(s, sep)
	lo, hi := uint64(0), uint64(65535)
	var err error
	if a != "" {
		if lo, err = parsePort(a); err != nil {
			return portRange{}, err
		}
	}
	if !isRange {
		return portRange{uint16(lo), uint16(lo)}, nil
	}
	if b != "" {
		if hi, err = parsePort(b); err != nil {
			return portRange{}, err
		}
	}
	if lo > hi {
		return portRange{}, fmt.Errorf("port range %q is reversed", s)
	}
	return portRange{uint16(lo), uint16(hi)}, nil
}

var serviceNames = map[string]uint64{
	"ssh": 22, "http": 80, "https": 443, "domain": 53, "dns": 53, "ntp": 123, "smtp": 25,
	"ftp": 21, "telnet": 23, "bgp": 179, "snmp": 161, "ldap": 389, "mysql": 3306,
}

func parsePort(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		if n, ok := serviceNames[s]; ok {
			return n, nil
		}
		return 0, fmt.Errorf("bad port %q", s)
	}
	return v, nil
}

// parseMarkMask parses "0x4000", "0x4000/0x4000", "16384".
func parseMarkMask(s string) (val, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	val, err = parseU32(v)
	if err != nil {
		return 0, 0, err
	}
	mask = 0xffffffff
	if hasMask {
		if mask, err = parseU32(m); err != nil {
			return 0, 0, err
		}
	}
	return val, mask, nil
}

func parseU32(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("bad number %q", s)
	}
	return uint32(v), nil
}

// protoNumber maps protocol names to IP protocol numbers.
var protoNumber = map[string]int{
	"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "icmp6": 58,
	"sctp": 132, "udplite": 136, "gre": 47, "esp": 50, "ah": 51, "ipip": 4, "igmp": 2,
}

func protoNum(s string) (int, bool) {
	s = strings.ToLower(s)
	if n, ok := protoNumber[s]; ok {
		return n, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 255 {
		return 0, false
	}
	return n, true
}

func hasPorts(proto string) bool {
	switch proto {
	case "tcp", "udp", "sctp", "udplite":
		return true
	}
	return false
}

// ifaceMatch implements iptables/nft interface names with a trailing "+"
// (iptables) or "*" (nft) wildcard.
func ifaceMatch(pattern, name string) bool {
	if n := len(pattern); n > 0 && (pattern[n-1] == '+' || pattern[n-1] == '*') {
		return name != "" && strings.HasPrefix(name, pattern[:n-1])
	}
	return pattern == name
}

// natTarget parses "10.1.0.5:80", "[fd00::5]:80", "10.1.0.5-10.1.0.9:80-90",
// ":80". It returns the first address and port and whether a range was
// given (the kernel then picks one of them).
func parseNATTarget(s string) (addr netip.Addr, port uint16, ranged bool, err error) {
	host, ports := s, ""
	if strings.HasPrefix(s, "[") {
		i := strings.Index(s, "]")
		if i < 0 {
			return addr, 0, false, fmt.Errorf("bad address %q", s)
		}
		host = s[1:i]
		ports = strings.TrimPrefix(s[i+1:], ":")
	} else if strings.Count(s, ":") == 1 {
		host, ports, _ = strings.Cut(s, ":")
	}
	if host != "" {
		first, last, isRange := strings.Cut(host, "-")
		if addr, err = netip.ParseAddr(first); err != nil {
			return addr, 0, false, fmt.Errorf("bad address %q", first)
		}
		if isRange && last != first {
			ranged = true
		}
	}
	if ports != "" {
		pr, perr := parsePortRange(ports)
		if perr != nil {
			return addr, 0, false, perr
		}
		port = pr.lo
		if pr.hi != pr.lo {
			ranged = true
		}
	}
	return addr, port, ranged, nil
}
