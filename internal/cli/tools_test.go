package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cri/critest"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func runTool(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Run(append([]string{"netdoctor"}, args...), &o, &e)
	return code, o.String(), e.String()
}

// podNetns makes a namespace with 198.18.50.7/24 on a veth device and a
// fake CRI runtime that reports it as pod default/web; it returns the
// runtime's socket.
func podNetns(t *testing.T) (ns, sock string) {
	t.Helper()
	ns = testutil.NewNetns(t, "clipod")
	testutil.MustRun(t, ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	testutil.MustRun(t, ns, "ip", "addr", "add", "198.18.50.7/24", "dev", "eth0")
	testutil.MustRun(t, ns, "ip", "link", "set", "eth0", "up")
	sock = filepath.Join(t.TempDir(), "containerd.sock")
	critest.Start(t, sock, []critest.Pod{{ID: "sb-web", Namespace: "default", Name: "web",
		UID: "0d1c0000-0000-4000-8000-000000000001", IP: "198.18.50.7", PID: os.Getpid(), NetnsPath: testutil.Path(ns)}})
	return ns, sock
}

func TestExecInPodThroughCRI(t *testing.T) {
	testutil.RequireRoot(t)
	_, sock := podNetns(t)
	code, out, errOut := runTool(t, "exec", "--pod", "default/web", "--cri-endpoint", sock, "--", "ip", "-o", "-4", "addr", "show")
	if code != 0 || !strings.Contains(out, "198.18.50.7/24") || !strings.Contains(out, "eth0") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.Contains(out, "192.0.2.") {
		t.Errorf("saw the host's addresses: %q", out)
	}
	// The exit code is the command's.
	if code, _, _ := runTool(t, "exec", "--pod", "default/web", "--cri-endpoint", sock, "--", "ip", "link", "show", "dev", "nope0"); code != 1 {
		t.Errorf("failing command: exit %d, want 1", code)
	}
	if code, _, _ := runTool(t, "exec", "--pod", "default/web", "--cri-endpoint", sock, "--", "false"); code != 1 {
		t.Errorf("false: exit %d", code)
	}
}

func TestToolsBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tcpdump")
	ns, sock := podNetns(t)
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"malformed filter", []string{"capture", "--iface", ns + ":eth0", "-c", "1", "udp", "port", "("}, "bad capture filter"},
		{"missing interface", []string{"capture", "--iface", ns + ":nope0", "-c", "1"}, "no such interface"},
		{"unknown pod", []string{"exec", "--pod", "default/nope", "--cri-endpoint", sock, "--", "true"}, "pod not found"},
		{"unknown pod capture", []string{"capture", "--pod", "kube-system/nope", "--cri-endpoint", sock, "-c", "1"}, "pod not found"},
		{"no runtime", []string{"tcping", "--pod", "default/web", "--cri-endpoint", filepath.Join(t.TempDir(), "none.sock"), "198.18.50.7:80"}, "CRI endpoint"},
		{"bad host:port", []string{"tcping", "198.18.50.7"}, "not HOST:PORT"},
		{"bad port", []string{"tcping", "198.18.50.7:99999"}, "port"},
		{"unknown netns", []string{"trace", "--netns", "ndt-does-not-exist", "198.18.50.1"}, "not found"},
		{"node without count", []string{"tcping", "--node", "n1", "198.18.50.7:80"}, "give -c N"},
		{"node with netns", []string{"tcping", "--node", "n1", "--netns", ns, "-c", "1", "198.18.50.7:80"}, "for a local run"},
		{"node without kubeconfig", []string{"exec", "--node", "n1", "--kubeconfig", filepath.Join(t.TempDir(), "none"), "--", "true"}, "kubernetes client configuration"},
		{"node exec timeout", []string{"exec", "--node", "n1", "--timeout", "0s", "--", "true"}, "--timeout"},
		{"node capture without bound", []string{"capture", "--node", "n1", "--iface", "eth0"}, "give -c N or --duration D"},
		{"node capture netns iface", []string{"capture", "--node", "n1", "--iface", "x:eth0", "-c", "1"}, "device of the node"},
		{"two protocols", []string{"trace", "--udp", "--tcp", "80", "198.18.50.1"}, "one of"},
		{"exec without target", []string{"exec", "--", "true"}, "needs --pod"},
		{"analyze missing file", []string{"capture", "--analyze", filepath.Join(t.TempDir(), "none.pcap")}, "no such file"},
		{"no point", []string{"capture", "-c", "1"}, "needs a point"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runTool(t, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.msg) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut, tt.msg)
			}
		})
	}
}

func TestTcpingAndTraceJSON(t *testing.T) {
	testutil.RequireRoot(t)
	client := testutil.NewNetns(t, "clic")
	server := testutil.NewNetns(t, "clis")
	testutil.MustRun(t, client, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", server)
	testutil.MustRun(t, client, "ip", "addr", "add", "198.18.51.1/24", "dev", "c0")
	testutil.MustRun(t, client, "ip", "link", "set", "c0", "up")
	testutil.MustRun(t, server, "ip", "addr", "add", "198.18.51.2/24", "dev", "s0")
	testutil.MustRun(t, server, "ip", "link", "set", "s0", "up")
	testutil.MustRun(t, client, "ping", "-c", "1", "-w", "5", "198.18.51.2") // links activated, ARP resolved
	var l net.Listener
	if err := namespace.Do(testutil.Path(server), func() error {
		var err error
		l, err = net.Listen("tcp", "198.18.51.2:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	code, out, errOut := runTool(t, "tcping", "--netns", client, "-c", "3", "-i", "10ms", "-o", "json", "198.18.51.2:80")
	var res struct {
		Attempts []struct{ Outcome string }
		Summary  struct{ Sent, OK int }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || res.Summary.OK != 3 || len(res.Attempts) != 3 {
		t.Errorf("tcping: exit %d, %v, %s %s", code, err, out, errOut)
	}
	code, out, _ = runTool(t, "tcping", "--netns", client, "-c", "2", "-i", "10ms", "198.18.51.2:81")
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "2 refused") {
		t.Errorf("tcping refused: exit %d\n%s", code, out)
	}
	code, out, errOut = runTool(t, "trace", "--netns", client, "-n", "-r", "-c", "3", "-i", "10ms", "-o", "json", "198.18.51.2")
	var rep struct {
		Reached bool
		Hops    []struct {
			Addresses []string
			Sent      int
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || !rep.Reached || len(rep.Hops) != 1 || rep.Hops[0].Sent != 3 {
		t.Errorf("trace: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
}

func TestCaptureCLIAndAnalyze(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "tcpdump")
	client := testutil.NewNetns(t, "clicap")
	testutil.MustRun(t, client, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "c1")
	for _, d := range []string{"c0", "c1"} {
		testutil.MustRun(t, client, "ip", "link", "set", d, "up")
	}
	testutil.MustRun(t, client, "ip", "addr", "add", "198.18.52.1/24", "dev", "c0")
	file := filepath.Join(t.TempDir(), "c.pcapng")
	done := make(chan struct{})
	var code int
	var out, errOut string
	go func() {
		defer close(done)
		code, out, errOut = runTool(t, "capture", "--netns", client, "--iface", "c0", "--iface", "c1", "-w", file, "-c", "6", "--duration", "20s", "-o", "json", "arp")
	}()
	// ARP for an address nobody has: requests without replies, at both ends.
	for i := 0; i < 50; i++ {
		select {
		case <-done:
			i = 50
			continue
		default:
		}
		_, _ = testutil.Run(t, client, "ping", "-c", "1", "-W", "0.1", "198.18.52.9")
	}
	<-done
	if code != 0 || !strings.Contains(out, `"stopped": "count"`) {
		t.Fatalf("capture: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runTool(t, "capture", "--analyze", file)
	if code != 1 || !strings.Contains(out, "[arp-no-reply]") || !strings.Contains(out, "who-has 198.18.52.9") {
		t.Errorf("analyze: exit %d\n%s", code, out)
	}
}
