package collect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// IPVS generic netlink protocol, from include/uapi/linux/ip_vs.h.
const (
	ipvsGenlName    = "IPVS"
	ipvsGenlVersion = 1

	ipvsCmdGetService = 4
	ipvsCmdGetDest    = 8

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrNetmask   = 9

	ipvsDestAttrAddr      = 1
	ipvsDestAttrPort      = 2
	ipvsDestAttrFwdMethod = 3
	ipvsDestAttrWeight    = 4
	ipvsDestAttrUThresh   = 5
	ipvsDestAttrLThresh   = 6
	ipvsDestAttrAddrAF    = 11

	ipvsSvcFlagPersistent = 0x1
	ipvsConnFwdMask       = 0x7
)

// KubeIPVSDevice is the dummy interface kube-proxy's IPVS mode binds every
// Service address to.
const KubeIPVSDevice = "kube-ipvs0"

// collectIPVS dumps the IPVS virtual and real servers through generic
// netlink from a thread inside the target namespace (what ipvsadm -Sn
// shows). A kernel without IPVS has no "IPVS" family: the section is then
// skipped, not failed.
func (c *collector) collectIPVS() *facts.IPVS {
	var out *facts.IPVS
	err := namespace.Do(c.nsPath, func() error {
		// List the families rather than ask for IPVS by name: a lookup by
		// name makes the kernel load the ip_vs module, and a diagnosis must
		// not change the node.
		fams, err := netlink.GenlFamilyList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("list generic netlink families: %w", err)
		}
		var fam *netlink.GenlFamily
		for _, f := range fams {
			if f.Name == ipvsGenlName {
				fam = f
			}
		}
		if fam == nil {
			c.skip(SectionIPVS, "the kernel has no IPVS (generic netlink family IPVS not found: module ip_vs not loaded)")
			return nil
		}
		svcMsgs, err := ipvsRequest(fam.ID, ipvsCmdGetService, nil)
		if err != nil {
			return fmt.Errorf("dump IPVS services: %w", err)
		}
		out = &facts.IPVS{Services: []facts.IPVSService{}}
		for _, m := range svcMsgs {
			svc, key, err := decodeIPVSService(m)
			if err != nil {
				return err
			}
			destMsgs, err := ipvsRequest(fam.ID, ipvsCmdGetDest, key)
			if err != nil {
				return fmt.Errorf("dump IPVS destinations of %s: %w", ipvsServiceName(svc), err)
			}
			for _, dm := range destMsgs {
				d, err := decodeIPVSDest(dm)
				if err != nil {
					return fmt.Errorf("IPVS service %s: %w", ipvsServiceName(svc), err)
				}
				svc.Destinations = append(svc.Destinations, d)
			}
			out.Services = append(out.Services, svc)
		}
		return nil
	})
	if err != nil {
		c.fail(SectionIPVS, fmt.Errorf("%s: %w", c.nsLabel(), err))
		return nil
	}
	return out
}

// ipvsRequest sends one IPVS dump request; svcKey, when given, is the
// nested IPVS_CMD_ATTR_SERVICE naming the service (for GET_DEST).
func ipvsRequest(family uint16, cmd uint8, svcKey []byte) ([][]byte, error) {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_DUMP)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: ipvsGenlVersion})
	if svcKey != nil {
		req.AddData(nl.NewRtAttr(ipvsCmdAttrService, svcKey))
	}
	return req.Execute(unix.NETLINK_GENERIC, 0)
}

// ipvsServiceName renders a service as ipvsadm does: TCP 10.96.0.1:443.
func ipvsServiceName(s facts.IPVSService) string {
	if s.FWMark != 0 {
		return "FWM " + strconv.FormatUint(uint64(s.FWMark), 10)
	}
	return strings.ToUpper(s.Protocol) + " " + net.JoinHostPort(s.Address, strconv.Itoa(s.Port))
}

// genlPayload strips the 4-byte generic netlink header of a message.
func genlPayload(msg []byte) ([]byte, error) {
	if len(msg) < nl.SizeofGenlmsg {
		return nil, fmt.Errorf("IPVS message too short (%d bytes)", len(msg))
	}
	return msg[nl.SizeofGenlmsg:], nil
}

// nlAttr is one netlink attribute: its type (flags masked off) and payload.
type nlAttr struct {
	typ uint16
	val []byte
}

// parseAttrs splits a run of netlink attributes, checking every length (the
// input may come from a file, not only from the kernel).
func parseAttrs(b []byte) ([]nlAttr, error) {
	var out []nlAttr
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%d trailing bytes after the last attribute", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return nil, fmt.Errorf("attribute length %d with %d bytes left", l, len(b))
		}
		out = append(out, nlAttr{typ: binary.NativeEndian.Uint16(b[2:]) & nl.NLA_TYPE_MASK, val: b[4:l]})
		next := min((l+3)&^3, len(b))
		b = b[next:]
	}
	return out, nil
}

// nestedAttr finds the nested attribute typ among the top-level attributes
// of a generic netlink message and returns its attributes by type, and its
// raw payload.
func nestedAttr(msg []byte, typ uint16, what string) (map[uint16][]byte, []byte, error) {
	payload, err := genlPayload(msg)
	if err != nil {
		return nil, nil, err
	}
	attrs, err := parseAttrs(payload)
	if err != nil {
		return nil, nil, fmt.Errorf("parse IPVS %s message: %w", what, err)
	}
	for _, a := range attrs {
		if a.typ != typ {
			continue
		}
		inner, err := parseAttrs(a.val)
		if err != nil {
			return nil, nil, fmt.Errorf("parse IPVS %s attributes: %w", what, err)
		}
		m := map[uint16][]byte{}
		for _, ia := range inner {
			m[ia.typ] = ia.val
		}
		return m, a.val, nil
	}
	return nil, nil, fmt.Errorf("IPVS %s message has no %s attribute", what, what)
}

func attrU16(m map[uint16][]byte, t uint16) (uint16, bool) {
	if v, ok := m[t]; ok && len(v) >= 2 {
		return binary.NativeEndian.Uint16(v), true
	}
	return 0, false
}

func attrU32(m map[uint16][]byte, t uint16) (uint32, bool) {
	if v, ok := m[t]; ok && len(v) >= 4 {
		return binary.NativeEndian.Uint32(v), true
	}
	return 0, false
}

// attrPort reads a port attribute (network byte order).
func attrPort(m map[uint16][]byte, t uint16) int {
	if v, ok := m[t]; ok && len(v) >= 2 {
		return int(binary.BigEndian.Uint16(v))
	}
	return 0
}

// attrAddr reads a union nf_inet_addr (16 bytes; IPv4 in the first 4).
func attrAddr(m map[uint16][]byte, t uint16, af uint16) (string, error) {
	v, ok := m[t]
	if !ok {
		return "", nil
	}
	switch af {
	case unix.AF_INET:
		if len(v) < 4 {
			return "", fmt.Errorf("IPv4 address attribute of %d bytes", len(v))
		}
		return net.IP(v[:4]).String(), nil
	case unix.AF_INET6:
		if len(v) < 16 {
			return "", fmt.Errorf("IPv6 address attribute of %d bytes", len(v))
		}
		return net.IP(v[:16]).String(), nil
	}
	return "", fmt.Errorf("address family %d", af)
}

func ipProtoName(p uint16) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// decodeIPVSService decodes an IPVS_CMD_NEW_SERVICE message (a reply to
// GET_SERVICE). It also returns the nested service attribute, which names
// the service in a GET_DEST request.
func decodeIPVSService(msg []byte) (facts.IPVSService, []byte, error) {
	m, raw, err := nestedAttr(msg, ipvsCmdAttrService, "service")
	if err != nil {
		return facts.IPVSService{}, nil, err
	}
	af, ok := attrU16(m, ipvsSvcAttrAF)
	if !ok {
		return facts.IPVSService{}, nil, fmt.Errorf("IPVS service without address family")
	}
	svc := facts.IPVSService{Destinations: []facts.IPVSDestination{}}
	if fw, ok := attrU32(m, ipvsSvcAttrFWMark); ok && fw != 0 {
		svc.FWMark = fw
	} else {
		p, _ := attrU16(m, ipvsSvcAttrProtocol)
		svc.Protocol = ipProtoName(p)
		if svc.Address, err = attrAddr(m, ipvsSvcAttrAddr, af); err != nil {
			return facts.IPVSService{}, nil, fmt.Errorf("IPVS service address: %w", err)
		}
		svc.Port = attrPort(m, ipvsSvcAttrPort)
	}
	if s, ok := m[ipvsSvcAttrSchedName]; ok {
		svc.Scheduler = strings.TrimRight(string(s), "\x00")
	}
	if fl, ok := m[ipvsSvcAttrFlags]; ok && len(fl) >= 4 && binary.NativeEndian.Uint32(fl)&ipvsSvcFlagPersistent != 0 {
		t, _ := attrU32(m, ipvsSvcAttrTimeout)
		svc.Persistent = int(t)
		if nm, ok := attrU32(m, ipvsSvcAttrNetmask); ok {
			if af == unix.AF_INET {
				var b [4]byte
				binary.NativeEndian.PutUint32(b[:], nm) // the kernel stores a __be32 mask
				if mask := net.IP(b[:]).String(); mask != "255.255.255.255" {
					svc.Netmask = mask
				}
			} else if nm != 128 {
				svc.Netmask = strconv.Itoa(int(nm))
			}
		}
	}
	return svc, raw, nil
}

func fwdMethodName(m uint32) string {
	switch m & ipvsConnFwdMask {
	case 0:
		return "masq"
	case 1:
		return "local"
	case 2:
		return "tunnel"
	case 3:
		return "route"
	case 4:
		return "bypass"
	}
	return strconv.Itoa(int(m))
}

// decodeIPVSDest decodes an IPVS_CMD_NEW_DEST message (a reply to GET_DEST).
func decodeIPVSDest(msg []byte) (facts.IPVSDestination, error) {
	m, _, err := nestedAttr(msg, ipvsCmdAttrDest, "destination")
	if err != nil {
		return facts.IPVSDestination{}, err
	}
	af, ok := attrU16(m, ipvsDestAttrAddrAF)
	if !ok {
		// Kernels before 4.x have no per-destination family: guess from the address.
		af = unix.AF_INET
		if v := m[ipvsDestAttrAddr]; len(v) >= 16 && !allZero(v[4:16]) {
			af = unix.AF_INET6
		}
	}
	addr, err := attrAddr(m, ipvsDestAttrAddr, af)
	if err != nil {
		return facts.IPVSDestination{}, fmt.Errorf("IPVS destination address: %w", err)
	}
	d := facts.IPVSDestination{Address: addr, Port: attrPort(m, ipvsDestAttrPort)}
	if fw, ok := attrU32(m, ipvsDestAttrFwdMethod); ok {
		d.Forward = fwdMethodName(fw)
	}
	if w, ok := attrU32(m, ipvsDestAttrWeight); ok {
		d.Weight = int(int32(w))
	}
	if u, ok := attrU32(m, ipvsDestAttrUThresh); ok {
		d.UpperThreshold = int(u)
	}
	if l, ok := attrU32(m, ipvsDestAttrLThresh); ok {
		d.LowerThreshold = int(l)
	}
	return d, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// withKubeIPVSAddresses adds the addresses of kube-ipvs0 to the IPVS facts
// (creating them when the IPVS dump itself was skipped or failed).
func withKubeIPVSAddresses(ipvs *facts.IPVS, addrs []facts.Address) *facts.IPVS {
	var kaddrs []string
	for _, a := range addrs {
		if a.Link == KubeIPVSDevice {
			kaddrs = append(kaddrs, a.CIDR)
		}
	}
	if len(kaddrs) == 0 {
		return ipvs
	}
	if ipvs == nil {
		ipvs = &facts.IPVS{Services: []facts.IPVSService{}}
	}
	ipvs.KubeIPVSAddresses = kaddrs
	return ipvs
}

// ParseIpvsadmSave parses the output of ipvsadm -Sn (ipvsadm-save -n):
// "-A" lines add a virtual server, "-a" lines a real server of the one
// named. Used for offline bundles and nodes where only the text exists.
func ParseIpvsadmSave(r io.Reader) ([]facts.IPVSService, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	var out []facts.IPVSService
	index := map[string]int{}
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] != "-A" && f[0] != "-a" {
			return nil, fmt.Errorf("ipvsadm line %d: unknown command %q (want -A or -a)", line, f[0])
		}
		svc := facts.IPVSService{Destinations: []facts.IPVSDestination{}}
		var dest *facts.IPVSDestination
		var key string
		for i := 1; i < len(f); i++ {
			opt := f[i]
			val := func() (string, error) {
				if i+1 >= len(f) {
					return "", fmt.Errorf("ipvsadm line %d: %s needs a value", line, opt)
				}
				i++
				return f[i], nil
			}
			num := func() (int, error) {
				v, err := val()
				if err != nil {
					return 0, err
				}
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return 0, fmt.Errorf("ipvsadm line %d: %s %q is not a number", line, opt, v)
				}
				return n, nil
			}
			switch opt {
			case "-t", "--tcp-service", "-u", "--udp-service", "--sctp-service":
				v, err := val()
				if err != nil {
					return nil, err
				}
				host, port, err := splitHostPort(v)
				if err != nil {
					return nil, fmt.Errorf("ipvsadm line %d: service %q: %w", line, v, err)
				}
				svc.Address, svc.Port = host, port
				switch opt {
				case "-t", "--tcp-service":
					svc.Protocol = "tcp"
				case "-u", "--udp-service":
					svc.Protocol = "udp"
				default:
					svc.Protocol = "sctp"
				}
				key = svc.Protocol + " " + v
			case "-f", "--fwmark-service":
				v, err := val()
				if err != nil {
					return nil, err
				}
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil || n == 0 {
					return nil, fmt.Errorf("ipvsadm line %d: fwmark %q is not a number from 1 to 4294967295", line, v)
				}
				svc.FWMark = uint32(n)
				key = "fwm " + strconv.FormatUint(n, 10)
			case "-s", "--scheduler":
				v, err := val()
				if err != nil {
					return nil, err
				}
				svc.Scheduler = v
			case "-p", "--persistent":
				n, err := num()
				if err != nil {
					return nil, err
				}
				svc.Persistent = n
			case "-M", "--netmask":
				v, err := val()
				if err != nil {
					return nil, err
				}
				svc.Netmask = v
			case "-r", "--real-server":
				v, err := val()
				if err != nil {
					return nil, err
				}
				host, port, err := splitHostPort(v)
				if err != nil {
					return nil, fmt.Errorf("ipvsadm line %d: real server %q: %w", line, v, err)
				}
				dest = &facts.IPVSDestination{Address: host, Port: port, Weight: 1, Forward: "route"}
			case "-m", "--masquerading":
				if dest == nil {
					return nil, fmt.Errorf("ipvsadm line %d: %s before -r", line, opt)
				}
				dest.Forward = "masq"
			case "-g", "--gatewaying":
				if dest == nil {
					return nil, fmt.Errorf("ipvsadm line %d: %s before -r", line, opt)
				}
				dest.Forward = "route"
			case "-i", "--ipip":
				if dest == nil {
					return nil, fmt.Errorf("ipvsadm line %d: %s before -r", line, opt)
				}
				dest.Forward = "tunnel"
			case "-w", "--weight", "-x", "--u-threshold", "-y", "--l-threshold":
				n, err := num()
				if err != nil {
					return nil, err
				}
				if dest == nil {
					return nil, fmt.Errorf("ipvsadm line %d: %s before -r", line, opt)
				}
				switch opt {
				case "-w", "--weight":
					dest.Weight = n
				case "-x", "--u-threshold":
					dest.UpperThreshold = n
				default:
					dest.LowerThreshold = n
				}
			case "-b", "--sched-flags", "--pe", "--tun-type", "--tun-port":
				if _, err := val(); err != nil {
					return nil, err
				}
			case "-o", "--ops", "--tun-nocsum", "--tun-csum", "--tun-remcsum":
			default:
				return nil, fmt.Errorf("ipvsadm line %d: unknown option %q", line, opt)
			}
		}
		if key == "" {
			return nil, fmt.Errorf("ipvsadm line %d: no service (-t, -u, --sctp-service or -f)", line)
		}
		if f[0] == "-A" {
			if _, dup := index[key]; dup {
				return nil, fmt.Errorf("ipvsadm line %d: service %s added twice", line, key)
			}
			if dest != nil {
				return nil, fmt.Errorf("ipvsadm line %d: -r in a -A line", line)
			}
			index[key] = len(out)
			out = append(out, svc)
			continue
		}
		if dest == nil {
			return nil, fmt.Errorf("ipvsadm line %d: -a without -r", line)
		}
		i, ok := index[key]
		if !ok {
			return nil, fmt.Errorf("ipvsadm line %d: real server for unknown service %s", line, key)
		}
		out[i].Destinations = append(out[i].Destinations, *dest)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read ipvsadm output: %w", err)
	}
	return out, nil
}

// splitHostPort splits "10.0.0.1:80" or "[fd00::1]:80" and checks both parts.
func splitHostPort(s string) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", 0, fmt.Errorf("%q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", port, err)
	}
	return ip.String(), int(p), nil
}
