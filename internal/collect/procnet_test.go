package collect

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/facts"
)

func openFixture(t testing.TB, name string) *os.File {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// The socket fixtures were captured in a fresh namespace holding a TCP
// listener on 198.18.5.1:8080 with one established and one closed (TIME_WAIT)
// connection, an IPv6 listener on [::1]:9090 with one connection, UDP
// sockets on 0.0.0.0:8472 and [::]:5353 and a connected UDP socket to
// 198.18.5.1:53 (testdata/README.md says how they were captured).
func TestParseProcNetSockets(t *testing.T) {
	tests := []struct {
		file, proto string
		want        []facts.Socket
	}{
		{"proc-net-tcp", "tcp", []facts.Socket{
			{Proto: "tcp", State: "LISTEN", Local: "198.18.5.1:8080", Inode: 60940},
			{Proto: "tcp", State: "ESTABLISHED", Local: "198.18.5.1:36252", Remote: "198.18.5.1:8080", Inode: 60942},
			{Proto: "tcp", State: "TIME_WAIT", Local: "198.18.5.1:36256", Remote: "198.18.5.1:8080", Inode: 0},
			{Proto: "tcp", State: "ESTABLISHED", Local: "198.18.5.1:8080", Remote: "198.18.5.1:36252", Inode: 60943},
		}},
		{"proc-net-tcp6", "tcp6", []facts.Socket{
			{Proto: "tcp6", State: "LISTEN", Local: "[::1]:9090", Inode: 60941},
			{Proto: "tcp6", State: "ESTABLISHED", Local: "[::1]:9090", Remote: "[::1]:53948", Inode: 60945},
			{Proto: "tcp6", State: "ESTABLISHED", Local: "[::1]:53948", Remote: "[::1]:9090", Inode: 60944},
		}},
		{"proc-net-udp", "udp", []facts.Socket{
			{Proto: "udp", State: "UNCONN", Local: "0.0.0.0:37179", Inode: 60955},
			{Proto: "udp", State: "UNCONN", Local: "0.0.0.0:8472", Inode: 60948},
			{Proto: "udp", State: "ESTABLISHED", Local: "198.18.5.1:44167", Remote: "198.18.5.1:53", Inode: 60949},
		}},
		{"proc-net-udp6", "udp6", []facts.Socket{
			{Proto: "udp6", State: "UNCONN", Local: "[::]:5353", Inode: 60950},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseProcNetSockets(openFixture(t, tt.file), tt.proto)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcNetSocketsErrors(t *testing.T) {
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tests := []struct{ name, in, wantErr string }{
		{"short line", header + "   0: 0100007F:0035 00000000:0000 0A\n", "want at least 10"},
		{"bad address", header + "   0: 0100007Z:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n", "local address"},
		{"no port", header + "   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n", "no port"},
		{"odd length", header + "   0: 0100007F00:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1\n", "hex digits"},
		{"bad state", header + "   0: 0100007F:0035 00000000:0000 XX 00000000:00000000 00:00000000 00000000 0 0 1\n", "state"},
		{"bad inode", header + "   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x\n", "inode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseProcNetSockets(strings.NewReader(tt.in), "tcp")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseConntrackStat(t *testing.T) {
	got, err := ParseConntrackStat(openFixture(t, "proc-net-stat-nf_conntrack"))
	if err != nil {
		t.Fatal(err)
	}
	want := []facts.ConntrackCPUStat{{CPU: 0, Entries: 7}, {CPU: 1, Entries: 7}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}

	tests := []struct {
		name, in string
		want     []facts.ConntrackCPUStat
		wantErr  string
	}{
		{
			// Column set of kernels before 5.x (searched, delete_list), values
			// chosen to land each counter in a distinct field.
			name: "old kernel columns",
			in: "entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n" +
				"0000000a  00000001 00000002 00000003 00000004 00000005 00000006 00000007 00000008 00000009 0000000b 0000000c 0000000d  0000000e 0000000f 00000010 00000011\n",
			want: []facts.ConntrackCPUStat{{CPU: 0, Entries: 10, Found: 2, New: 3, Invalid: 4, Ignore: 5, Delete: 6,
				Insert: 8, InsertFailed: 9, Drop: 11, EarlyDrop: 12, Error: 13, ExpectNew: 14, ExpectCreate: 15,
				ExpectDelete: 16, SearchRestart: 17}},
		},
		{
			name: "current kernel columns",
			in: "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n" +
				"00000100  00000002 00000000 00000000 0000002a 00000000 00000000 00000001 00000000 00000ff0 00000003 00000004 00000000  00000000 00000000 00000000 00000005\n",
			want: []facts.ConntrackCPUStat{{CPU: 0, Entries: 256, ClashResolve: 2, Invalid: 42, ChainTooLong: 1,
				InsertFailed: 4080, Drop: 3, EarlyDrop: 4, SearchRestart: 5}},
		},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "no header", in: "00000000 00000000\n", wantErr: "header"},
		{name: "short row", in: "entries found\n00000001\n", wantErr: "columns"},
		{name: "not hex", in: "entries found\n00000001 0000000g\n", wantErr: "column found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConntrackStat(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseSoftnetStat(t *testing.T) {
	got, err := ParseSoftnetStat(openFixture(t, "proc-net-softnet_stat"))
	if err != nil {
		t.Fatal(err)
	}
	want := []facts.SoftnetStat{
		{CPU: 0, Processed: 0x22e, Squeezed: 1},
		{CPU: 1, Processed: 0x7ed0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	tests := []struct {
		name, in string
		want     []facts.SoftnetStat
		wantErr  string
	}{
		{
			// An older kernel (11 columns, no CPU number) with drops and squeezes.
			name: "old kernel",
			in:   "0000ffff 00000010 00000020 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000004\n",
			want: []facts.SoftnetStat{{CPU: 0, Processed: 0xffff, Dropped: 16, Squeezed: 32, ReceivedRPS: 3, FlowLimit: 4}},
		},
		{
			// CPU 1 offline: the line of CPU 2 says so in its 13th column.
			name: "offline cpu",
			in: "00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n" +
				"00000002 00000005 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000002 00000000 00000000\n",
			want: []facts.SoftnetStat{{CPU: 0, Processed: 1}, {CPU: 2, Processed: 2, Dropped: 5, BacklogLen: 7}},
		},
		{name: "short", in: "00000001 00000002\n", wantErr: "at least 3"},
		{name: "not hex", in: "00000001 0000000x 00000000\n", wantErr: "column 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSoftnetStat(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseSubnetEnv(t *testing.T) {
	got, err := ParseSubnetEnv(openFixture(t, "subnet.env"))
	if err != nil {
		t.Fatal(err)
	}
	want := &facts.FlannelSubnet{Network: "198.18.128.0/17", Subnet: "198.18.130.1/24", MTU: 1450, IPMasq: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	tests := []struct {
		name, in string
		want     *facts.FlannelSubnet
		wantErr  string
	}{
		{"dual stack", "FLANNEL_NETWORK=198.18.128.0/17\nFLANNEL_IPV6_NETWORK=fd00:18::/56\nFLANNEL_SUBNET=198.18.131.1/24\nFLANNEL_IPV6_SUBNET=fd00:18:0:1::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
			&facts.FlannelSubnet{Network: "198.18.128.0/17", IPv6Network: "fd00:18::/56", Subnet: "198.18.131.1/24", IPv6Subnet: "fd00:18:0:1::1/64", MTU: 1400}, ""},
		{"comments and unknown keys", "# written by flanneld\nFLANNEL_SUBNET=198.18.131.1/24\nOTHER=1\n\n", &facts.FlannelSubnet{Subnet: "198.18.131.1/24"}, ""},
		{"empty", "", &facts.FlannelSubnet{}, ""},
		{"no equals", "FLANNEL_SUBNET\n", nil, "not KEY=VALUE"},
		{"bad cidr", "FLANNEL_NETWORK=198.18.0.0\n", nil, "FLANNEL_NETWORK"},
		{"bad mtu", "FLANNEL_MTU=big\n", nil, "FLANNEL_MTU"},
		{"bad masq", "FLANNEL_IPMASQ=maybe\n", nil, "FLANNEL_IPMASQ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSubnetEnv(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIptablesBackend(t *testing.T) {
	empty := "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 18:00:00 2026\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	withRule := strings.Replace(empty, "COMMIT", "-A INPUT -p udp --dport 8472 -j DROP\nCOMMIT", 1)
	dropPolicy := strings.Replace(empty, ":FORWARD ACCEPT", ":FORWARD DROP", 1)
	userChain := strings.Replace(empty, "COMMIT", ":KUBE-SERVICES - [0:0]\nCOMMIT", 1)
	tests := []struct{ legacy, nft, want string }{
		{"", "", "none"},
		{empty, empty, "none"},
		{userChain, "", "none"},
		{withRule, empty, "legacy"},
		{"", dropPolicy, "nft"},
		{withRule, withRule, "both"},
	}
	for i, tt := range tests {
		if got := IptablesBackend(tt.legacy, tt.nft); got != tt.want {
			t.Errorf("case %d: IptablesBackend = %q, want %q", i, got, tt.want)
		}
	}
}

func FuzzParseProcNetSockets(f *testing.F) {
	for _, name := range []string{"proc-net-tcp", "proc-net-tcp6", "proc-net-udp", "proc-net-udp6"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, in string) {
		socks, err := ParseProcNetSockets(strings.NewReader(in), "tcp")
		if err == nil {
			for _, s := range socks {
				if s.Local == "" || s.State == "" {
					t.Fatalf("socket without local address or state: %+v", s)
				}
			}
		}
	})
}

func FuzzParseConntrackStat(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "proc-net-stat-nf_conntrack"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Fuzz(func(t *testing.T, in string) {
		st, err := ParseConntrackStat(strings.NewReader(in))
		if err == nil {
			for i, s := range st {
				if s.CPU != i {
					t.Fatalf("row %d has cpu %d", i, s.CPU)
				}
			}
		}
	})
}

func FuzzParseSoftnetStat(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "proc-net-softnet_stat"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = ParseSoftnetStat(strings.NewReader(in))
	})
}

func FuzzParseSubnetEnv(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "subnet.env"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Fuzz(func(t *testing.T, in string) {
		fs, err := ParseSubnetEnv(strings.NewReader(in))
		if err == nil && fs == nil {
			t.Fatal("nil result without error")
		}
	})
}
