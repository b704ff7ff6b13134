package collect

import (
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// nla encodes one netlink attribute as the kernel does (length, type,
// payload padded to 4 bytes).
func nla(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u16(v uint16) []byte { b := make([]byte, 2); binary.NativeEndian.PutUint16(b, v); return b }
func u32(v uint32) []byte { b := make([]byte, 4); binary.NativeEndian.PutUint32(b, v); return b }
func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}

// inetAddr is a union nf_inet_addr: 16 bytes, IPv4 in the first four.
func inetAddr(s string) []byte {
	ip := net.ParseIP(s)
	b := make([]byte, 16)
	if v4 := ip.To4(); v4 != nil {
		copy(b, v4)
	} else {
		copy(b, ip.To16())
	}
	return b
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// genlMsg is a generic netlink message body: the 4-byte genl header
// (command, version, reserved) and one nested attribute (with NLA_F_NESTED,
// as nla_nest_start sets it).
func genlMsg(cmd uint8, nestType uint16, attrs ...[]byte) []byte {
	return concat([]byte{cmd, 1, 0, 0}, nla(nestType|unix.NLA_F_NESTED, concat(attrs...)))
}

// serviceMsg builds an IPVS_CMD_NEW_SERVICE message the way
// ip_vs_genl_fill_service (net/netfilter/ipvs/ip_vs_ctl.c) lays it out.
func serviceMsg(af uint16, proto uint16, addr string, port uint16, fwmark uint32, sched string, flags, timeout, netmask uint32) []byte {
	attrs := [][]byte{nla(ipvsSvcAttrAF, u16(af))}
	if fwmark != 0 {
		attrs = append(attrs, nla(ipvsSvcAttrFWMark, u32(fwmark)))
	} else {
		attrs = append(attrs, nla(ipvsSvcAttrProtocol, u16(proto)), nla(ipvsSvcAttrAddr, inetAddr(addr)), nla(ipvsSvcAttrPort, be16(port)))
	}
	attrs = append(attrs,
		nla(ipvsSvcAttrSchedName, append([]byte(sched), 0)),
		nla(ipvsSvcAttrFlags, concat(u32(flags), u32(0xffffffff))),
		nla(ipvsSvcAttrTimeout, u32(timeout)),
		nla(ipvsSvcAttrNetmask, u32(netmask)),
		nla(10|unix.NLA_F_NESTED, nla(1, u32(7))), // IPVS_SVC_ATTR_STATS with one counter
	)
	return genlMsg(1, ipvsCmdAttrService, attrs...)
}

// destMsg builds an IPVS_CMD_NEW_DEST message as ip_vs_genl_fill_dest does.
func destMsg(af uint16, addr string, port uint16, fwd, weight, uthresh, lthresh uint32) []byte {
	return genlMsg(5, ipvsCmdAttrDest,
		nla(ipvsDestAttrAddr, inetAddr(addr)),
		nla(ipvsDestAttrPort, be16(port)),
		nla(ipvsDestAttrFwdMethod, u32(fwd)),
		nla(ipvsDestAttrWeight, u32(weight)),
		nla(13, []byte{0}), // TUN_TYPE
		nla(14, be16(0)),   // TUN_PORT
		nla(15, u16(0)),    // TUN_FLAGS
		nla(ipvsDestAttrUThresh, u32(uthresh)),
		nla(ipvsDestAttrLThresh, u32(lthresh)),
		nla(7, u32(3)), // ACTIVE_CONNS
		nla(ipvsDestAttrAddrAF, u16(af)),
	)
}

func TestDecodeIPVS(t *testing.T) {
	mask := binary.NativeEndian.Uint32(net.IPv4(255, 255, 255, 0).To4())
	full := binary.NativeEndian.Uint32(net.IPv4(255, 255, 255, 255).To4())
	tests := []struct {
		name  string
		svc   []byte
		dests [][]byte
		want  facts.IPVSService
	}{
		{
			name:  "tcp clusterip masq",
			svc:   serviceMsg(unix.AF_INET, unix.IPPROTO_TCP, "198.19.0.1", 443, 0, "rr", 0x2, 0, full),
			dests: [][]byte{destMsg(unix.AF_INET, "198.18.0.2", 6443, 0, 1, 0, 0)},
			want: facts.IPVSService{Protocol: "tcp", Address: "198.19.0.1", Port: 443, Scheduler: "rr",
				Destinations: []facts.IPVSDestination{{Address: "198.18.0.2", Port: 6443, Weight: 1, Forward: "masq"}}},
		},
		{
			name: "udp persistent with netmask, two endpoints",
			svc:  serviceMsg(unix.AF_INET, unix.IPPROTO_UDP, "198.19.0.10", 53, 0, "wrr", 0x1|0x2, 10800, mask),
			dests: [][]byte{
				destMsg(unix.AF_INET, "198.18.130.2", 53, 0, 2, 100, 10),
				destMsg(unix.AF_INET, "198.18.131.2", 53, 3, 0, 0, 0),
			},
			want: facts.IPVSService{Protocol: "udp", Address: "198.19.0.10", Port: 53, Scheduler: "wrr", Persistent: 10800, Netmask: "255.255.255.0",
				Destinations: []facts.IPVSDestination{
					{Address: "198.18.130.2", Port: 53, Weight: 2, Forward: "masq", UpperThreshold: 100, LowerThreshold: 10},
					{Address: "198.18.131.2", Port: 53, Weight: 0, Forward: "route"},
				}},
		},
		{
			name:  "ipv6 sctp tunnel",
			svc:   serviceMsg(unix.AF_INET6, unix.IPPROTO_SCTP, "fd00:198::1", 80, 0, "lc", 0x2, 0, 128),
			dests: [][]byte{destMsg(unix.AF_INET6, "fd00:18::2", 8080, 2, 1, 0, 0)},
			want: facts.IPVSService{Protocol: "sctp", Address: "fd00:198::1", Port: 80, Scheduler: "lc",
				Destinations: []facts.IPVSDestination{{Address: "fd00:18::2", Port: 8080, Weight: 1, Forward: "tunnel"}}},
		},
		{
			name: "fwmark",
			svc:  serviceMsg(unix.AF_INET, 0, "", 0, 100, "sh", 0x2, 0, full),
			want: facts.IPVSService{FWMark: 100, Scheduler: "sh", Destinations: []facts.IPVSDestination{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, key, err := decodeIPVSService(tt.svc)
			if err != nil {
				t.Fatal(err)
			}
			if len(key) == 0 {
				t.Fatal("no service key for the GET_DEST request")
			}
			for _, dm := range tt.dests {
				d, err := decodeIPVSDest(dm)
				if err != nil {
					t.Fatal(err)
				}
				got.Destinations = append(got.Destinations, d)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeIPVSErrors(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		dest bool
		want string
	}{
		{"short", []byte{1, 1}, false, "too short"},
		{"no service attribute", concat([]byte{1, 1, 0, 0}, nla(9, u32(1))), false, "no service attribute"},
		{"no family", genlMsg(1, ipvsCmdAttrService, nla(ipvsSvcAttrPort, be16(80))), false, "address family"},
		{"truncated attribute", concat([]byte{1, 1, 0, 0}, []byte{0xff, 0, 1, 0}), false, "parse"},
		{"short v4 address", genlMsg(1, ipvsCmdAttrService, nla(ipvsSvcAttrAF, u16(unix.AF_INET)), nla(ipvsSvcAttrAddr, []byte{1, 2})), false, "IPv4 address"},
		{"dest without dest attribute", genlMsg(5, ipvsCmdAttrService), true, "no destination attribute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.dest {
				_, err = decodeIPVSDest(tt.msg)
			} else {
				_, _, err = decodeIPVSService(tt.msg)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseIpvsadmSave(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "ipvsadm-Sn.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	got, err := ParseIpvsadmSave(f)
	if err != nil {
		t.Fatal(err)
	}
	masq := func(addr string, port int) facts.IPVSDestination {
		return facts.IPVSDestination{Address: addr, Port: port, Weight: 1, Forward: "masq"}
	}
	want := []facts.IPVSService{
		{Protocol: "tcp", Address: "198.19.0.1", Port: 443, Scheduler: "rr", Destinations: []facts.IPVSDestination{masq("198.18.0.2", 6443)}},
		{Protocol: "tcp", Address: "198.19.0.10", Port: 53, Scheduler: "rr", Destinations: []facts.IPVSDestination{masq("198.18.130.2", 53), masq("198.18.131.2", 53)}},
		{Protocol: "udp", Address: "198.19.0.10", Port: 53, Scheduler: "rr", Destinations: []facts.IPVSDestination{masq("198.18.130.2", 53), masq("198.18.131.2", 53)}},
		{Protocol: "tcp", Address: "198.19.0.20", Port: 80, Scheduler: "wrr", Persistent: 10800, Destinations: []facts.IPVSDestination{
			{Address: "198.18.130.5", Port: 8080, Weight: 2, Forward: "masq", UpperThreshold: 100, LowerThreshold: 10}}},
		{Protocol: "tcp", Address: "fd00:198::1", Port: 443, Scheduler: "lc", Destinations: []facts.IPVSDestination{
			{Address: "fd00:18::2", Port: 6443, Weight: 0, Forward: "route"}}},
		{FWMark: 100, Scheduler: "sh", Destinations: []facts.IPVSDestination{{Address: "198.18.130.9", Port: 0, Weight: 1, Forward: "tunnel"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseIpvsadmSaveErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"unknown command", "-X -t 1.2.3.4:80\n", "unknown command"},
		{"unknown option", "-A -t 198.19.0.1:80 -s rr --frobnicate\n", "unknown option"},
		{"missing value", "-A -t\n", "needs a value"},
		{"bad address", "-A -t nowhere:80 -s rr\n", "not an IP"},
		{"bad port", "-A -t 198.19.0.1:99999 -s rr\n", "port"},
		{"real server of unknown service", "-a -t 198.19.0.1:80 -r 198.18.0.1:80 -m -w 1\n", "unknown service"},
		{"-a without -r", "-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -m\n", "before -r"},
		{"no service", "-A -s rr\n", "no service"},
		{"duplicate", "-A -t 198.19.0.1:80 -s rr\n-A -t 198.19.0.1:80 -s rr\n", "added twice"},
		{"fwmark zero", "-A -f 0 -s rr\n", "fwmark"},
		{"negative weight", "-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.0.1:80 -w -1\n", "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseIpvsadmSave(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestWithKubeIPVSAddresses(t *testing.T) {
	addrs := []facts.Address{
		{Link: "eth0", CIDR: "198.18.0.5/24", Family: 4},
		{Link: KubeIPVSDevice, CIDR: "198.19.0.1/32", Family: 4},
		{Link: KubeIPVSDevice, CIDR: "198.19.0.10/32", Family: 4},
	}
	got := withKubeIPVSAddresses(nil, addrs)
	if got == nil || !reflect.DeepEqual(got.KubeIPVSAddresses, []string{"198.19.0.1/32", "198.19.0.10/32"}) {
		t.Fatalf("got %+v", got)
	}
	if withKubeIPVSAddresses(nil, addrs[:1]) != nil {
		t.Fatal("IPVS facts made up without IPVS and without kube-ipvs0")
	}
}

func FuzzParseIpvsadmSave(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "ipvsadm-Sn.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Fuzz(func(t *testing.T, in string) {
		svcs, err := ParseIpvsadmSave(strings.NewReader(in))
		if err == nil {
			for _, s := range svcs {
				if s.FWMark == 0 && s.Address == "" {
					t.Fatalf("service without address or fwmark: %+v", s)
				}
			}
		}
	})
}

func FuzzDecodeIPVSService(f *testing.F) {
	f.Add(serviceMsg(unix.AF_INET, unix.IPPROTO_TCP, "198.19.0.1", 443, 0, "rr", 0x2, 0, 0xffffffff))
	f.Add(destMsg(unix.AF_INET6, "fd00:18::2", 8080, 2, 1, 0, 0))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _, _ = decodeIPVSService(msg)
		_, _ = decodeIPVSDest(msg)
	})
}
