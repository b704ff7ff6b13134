package collect

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// maxLine bounds one line of a /proc file; longer lines are an error.
const maxLine = 64 * 1024

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	return sc
}

// ParseConntrackStat parses /proc/net/stat/nf_conntrack (what conntrack -S
// shows): a header naming the columns, then one line of hexadecimal counters
// per possible CPU. Columns are matched by name, so kernels with other
// column sets (searched/delete_list before 5.x, clashres/chainlength after)
// parse alike; unknown columns are ignored.
func ParseConntrackStat(r io.Reader) ([]facts.ConntrackCPUStat, error) {
	sc := newScanner(r)
	var header []string
	var out []facts.ConntrackCPUStat
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if header == nil {
			if fields[0] != "entries" {
				return nil, fmt.Errorf("nf_conntrack stat line %d: header must start with \"entries\", got %q", line, fields[0])
			}
			header = fields
			continue
		}
		if len(fields) != len(header) {
			return nil, fmt.Errorf("nf_conntrack stat line %d: %d columns, header has %d", line, len(fields), len(header))
		}
		st := facts.ConntrackCPUStat{CPU: len(out)}
		for i, f := range fields {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("nf_conntrack stat line %d column %s: %w", line, header[i], err)
			}
			switch header[i] {
			case "entries":
				st.Entries = v
			case "found":
				st.Found = v
			case "new":
				st.New = v
			case "invalid":
				st.Invalid = v
			case "ignore":
				st.Ignore = v
			case "delete":
				st.Delete = v
			case "insert":
				st.Insert = v
			case "insert_failed":
				st.InsertFailed = v
			case "drop":
				st.Drop = v
			case "early_drop":
				st.EarlyDrop = v
			case "icmp_error":
				st.Error = v // conntrack -S calls it "error"
			case "expect_new":
				st.ExpectNew = v
			case "expect_create":
				st.ExpectCreate = v
			case "expect_delete":
				st.ExpectDelete = v
			case "search_restart":
				st.SearchRestart = v
			case "clashres":
				st.ClashResolve = v
			case "chainlength":
				st.ChainTooLong = v
			}
		}
		out = append(out, st)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read nf_conntrack stat: %w", err)
	}
	if header == nil {
		return nil, fmt.Errorf("nf_conntrack stat: empty (no header)")
	}
	return out, nil
}

// ParseSoftnetStat parses /proc/net/softnet_stat: one line per online CPU of
// hexadecimal columns (processed, dropped, time_squeeze, five unused, a
// formerly cpu_collision column, received_rps, flow_limit_count, then on
// newer kernels backlog length and the CPU number). Lines need at least the
// first three columns.
func ParseSoftnetStat(r io.Reader) ([]facts.SoftnetStat, error) {
	sc := newScanner(r)
	var out []facts.SoftnetStat
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 3 {
			return nil, fmt.Errorf("softnet_stat line %d: %d columns, want at least 3", line, len(fields))
		}
		vals := make([]uint64, len(fields))
		for i, f := range fields {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("softnet_stat line %d column %d: %w", line, i+1, err)
			}
			vals[i] = v
		}
		st := facts.SoftnetStat{CPU: len(out), Processed: vals[0], Dropped: vals[1], Squeezed: vals[2]}
		if len(vals) >= 11 {
			st.ReceivedRPS, st.FlowLimit = vals[9], vals[10]
		}
		if len(vals) >= 12 {
			st.BacklogLen = vals[11]
		}
		if len(vals) >= 13 {
			// Offline CPUs have no line: the 13th column names the CPU.
			if vals[12] > 1<<20 {
				return nil, fmt.Errorf("softnet_stat line %d: cpu index %d out of range", line, vals[12])
			}
			st.CPU = int(vals[12])
		}
		out = append(out, st)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read softnet_stat: %w", err)
	}
	return out, nil
}

// tcpStates are the kernel's TCP states (include/net/tcp_states.h) as
// /proc/net/tcp numbers them, spelt as netstat does.
var tcpStates = map[uint64]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
	12: "NEW_SYN_RECV",
}

// ParseProcNetSockets parses /proc/net/tcp, tcp6, udp or udp6 (proto names
// which, and ends in "6" for IPv6). Every socket is returned with its state
// spelt as netstat does; UDP sockets in state 7 (not connected) are "UNCONN",
// as ss shows them.
func ParseProcNetSockets(r io.Reader, proto string) ([]facts.Socket, error) {
	sc := newScanner(r)
	var out []facts.Socket
	line := 0
	udp := strings.HasPrefix(proto, "udp")
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if line == 1 && fields[0] == "sl" {
			continue
		}
		if len(fields) < 10 {
			return nil, fmt.Errorf("/proc/net/%s line %d: %d columns, want at least 10", proto, line, len(fields))
		}
		local, err := parseHexAddr(fields[1])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/%s line %d local address: %w", proto, line, err)
		}
		remote, err := parseHexAddr(fields[2])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/%s line %d remote address: %w", proto, line, err)
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("/proc/net/%s line %d state: %w", proto, line, err)
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/net/%s line %d inode: %w", proto, line, err)
		}
		state, ok := tcpStates[st]
		if !ok {
			state = strconv.FormatUint(st, 10)
		}
		if udp && st == 7 {
			state = "UNCONN"
		}
		s := facts.Socket{Proto: proto, State: state, Local: local, Inode: inode}
		if (!udp || st != 7) && state != "LISTEN" {
			s.Remote = remote
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/net/%s: %w", proto, err)
	}
	return out, nil
}

// parseHexAddr decodes "0100007F:0035" (IPv4) or a 32-digit IPv6 address
// and port. The kernel prints each 32-bit word of the address in host byte
// order, so the words are decoded with the native byte order.
func parseHexAddr(s string) (string, error) {
	addr, port, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("%q: no port", s)
	}
	if len(addr) != 8 && len(addr) != 32 {
		return "", fmt.Errorf("%q: address has %d hex digits, want 8 or 32", s, len(addr))
	}
	raw, err := hex.DecodeString(addr)
	if err != nil {
		return "", fmt.Errorf("%q: %w", s, err)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return "", fmt.Errorf("%q: port: %w", s, err)
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(p, 10)), nil
}

// ParseSubnetEnv parses flannel's /run/flannel/subnet.env (KEY=VALUE lines:
// FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ and their
// IPv6 forms). Unknown keys and comments are ignored; a line without "=" or
// a malformed value is an error naming the line.
func ParseSubnetEnv(r io.Reader) (*facts.FlannelSubnet, error) {
	sc := newScanner(r)
	fs := &facts.FlannelSubnet{}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		text = strings.TrimPrefix(text, "export ")
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fmt.Errorf("subnet.env line %d: %q is not KEY=VALUE", line, text)
		}
		k = strings.TrimSpace(k)
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		switch k {
		case "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET":
			if v == "" {
				continue
			}
			if _, _, err := net.ParseCIDR(v); err != nil {
				return nil, fmt.Errorf("subnet.env line %d: %s: %w", line, k, err)
			}
			switch k {
			case "FLANNEL_NETWORK":
				fs.Network = v
			case "FLANNEL_SUBNET":
				fs.Subnet = v
			case "FLANNEL_IPV6_NETWORK":
				fs.IPv6Network = v
			default:
				fs.IPv6Subnet = v
			}
		case "FLANNEL_MTU":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("subnet.env line %d: FLANNEL_MTU %q is not a size", line, v)
			}
			fs.MTU = n
		case "FLANNEL_IPMASQ":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("subnet.env line %d: FLANNEL_IPMASQ: %w", line, err)
			}
			fs.IPMasq = b
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read subnet.env: %w", err)
	}
	return fs, nil
}
