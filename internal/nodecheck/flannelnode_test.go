package nodecheck_test

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// The flannel-like lab node of the end-to-end test. Every address is in
// 198.18.0.0/15 and lives only inside namespaces the test creates.
const (
	nodeIP      = "198.18.0.1"
	peerIP      = "198.18.0.2"
	clusterCIDR = "198.18.128.0/17"
	nodePodCIDR = "198.18.129.0/24"
	peerPodCIDR = "198.18.130.0/24"
	serviceCIDR = "198.19.0.0/16"
	nodeVTEPMAC = "0e:00:00:00:01:01"
	peerVTEPMAC = "0e:00:00:00:01:02"
	podA        = "198.18.129.2"
	podB        = "198.18.129.3"
	podC        = "198.18.130.2"
)

var nfacctMatch = regexp.MustCompile(`-m nfacct --nfacct-name +\S+ `)

// flannelLab is a node namespace wired like a flannel VXLAN node to a peer
// node namespace, with pods on both.
type flannelLab struct {
	node, peer       string // netns names
	podA, podB, podC string
	rootDir          string // holds run/flannel/subnet.env of the node
	kubeProxyRules   []byte // the real kube-proxy iptables-save loaded in the node
}

// side describes one node of the pair.
type side struct {
	ns, ip, podNet, gw, vtep, vtepMAC  string
	remoteIP, remotePodNet, remoteVTEP string
	remoteMAC                          string
}

func mustRunIn(t testing.TB, ns string, args ...string) string {
	t.Helper()
	return testutil.MustRun(t, ns, args[0], args[1:]...)
}

// addVTEP creates flannel.1 the way flannel does (VNI 1, UDP 8472, pinned
// local address, no learning, MTU 1450) with the route, neighbour and FDB
// entry of the other node.
func addVTEP(t testing.TB, s side, local string) {
	t.Helper()
	mustRunIn(t, s.ns, "ip", "link", "add", "flannel.1", "address", s.vtepMAC, "type", "vxlan", "id", "1",
		"local", local, "dev", "eth0", "dstport", "8472", "nolearning")
	mustRunIn(t, s.ns, "ip", "link", "set", "flannel.1", "mtu", "1450", "up")
	mustRunIn(t, s.ns, "ip", "addr", "add", s.vtep+"/32", "dev", "flannel.1")
	mustRunIn(t, s.ns, "ip", "route", "add", s.remotePodNet, "via", s.remoteVTEP, "dev", "flannel.1", "onlink")
	mustRunIn(t, s.ns, "ip", "neigh", "add", s.remoteVTEP, "lladdr", s.remoteMAC, "dev", "flannel.1", "nud", "permanent")
	mustRunIn(t, s.ns, "bridge", "fdb", "append", s.remoteMAC, "dev", "flannel.1", "dst", s.remoteIP, "self", "permanent")
}

func addPod(t testing.TB, nodeNS, podIP, gw, hostVeth string) string {
	t.Helper()
	pod := testutil.NewNetns(t, "pod")
	mustRunIn(t, pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", hostVeth, "netns", nodeNS)
	mustRunIn(t, pod, "ip", "link", "set", "eth0", "mtu", "1450", "up")
	mustRunIn(t, pod, "ip", "addr", "add", podIP+"/24", "dev", "eth0")
	mustRunIn(t, pod, "ip", "route", "add", "default", "via", gw)
	mustRunIn(t, nodeNS, "ip", "link", "set", hostVeth, "mtu", "1450", "master", "cni0", "up")
	return pod
}

func runWithStdin(t testing.TB, ns string, stdin []byte, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := command.Run(ctx, command.Cmd{Name: name, Args: args, Netns: testutil.Path(ns), Stdin: stdin}); err != nil {
		t.Fatalf("%s in netns %s: %v", name, ns, err)
	}
}

// newFlannelLab builds the lab and checks that a pod reaches a pod on the
// other node through the VXLAN tunnel.
func newFlannelLab(t testing.TB) *flannelLab {
	t.Helper()
	testutil.RequireRoot(t)
	for _, p := range []string{"ip", "bridge", "iptables-restore", "sysctl", "ping"} {
		testutil.RequireProgram(t, p)
	}
	rules, err := os.ReadFile(filepath.Join(rulesTestdata, "kube-proxy-iptables.save"))
	if err != nil {
		t.Fatal(err)
	}
	// kube-proxy creates the nfacct objects its rules count into through
	// netlink before it loads them; this lab has no kube-proxy, so the
	// (always matching) nfacct matches are dropped from the real dump.
	rules = nfacctMatch.ReplaceAll(rules, nil)
	lab := &flannelLab{node: testutil.NewNetns(t, "node"), peer: testutil.NewNetns(t, "peer"), kubeProxyRules: rules}
	mustRunIn(t, lab.node, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", lab.peer)
	sides := []side{
		{ns: lab.node, ip: nodeIP, podNet: nodePodCIDR, gw: "198.18.129.1", vtep: "198.18.129.0", vtepMAC: nodeVTEPMAC,
			remoteIP: peerIP, remotePodNet: peerPodCIDR, remoteVTEP: "198.18.130.0", remoteMAC: peerVTEPMAC},
		{ns: lab.peer, ip: peerIP, podNet: peerPodCIDR, gw: "198.18.130.1", vtep: "198.18.130.0", vtepMAC: peerVTEPMAC,
			remoteIP: nodeIP, remotePodNet: nodePodCIDR, remoteVTEP: "198.18.129.0", remoteMAC: nodeVTEPMAC},
	}
	for _, s := range sides {
		mustRunIn(t, s.ns, "ip", "addr", "add", s.ip+"/24", "dev", "eth0")
		mustRunIn(t, s.ns, "ip", "link", "set", "eth0", "up")
		mustRunIn(t, s.ns, "ip", "link", "add", "cni0", "type", "bridge")
		mustRunIn(t, s.ns, "ip", "link", "set", "cni0", "mtu", "1450", "up")
		mustRunIn(t, s.ns, "ip", "addr", "add", s.gw+"/24", "dev", "cni0")
		addVTEP(t, s, s.ip)
		mustRunIn(t, s.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		mustRunIn(t, s.ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	}
	lab.podA = addPod(t, lab.node, podA, "198.18.129.1", "vethpoda")
	lab.podB = addPod(t, lab.node, podB, "198.18.129.1", "vethpodb")
	lab.podC = addPod(t, lab.peer, podC, "198.18.130.1", "vethpodc")
	runWithStdin(t, lab.node, rules, "iptables-restore")
	lab.rootDir = t.TempDir()
	env := "FLANNEL_NETWORK=" + clusterCIDR + "\nFLANNEL_SUBNET=198.18.129.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if err := os.MkdirAll(filepath.Join(lab.rootDir, "run", "flannel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lab.rootDir, "run", "flannel", "subnet.env"), []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	if !lab.ping(t, podC) {
		t.Fatalf("lab broken: pod %s cannot ping pod %s on the other node through flannel.1", podA, podC)
	}
	return lab
}

// ping reports whether pod A reaches dst (one echo, one second).
func (l *flannelLab) ping(t testing.TB, dst string) bool {
	t.Helper()
	_, err := testutil.Run(t, l.podA, "ping", "-c", "1", "-W", "1", dst)
	return err == nil
}

// pingDF reports whether pod A reaches dst with one don't-fragment echo of
// size bytes of payload (1422 + 28 = 1450, flannel.1's MTU).
func (l *flannelLab) pingDF(t testing.TB, dst string, size int) bool {
	t.Helper()
	_, err := testutil.Run(t, l.podA, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", strconv.Itoa(size), dst)
	return err == nil
}

// sendUnknownEthertype sends n frames of an ethertype no protocol handles
// (IEEE local experimental 0x88b5) from the peer namespace's iface: the node
// side counts them in rx_dropped, the counter nic-queue-drops reads.
func sendUnknownEthertype(t testing.TB, ns, iface string, n int) {
	t.Helper()
	err := namespace.Do(testutil.Path(ns), func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }()
		const ethertype = 0x88b5
		var proto [2]byte
		binary.BigEndian.PutUint16(proto[:], ethertype)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Protocol: binary.NativeEndian.Uint16(proto[:])}
		copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		frame := make([]byte, 60)
		copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(frame[6:12], ifi.HardwareAddr)
		copy(frame[12:14], proto[:])
		copy(frame[14:], []byte("netdoctor nic-queue-drops test"))
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send frames from %s in netns %s: %v", iface, ns, err)
	}
}

// holdConnections opens n TCP connections from the node namespace to a
// listener of its own and returns a function that closes everything.
func holdConnections(t testing.TB, ns, addr string, n int) func() {
	t.Helper()
	var ln net.Listener
	var clients []net.Conn
	err := namespace.Do(testutil.Path(ns), func() error {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listen on %s in netns %s: %v", addr, ns, err)
	}
	accepted := make(chan net.Conn, n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	err = namespace.Do(testutil.Path(ns), func() error {
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			clients = append(clients, c)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("connect to %s in netns %s: %v", addr, ns, err)
	}
	return func() {
		for _, c := range clients {
			_ = c.Close()
		}
		_ = ln.Close()
		for c := range accepted {
			_ = c.Close()
		}
	}
}

// withoutMasquerade returns the kube-proxy rules with each cluster-IP
// masquerade rule removed (kube-proxy started without --cluster-cidr) or,
// when replace is set, with its source CIDR replaced (a wrong --cluster-cidr).
func withoutMasquerade(rules []byte, replace string) []byte {
	var out []string
	for _, line := range strings.Split(string(rules), "\n") {
		if strings.Contains(line, "! -s "+clusterCIDR) && strings.Contains(line, "KUBE-MARK-MASQ") {
			if replace == "" {
				continue
			}
			line = strings.ReplaceAll(line, "! -s "+clusterCIDR, "! -s "+replace)
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n"))
}
