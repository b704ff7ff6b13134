package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/netdoctor/netdoctor/internal/cri/critest"
	"github.com/netdoctor/netdoctor/internal/install"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/tcping"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// RunExec: arguments as data, the namespace's view, the time limit (the
// whole process group killed) and the output bound.
func TestRunExec(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "ip")
	ns := testutil.NewNetns(t, "tl-exec")
	testutil.MustRun(t, ns, "ip", "link", "add", "tl0", "type", "veth", "peer", "name", "tl1")
	testutil.MustRun(t, ns, "ip", "addr", "add", "198.18.91.7/24", "dev", "tl0")
	tests := []struct {
		name     string
		spec     ExecSpec
		code     int
		timedOut bool
		trunc    bool
		stdout   string // contained in stdout
		stderr   string // contained in stderr
		maxTook  time.Duration
	}{
		{"netns addresses", ExecSpec{Command: "ip", Args: []string{"-br", "addr"}, Timeout: 10 * time.Second}, 0, false, false, "198.18.91.7/24", "", 10 * time.Second},
		{"args are data", ExecSpec{Command: "echo", Args: []string{"a; rm -rf /", "$(id)"}, Timeout: 10 * time.Second}, 0, false, false, "a; rm -rf / $(id)", "", 10 * time.Second},
		{"exit code and stderr", ExecSpec{Command: "ip", Args: []string{"link", "show", "nope0"}, Timeout: 10 * time.Second}, 1, false, false, "", "nope0", 10 * time.Second},
		{"time limit kills the group", ExecSpec{Command: "sh", Args: []string{"-c", "sleep 30 & sleep 30"}, Timeout: 500 * time.Millisecond}, 128 + 9, true, false, "", "", 1900 * time.Millisecond}, // under WaitDelay: the background sleep (holding stdout) died too
		{"output bound", ExecSpec{Command: "seq", Args: []string{"1", "100000"}, Timeout: 10 * time.Second, MaxOutput: 1000}, 0, false, true, "1\n2\n3\n", "", 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r, err := RunExec(context.Background(), testutil.Path(ns), &tt.spec)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if r.ExitCode != tt.code || r.TimedOut != tt.timedOut || r.Truncated != tt.trunc {
				t.Errorf("exit %d timedOut %v truncated %v; want %d %v %v (stderr %q)", r.ExitCode, r.TimedOut, r.Truncated, tt.code, tt.timedOut, tt.trunc, r.Stderr)
			}
			if !strings.Contains(string(r.Stdout), tt.stdout) || !strings.Contains(string(r.Stderr), tt.stderr) {
				t.Errorf("stdout %q stderr %q; want %q and %q", r.Stdout, r.Stderr, tt.stdout, tt.stderr)
			}
			if tt.spec.MaxOutput > 0 && (len(r.Stdout) > tt.spec.MaxOutput || r.StdoutBytes <= int64(tt.spec.MaxOutput)) {
				t.Errorf("kept %d of %d bytes, bound %d", len(r.Stdout), r.StdoutBytes, tt.spec.MaxOutput)
			}
			if took > tt.maxTook {
				t.Errorf("took %s, want under %s", took, tt.maxTook)
			}
		})
	}
	if _, err := RunExec(context.Background(), testutil.Path(ns), &ExecSpec{Command: "netdoctor-no-such-program"}); err == nil {
		t.Error("a missing program ran")
	}
}

// toolsLab is a node network namespace wired by a veth to a pod network
// namespace (198.18.90.0/24), with a TCP listener in each.
type toolsLab struct {
	node, pod         string // netns names
	nodeAddr, podAddr string // listeners, IP:port
}

func newToolsLab(t *testing.T) *toolsLab {
	t.Helper()
	l := &toolsLab{node: testutil.NewNetns(t, "tl-node"), pod: testutil.NewNetns(t, "tl-pod")}
	testutil.MustRun(t, l.node, "ip", "link", "add", "tl-n0", "type", "veth", "peer", "name", "eth0", "netns", l.pod)
	testutil.MustRun(t, l.node, "ip", "addr", "add", "198.18.90.1/24", "dev", "tl-n0")
	testutil.MustRun(t, l.node, "ip", "link", "set", "tl-n0", "up")
	testutil.MustRun(t, l.pod, "ip", "addr", "add", "198.18.90.2/24", "dev", "eth0")
	testutil.MustRun(t, l.pod, "ip", "link", "set", "eth0", "up")
	for _, x := range []struct {
		ns, ip string
		out    *string
	}{{l.node, "198.18.90.1", &l.nodeAddr}, {l.pod, "198.18.90.2", &l.podAddr}} {
		ln, err := namespace.Listen(context.Background(), testutil.Path(x.ns), "tcp", x.ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
		*x.out = ln.Addr().String()
	}
	return l
}

// createPod makes a Pod object bound to node (no kubelet runs it).
func createPod(t *testing.T, ns, name, node, ip string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	no := false
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
	var err error
	for ctx.Err() == nil {
		// The default ServiceAccount appears a moment after the control plane.
		if _, err = apiServer.admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() {
		_ = apiServer.admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := apiServer.admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		_, err = apiServer.admin.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("pod %s/%s status: %v", ns, name, err)
	}
}

// The CLI's tcping, trace and exec --node through the real API server to
// the real agent loop (as the agent's ServiceAccount) of a simulated node
// whose network namespace and pod the test made; the pod is found through
// a fake CRI runtime.
func TestToolsThroughAgent(t *testing.T) {
	needAPIServer(t)
	testutil.RequireProgram(t, "ip")
	lab := newToolsLab(t)
	sock := filepath.Join(t.TempDir(), "cri.sock")
	critest.Start(t, sock, []critest.Pod{{ID: "sb-tl", Namespace: "default", Name: "tl-web", UID: "u-tl", IP: "198.18.90.2", PID: 4321, NetnsPath: testutil.Path(lab.pod)}})
	simNodesFrom(t, 200, "tool-1", "tool-2") // tool-2 has no agent
	createPod(t, "default", "tl-web", "tool-1", "198.18.90.2")
	createPod(t, "default", "tl-elsewhere", "tool-2", "198.18.90.9")
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{Client: agentClient(t), Namespace: install.Namespace, Node: "tool-1", Netns: testutil.Path(lab.node), CRIEndpoint: "unix://" + sock}
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	kc := apiServer.cp.Kubeconfig
	refused := "198.18.90.2:1" // nothing listens there: RST

	t.Run("tcping json from the node", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "tcping", "--kubeconfig", kc, "--node", "tool-1", "-c", "3", "-i", "100ms", "-o", "json", lab.podAddr)
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		var r tcping.Result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("json: %v\n%s", err, out)
		}
		if r.Summary.Sent != 3 || r.Summary.OK != 3 || len(r.Attempts) != 3 || r.Netns != "node tool-1" {
			t.Fatalf("result %+v", r)
		}
		for _, at := range r.Attempts {
			if at.Outcome != tcping.Connected || !strings.HasPrefix(at.Local, "198.18.90.1:") {
				t.Errorf("attempt %+v: want connected from the node's 198.18.90.1", at)
			}
		}
	})
	t.Run("tcping text from the pod", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "tcping", "--kubeconfig", kc, "--node", "tool-1", "--pod", "default/tl-web", "-c", "2", "-i", "100ms", lab.nodeAddr)
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		for _, want := range []string{"from pod default/tl-web on node tool-1", "seq=1 " + lab.nodeAddr + ": connected", "2 sent, 2 ok, 0 refused", "min/avg/max/stdev"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("tcping refused", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "tcping", "--kubeconfig", kc, "--node", "tool-1", "-c", "2", "-i", "100ms", refused)
		if code != 1 || !strings.Contains(out, "2 sent, 0 ok, 2 refused") {
			t.Errorf("exit %d, want 1 with 2 refused\n%s\n%s", code, out, errOut)
		}
	})
	t.Run("trace to the pod", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "trace", "--kubeconfig", kc, "--node", "tool-1", "-c", "2", "-i", "200ms", "-n", "-o", "json", "198.18.90.2")
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		var r struct {
			Reached bool
			Hops    []struct {
				Addresses []string
				Loss      float64
			}
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("json: %v\n%s", err, out)
		}
		if !r.Reached || len(r.Hops) != 1 || len(r.Hops[0].Addresses) == 0 || r.Hops[0].Addresses[0] != "198.18.90.2" {
			t.Errorf("trace %+v, want one hop 198.18.90.2 reached", r)
		}
	})
	t.Run("exec in the pod", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "exec", "--kubeconfig", kc, "--node", "tool-1", "--pod", "default/tl-web", "--", "ip", "-br", "addr")
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		if !strings.Contains(out, "198.18.90.2/24") || strings.Contains(out, "198.18.90.1/") {
			t.Errorf("want the pod's addresses only:\n%s", out)
		}
	})
	t.Run("exec on the node, json", func(t *testing.T) {
		out, errOut, code, _ := runCLI(t, time.Minute, "exec", "--kubeconfig", kc, "--node", "tool-1", "-o", "json", "--", "ip", "-br", "addr")
		var r ToolResult
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 {
			t.Fatalf("exit %d json %v\n%s\n%s", code, err, out, errOut)
		}
		if r.Exec == nil || !strings.Contains(string(r.Exec.Stdout), "198.18.90.1/24") || r.Where != "node tool-1" {
			t.Errorf("result %+v", r)
		}
	})
	t.Run("exec exit code and time limit", func(t *testing.T) {
		_, errOut, code, _ := runCLI(t, time.Minute, "exec", "--kubeconfig", kc, "--node", "tool-1", "--", "ip", "link", "show", "nope0")
		if code != 1 || !strings.Contains(errOut, "nope0") {
			t.Errorf("exit %d, want the command's 1 and its stderr: %s", code, errOut)
		}
		_, errOut, code, took := runCLI(t, time.Minute, "exec", "--kubeconfig", kc, "--node", "tool-1", "--timeout", "500ms", "--", "sleep", "30")
		if code != 124 || !strings.Contains(errOut, "killed after --timeout") || took > 15*time.Second {
			t.Errorf("exit %d in %s, want 124 soon: %s", code, took, errOut)
		}
	})
	t.Run("capture on the node and in the pod, merged", func(t *testing.T) {
		testutil.RequireProgram(t, "tshark")
		file := filepath.Join(t.TempDir(), "node.pcapng")
		type cliOut struct {
			out, errOut string
			code        int
		}
		res := make(chan cliOut, 1)
		go func() {
			out, errOut, code, _ := runCLI(t, time.Minute, "capture", "--kubeconfig", kc, "--node", "tool-1", "--iface", "tl-n0",
				"--pod", "default/tl-web", "--duration", "4s", "-w", file, "udp", "and", "dst", "port", "47123")
			res <- cliOut{out, errOut, code}
		}()
		// Once the agent runs the capture, the pod sends a known number of datagrams to the node.
		deadline := time.Now().Add(20 * time.Second)
		for !agentRunning(a) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !agentRunning(a) {
			t.Fatal("the agent never started the capture")
		}
		time.Sleep(time.Second) // the sockets and filters are attached
		const sent = 5
		// Unconnected: the node's port unreachable replies do not fail the next send.
		c, err := namespace.ListenPacket(context.Background(), testutil.Path(lab.pod), "udp", "198.18.90.2:0")
		if err != nil {
			t.Fatal(err)
		}
		dst := &net.UDPAddr{IP: net.ParseIP("198.18.90.1"), Port: 47123}
		for i := 0; i < sent; i++ {
			if _, err := c.WriteTo([]byte(fmt.Sprintf("netdoctor capture %d", i)), dst); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = c.Close()
		r := <-res
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.out, r.errOut)
		}
		t.Logf("capture --node:\n%s%s", r.out, r.errOut)
		out, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "udp.dstport").Output()
		if err != nil {
			t.Fatalf("tshark: %v", err)
		}
		per := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if name, port, ok := strings.Cut(line, "\t"); ok && port == "47123" {
				per[name]++
			}
		}
		want := map[string]int{"tool-1/host/tl-n0": sent, "tool-1/pod:default/tl-web/eth0": sent}
		if fmt.Sprint(per) != fmt.Sprint(want) {
			t.Errorf("tshark counts per interface %v, want %v\n%s", per, want, out)
		}
		if !strings.Contains(r.out, "10 packets captured on 1 node(s)") {
			t.Errorf("summary:\n%s", r.out)
		}
	})
	t.Run("ctrl-c stops a capture on the node", func(t *testing.T) {
		c := exec.Command(needBinary(t), "capture", "--kubeconfig", kc, "--node", "tool-1", "--iface", "tl-n0", "--duration", "60s", "udp", "port", "47126")
		var errb strings.Builder
		c.Stderr = &errb
		if err := namespace.Do(testutil.Path(apiServer.netns), c.Start); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for !agentRunning(a) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !agentRunning(a) {
			_ = c.Process.Kill()
			_ = c.Wait()
			t.Fatalf("the agent never started the capture: %s", errb.String())
		}
		start := time.Now()
		_ = c.Process.Signal(syscall.SIGINT)
		err := c.Wait()
		if c.ProcessState.ExitCode() != 2 || !strings.Contains(errb.String(), "interrupted") {
			t.Errorf("after Ctrl-C: %v, stderr %s", err, errb.String())
		}
		for agentRunning(a) && time.Since(start) < 5*time.Second {
			time.Sleep(50 * time.Millisecond)
		}
		if agentRunning(a) {
			t.Errorf("the agent's capture still runs %s after Ctrl-C", time.Since(start))
		}
	})
	t.Run("capture --node needs a bound and a point", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			msg  string
		}{
			{[]string{"capture", "--node", "tool-1", "--iface", "tl-n0"}, "give -c N or --duration D"},
			{[]string{"capture", "--node", "tool-1", "-c", "1"}, "no point on that node"},
			{[]string{"capture", "--node", "tool-1", "--pod", "default/tl-elsewhere", "-c", "1"}, "add --node tool-2"},
			{[]string{"capture", "--node", "tool-1", "--iface", "nope0", "-c", "1", "--duration", "2s"}, "no such interface"},
		} {
			args := append([]string{tc.args[0], "--kubeconfig", kc}, tc.args[1:]...)
			_, errOut, code, _ := runCLI(t, time.Minute, args...)
			if code != 2 || !strings.Contains(errOut, tc.msg) {
				t.Errorf("%v: exit %d, want 2 and %q: %s", tc.args, code, tc.msg, errOut)
			}
		}
	})
	t.Run("bad targets exit 2", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			msg  string
		}{
			{[]string{"exec", "--node", "no-such-node", "--", "true"}, `no node "no-such-node"`},
			{[]string{"tcping", "--node", "no-such-node", "-c", "1", lab.podAddr}, `no node "no-such-node"`},
			{[]string{"exec", "--node", "tool-1", "--pod", "default/nope", "--", "true"}, "no pod default/nope"},
			{[]string{"exec", "--node", "tool-1", "--pod", "default/tl-elsewhere", "--", "true"}, "runs on node tool-2"},
			{[]string{"exec", "--node", "tool-1", "--", "netdoctor-no-such-program"}, "executable file not found"},
		} {
			args := append([]string{tc.args[0], "--kubeconfig", kc}, tc.args[1:]...)
			_, errOut, code, _ := runCLI(t, time.Minute, args...)
			if code != 2 || !strings.Contains(errOut, tc.msg) {
				t.Errorf("%v: exit %d, want 2 and %q: %s", tc.args, code, tc.msg, errOut)
			}
		}
	})
	t.Run("no agent on the node", func(t *testing.T) {
		_, errOut, code, took := runCLI(t, time.Minute, "exec", "--kubeconfig", kc, "--node", "tool-2", "--timeout", "1s", "--", "true")
		if code != 2 || !strings.Contains(errOut, "no answer from the netdoctor agent on node tool-2") || !strings.Contains(errOut, "no running netdoctor agent pod on node tool-2") {
			t.Errorf("exit %d, want 2 and no answer: %s", code, errOut)
		}
		t.Logf("no agent: exit %d after %s", code, took)
	})
	t.Run("ctrl-c deletes the request and stops the run", func(t *testing.T) {
		c := exec.Command(needBinary(t), "exec", "--kubeconfig", kc, "--node", "tool-1", "--timeout", "60s", "--", "sleep", "60")
		var errb strings.Builder
		c.Stderr = &errb
		if err := namespace.Do(testutil.Path(apiServer.netns), c.Start); err != nil {
			t.Fatal(err)
		}
		running := func() int {
			n := 0
			toolRuns.Range(func(k, _ any) bool {
				if k.(toolRunKey).a == a {
					n++
				}
				return true
			})
			return n
		}
		deadline := time.Now().Add(20 * time.Second)
		for running() == 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if running() == 0 {
			_ = c.Process.Kill()
			_ = c.Wait()
			t.Fatalf("the agent never started the run: %s", errb.String())
		}
		start := time.Now()
		_ = c.Process.Signal(syscall.SIGINT)
		err := c.Wait()
		if c.ProcessState.ExitCode() != 2 || !strings.Contains(errb.String(), "interrupted") {
			t.Errorf("after Ctrl-C: %v, stderr %s", err, errb.String())
		}
		for running() != 0 && time.Since(start) < 5*time.Second {
			time.Sleep(50 * time.Millisecond)
		}
		if running() != 0 {
			t.Errorf("the agent's run (sleep 60) still going %s after Ctrl-C", time.Since(start))
		}
	})
	// Every request and result is gone.
	l, err := apiServer.admin.CoreV1().ConfigMaps(install.Namespace).List(context.Background(), metav1.ListOptions{LabelSelector: LabelRequest})
	if err != nil || len(l.Items) != 0 {
		t.Errorf("requests left: %v %d", err, len(l.Items))
	}
	l, err = apiServer.admin.CoreV1().ConfigMaps(install.Namespace).List(context.Background(), metav1.ListOptions{LabelSelector: LabelResult})
	if err != nil || len(l.Items) != 0 {
		t.Errorf("results left: %v %d", err, len(l.Items))
	}
}

// agentRunning says whether agent a runs a tool now.
func agentRunning(a *Agent) bool {
	n := 0
	toolRuns.Range(func(k, _ any) bool {
		if k.(toolRunKey).a == a {
			n++
		}
		return true
	})
	return n > 0
}
