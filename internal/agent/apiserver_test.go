package agent

// Tests against a real API server: the lab's control plane (etcd,
// kube-apiserver, controller-manager, scheduler from bin/netdoctor-k8s)
// started once per package run in a fresh network namespace, torn down
// after. They skip, saying why, without root or the binary.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"k8s.io/client-go/util/retry"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/install"
	"github.com/netdoctor/netdoctor/internal/lab/controlplane"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// apiServer is the package's shared control plane.
var apiServer struct {
	once    sync.Once
	cp      *controlplane.ControlPlane
	netns   string // name
	admin   kubernetes.Interface
	rc      *rest.Config
	skip    string // why the control plane cannot run here (no lab binary)
	fail    string // why it did not start where it should have: tests fail with it
	tmp     string
	started time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if apiServer.cp != nil {
		_ = apiServer.cp.Stop()
	}
	if apiServer.netns != "" {
		_ = namespace.Delete(apiServer.netns)
	}
	if apiServer.tmp != "" {
		_ = os.RemoveAll(apiServer.tmp)
	}
	os.Exit(code)
}

// needAPIServer starts the control plane on first use, or skips.
func needAPIServer(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped in -short: starts a real control plane")
	}
	testutil.RequireRoot(t)
	apiServer.once.Do(startAPIServer)
	if apiServer.skip != "" {
		t.Skip(apiServer.skip)
	}
	if apiServer.fail != "" {
		t.Fatal(apiServer.fail)
	}
}

func startAPIServer() {
	bin, err := controlplane.FindK8sBin()
	if err != nil {
		// Tests run from the package directory: look at the repo's bin/.
		if p, e := filepath.Abs("../../bin/netdoctor-k8s"); e == nil {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		apiServer.skip = "skipped: no lab Kubernetes binary (" + err.Error() + ")"
		return
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ns := "ndt-cd-api-" + hex.EncodeToString(b)
	if err := namespace.Create(ns); err != nil {
		apiServer.fail = "create netns: " + err.Error()
		return
	}
	apiServer.netns = ns
	path := filepath.Join(namespace.NetnsDir, ns)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", controlplane.DefaultAdvertiseIP + "/32", "dev", "lo"}} {
		if _, err := command.Run(ctx, command.Cmd{Name: "ip", Args: args, Netns: path}); err != nil {
			apiServer.fail = "set up netns: " + err.Error()
			return
		}
	}
	tmp, err := os.MkdirTemp("", "ndt-cd-api-")
	if err != nil {
		apiServer.fail = err.Error()
		return
	}
	apiServer.tmp = tmp
	start := time.Now()
	cp, err := controlplane.Start(context.Background(), controlplane.Config{StateDir: tmp, K8sBin: bin, Netns: path})
	if err != nil {
		apiServer.fail = "control plane did not start: " + err.Error()
		return
	}
	apiServer.started = time.Since(start)
	apiServer.cp = cp
	rc, err := cp.RESTConfig()
	if err != nil {
		apiServer.fail = err.Error()
		return
	}
	apiServer.rc = rc
	apiServer.admin = kubernetes.NewForConfigOrDie(rc)
	ictx, icancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer icancel()
	if err := install.Apply(ictx, apiServer.admin, install.Objects(install.Options{})); err != nil {
		apiServer.fail = "install: " + err.Error()
	}
}

// agentClient impersonates the agent's ServiceAccount.
func agentClient(t *testing.T) kubernetes.Interface {
	rc := rest.CopyConfig(apiServer.rc)
	rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + install.Namespace + ":" + install.AgentName}
	return kubernetes.NewForConfigOrDie(rc)
}

func TestInstalledManifestsAndAgentRBAC(t *testing.T) {
	needAPIServer(t)
	t.Logf("control plane started in %s", apiServer.started)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The API server accepted every object; applying again is idempotent.
	if err := install.Apply(ctx, apiServer.admin, install.Objects(install.Options{})); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
	if ok, temp, err := install.Installed(ctx, apiServer.admin); !ok || temp || err != nil {
		t.Fatalf("installed %v temporary %v: %v", ok, temp, err)
	}
	sa := agentClient(t)
	allowed := []struct {
		what string
		do   func() error
	}{
		{"list nodes", func() error { _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); return err }},
		{"list pods", func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err }},
		{"list services", func() error { _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err }},
		{"list endpointslices", func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"watch configmaps in netdoctor", func() error {
			w, err := sa.CoreV1().ConfigMaps(install.Namespace).Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create a result configmap", func() error {
			_, err := sa.CoreV1().ConfigMaps(install.Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "rbac-probe"}}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, a := range allowed {
		if err := a.do(); err != nil {
			t.Errorf("agent may %s: %v", a.what, err)
		}
	}
	forbidden := []struct {
		what string
		do   func() error
	}{
		{"delete nodes", func() error { return sa.CoreV1().Nodes().Delete(ctx, "any", metav1.DeleteOptions{}) }},
		{"list secrets", func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err }},
		{"read secrets in its namespace", func() error {
			_, err := sa.CoreV1().Secrets(install.Namespace).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"delete configmaps", func() error {
			return sa.CoreV1().ConfigMaps(install.Namespace).Delete(ctx, "rbac-probe", metav1.DeleteOptions{})
		}},
		{"create configmaps in kube-system", func() error {
			_, err := sa.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"create pods", func() error {
			_, err := sa.CoreV1().Pods(install.Namespace).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, metav1.CreateOptions{})
			return err
		}},
		{"list daemonsets", func() error {
			_, err := sa.AppsV1().DaemonSets(install.Namespace).List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		err := f.do()
		if !apierrors.IsForbidden(err) {
			t.Errorf("agent must not %s: got %v, want forbidden", f.what, err)
		}
	}
	_ = apiServer.admin.CoreV1().ConfigMaps(install.Namespace).Delete(ctx, "rbac-probe", metav1.DeleteOptions{})
}

// simNodes creates Node objects for simulated nodes (no kubelet), with
// InternalIPs 198.18.0.100 and up.
func simNodes(t *testing.T, names ...string) {
	t.Helper()
	simNodesFrom(t, 100, names...)
}

// simNodesFrom is simNodes with InternalIPs from 198.18.0.<base> up.
func simNodesFrom(t *testing.T, base int, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, n := range names {
		_, err := apiServer.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create node %s: %v", n, err)
		}
		// The node controller updates new Nodes too: retry on conflict.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			node, err := apiServer.admin.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return err
			}
			node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("198.18.0.%d", base+i)}}
			_, err = apiServer.admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("node %s status: %v", n, err)
		}
	}
}

// startFakeAgents runs the real agent loop, as the agent's ServiceAccount,
// for simulated nodes; each node is a fresh network namespace, so collect,
// node rules and service fingerprints run for real.
func startFakeAgents(t *testing.T, ctx context.Context, names ...string) {
	t.Helper()
	for _, n := range names {
		ns := testutil.NewNetns(t, "cd-node")
		a := &Agent{Client: agentClient(t), Namespace: install.Namespace, Node: n, Netns: testutil.Path(ns),
			KubeProxyHealthz: "http://127.0.0.1:10256/healthz"}
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(ctx) }()
		t.Cleanup(func() { <-done })
	}
}

func TestSilentNodeIsErrorWithinDeadline(t *testing.T) {
	needAPIServer(t)
	testutil.RequireProgram(t, "iptables-save")
	nodes := []string{"sim-1", "sim-2", "sim-3"}
	simNodes(t, nodes...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startFakeAgents(t, ctx, "sim-1", "sim-2") // sim-3's agent never answers
	t.Cleanup(cancel)

	const deadline = 8 * time.Second
	req := &Request{ID: NewID(), Nodes: nodes, Deadline: time.Now().Add(deadline), Checks: []string{CheckNode, CheckServices}}
	start := time.Now()
	if err := WriteRequest(ctx, apiServer.admin, install.Namespace, req); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := Cleanup(cctx, apiServer.admin, install.Namespace, req.ID); err != nil {
			t.Error(err)
		}
		l, _ := apiServer.admin.CoreV1().ConfigMaps(install.Namespace).List(cctx, metav1.ListOptions{LabelSelector: LabelResult + "=" + req.ID})
		if l != nil && len(l.Items) > 0 {
			t.Errorf("%d results left after cleanup", len(l.Items))
		}
	}()
	wctx, wcancel := context.WithDeadline(ctx, req.Deadline)
	got, missing := WaitResults(wctx, apiServer.admin, install.Namespace, req.ID, nodes, nil)
	wcancel()
	took := time.Since(start)
	if took > deadline+time.Second {
		t.Errorf("waited %s, deadline %s", took, deadline)
	}
	if len(got) != 2 || got["sim-1"] == nil || got["sim-2"] == nil {
		t.Fatalf("results from %d nodes, want sim-1 and sim-2; missing %v", len(got), missing)
	}
	if _, ok := missing["sim-3"]; !ok || len(missing) != 1 {
		t.Fatalf("missing %v, want sim-3", missing)
	}
	for _, n := range []string{"sim-1", "sim-2"} {
		r := got[n]
		if len(r.Checks) == 0 {
			t.Errorf("%s: no node checks ran (errors %v)", n, r.Errors)
		}
		if r.Summary.Sysctls["net.ipv4.ip_forward"] == "" {
			t.Errorf("%s: no sysctls in the summary", n)
		}
	}
	snap, err := cluster.Collect(ctx, apiServer.admin)
	if err != nil {
		t.Fatal(err)
	}
	rep := cluster.Reduce(snap, nil, got, missing)
	var agentErr bool
	for _, c := range rep.Checks {
		if c.ID == "agent" && c.Node == "sim-3" && c.Status == "error" {
			agentErr = true
		}
	}
	if !agentErr {
		t.Errorf("no agent error check for sim-3")
	}
	t.Logf("2 of 3 nodes answered in %s; %s", took, rep.Verdict(3))
}

// netdoctorBin is the CLI binary: $NETDOCTOR_BIN, else built once.
var netdoctorBin struct {
	once sync.Once
	path string
	err  error
}

func needBinary(t *testing.T) string {
	t.Helper()
	netdoctorBin.once.Do(func() {
		if p := os.Getenv("NETDOCTOR_BIN"); p != "" {
			if _, err := os.Stat(p); err == nil {
				netdoctorBin.path = p
				return
			}
		}
		out := filepath.Join(apiServer.tmp, "netdoctor")
		cmd := exec.Command("go", "build", "-o", out, "../../cmd/netdoctor")
		if b, err := cmd.CombinedOutput(); err != nil {
			netdoctorBin.err = fmt.Errorf("build netdoctor: %w\n%s", err, b)
			return
		}
		netdoctorBin.path = out
	})
	if netdoctorBin.err != nil {
		t.Fatal(netdoctorBin.err)
	}
	return netdoctorBin.path
}

// runCLI runs the netdoctor binary inside the control plane's namespace.
func runCLI(t *testing.T, timeout time.Duration, args ...string) (stdout, stderr string, code int, took time.Duration) {
	t.Helper()
	bin := needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	r, err := command.Run(ctx, command.Cmd{Name: bin, Args: args, Netns: testutil.Path(apiServer.netns)})
	took = time.Since(start)
	if r == nil {
		t.Fatalf("run netdoctor %v: %v", args, err)
	}
	return string(r.Stdout), string(r.Stderr), r.ExitCode, took
}

func TestCheckCommandWithInstalledAgent(t *testing.T) {
	needAPIServer(t)
	testutil.RequireProgram(t, "iptables-save")
	simNodes(t, "sim-1", "sim-2", "sim-3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startFakeAgents(t, ctx, "sim-1", "sim-2")
	t.Cleanup(cancel)
	out, errOut, code, took := runCLI(t, 2*time.Minute, "check", "--kubeconfig", apiServer.cp.Kubeconfig, "--timeout", "8s", "--nodes", "sim-1,sim-2,sim-3", "-o", "json")
	if code != 1 && code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var rep struct {
		SchemaVersion string `json:"schemaVersion"`
		Checks        []struct{ ID, Node, Status, Reason string }
		Findings      []struct{ ID, Node string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	status := map[string]string{}
	for _, c := range rep.Checks {
		if c.ID == "agent" {
			status[c.Node] = c.Status
		}
	}
	if status["sim-1"] != "pass" || status["sim-2"] != "pass" || status["sim-3"] != "error" {
		t.Errorf("agent checks %v, want sim-1/sim-2 pass, sim-3 error", status)
	}
	if took > 20*time.Second {
		t.Errorf("check took %s with an 8 s deadline", took)
	}
	// Its request and results are gone.
	l, err := apiServer.admin.CoreV1().ConfigMaps(install.Namespace).List(context.Background(), metav1.ListOptions{LabelSelector: LabelRequest})
	if err != nil || len(l.Items) != 0 {
		t.Errorf("requests left: %v %v", err, l)
	}
	t.Logf("check exit %d in %s, %d findings", code, took, len(rep.Findings))
}

func TestCheckCommandTemporaryAgentRemoved(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	// Uninstall the package's agent; reinstall afterwards for other tests.
	uctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := install.Uninstall(uctx, apiServer.admin, true); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = install.Apply(c, apiServer.admin, install.Objects(install.Options{}))
	})
	simNodes(t, "sim-1")
	// No kubelet runs the temporary agent: every node ends as error, and the
	// temporary agent must be gone afterwards all the same.
	out, errOut, code, took := runCLI(t, 3*time.Minute, "check", "--kubeconfig", apiServer.cp.Kubeconfig, "--timeout", "4s", "--nodes", "sim-1")
	t.Logf("exit %d in %s\n%s\n%s", code, took, out, errOut)
	if code != 2 || !strings.Contains(errOut, "no node's agent answered") {
		t.Errorf("no agent answered: exit %d, want 2 with the reason:\n%s", code, errOut)
	}
	if _, err := apiServer.admin.CoreV1().Namespaces().Get(ctx, install.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s still there after check: %v", install.Namespace, err)
	}
	if _, err := apiServer.admin.RbacV1().ClusterRoles().Get(ctx, install.AgentName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("clusterrole still there: %v", err)
	}
}

func TestCheckNoAgentAgainstAPI(t *testing.T) {
	needAPIServer(t)
	out, errOut, code, _ := runCLI(t, time.Minute, "check", "--kubeconfig", apiServer.cp.Kubeconfig, "--no-agent")
	if code == 2 {
		t.Fatalf("exit 2: %s", errOut)
	}
	if !strings.Contains(out, "cluster check of") {
		t.Errorf("output:\n%s", out)
	}
	t.Logf("exit %d\n%s", code, out)
}
