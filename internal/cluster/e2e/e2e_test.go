package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netdoctor/netdoctor/internal/cluster"
	labpkg "github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/rules"
)

// The lab is shared by every test of the package: built in TestMain when
// the tests can run (root, the lab binaries, not -short), removed after.
var lab struct {
	bin        string // the netdoctor binary
	kubeconfig string
	skip       string // why the tests cannot run here (no root, -short, no lab binary)
	fail       string // why they could not run where they should: every test fails with it
	tmp        string
	state      string // the lab's state root
	up         bool
	upstream   string // the lab's upstream DNS server (asked directly by dns-upstream-failed)
}

const labName = "cd"

func TestMain(m *testing.M) {
	code := func() int {
		setup()
		defer teardown()
		return m.Run()
	}()
	os.Exit(code)
}

func setup() {
	if os.Geteuid() != 0 {
		lab.skip = "skipped: needs root (the lab is network namespaces)"
		return
	}
	for _, a := range os.Args {
		if a == "-test.short=true" {
			lab.skip = "skipped in -short: builds a whole lab"
			return
		}
	}
	k8s := os.Getenv("NETDOCTOR_K8S_BIN")
	if k8s == "" {
		k8s, _ = filepath.Abs("../../../bin/netdoctor-k8s")
	}
	if _, err := os.Stat(k8s); err != nil {
		lab.skip = "skipped: no lab Kubernetes binary (make labbins): " + err.Error()
		return
	}
	_ = os.Setenv("NETDOCTOR_K8S_BIN", k8s)
	tmp, err := os.MkdirTemp("", "ndt-cd-e2e-")
	if err != nil {
		lab.fail = "make a temporary directory: " + err.Error()
		return
	}
	lab.tmp = tmp
	lab.bin = os.Getenv("NETDOCTOR_BIN")
	if _, err := os.Stat(lab.bin); lab.bin == "" || err != nil {
		lab.bin = filepath.Join(tmp, "netdoctor")
		if out, err := exec.Command("go", "build", "-o", lab.bin, "../../../cmd/netdoctor").CombinedOutput(); err != nil {
			lab.fail = fmt.Sprintf("build netdoctor: %v\n%s", err, out)
			return
		}
	}
	// The lab gets its own underlay and state root so that it runs next to
	// other engineers' labs (the default underlay is theirs).
	lab.state = filepath.Join(tmp, "state")
	_ = os.Setenv("NETDOCTOR_LAB_STATE", lab.state)
	// Both kube-proxy modes: NETDOCTOR_E2E_PROXY_MODE=nftables (default iptables).
	mode := os.Getenv("NETDOCTOR_E2E_PROXY_MODE")
	if mode == "" {
		mode = "iptables"
	}
	cfg := labpkg.Config{Name: labName, Nodes: 3, ProxyMode: mode,
		UnderlayCIDR: netip.MustParsePrefix("198.18.8.0/24"),
		ClusterCIDR:  netip.MustParsePrefix("198.18.64.0/18"),
		ServiceCIDR:  netip.MustParsePrefix("198.19.192.0/18"),
		StateRoot:    lab.state, K8sBin: k8s, SelfBin: lab.bin}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l, err := labpkg.Up(ctx, cfg, labpkg.UpOptions{})
	if err != nil {
		// Up removed what it had built; a lab of this name that another run keeps is
		// not this one's to remove (teardown only downs a lab this run brought up).
		lab.fail = "the lab did not come up: " + err.Error()
		return
	}
	lab.up = true
	lab.kubeconfig = l.State.Kubeconfig
	lab.upstream = cfg.DNSIP().String()
}

func teardown() {
	if lab.kubeconfig != "" {
		_, _, _ = run(2*time.Minute, "uninstall", "--kubeconfig", lab.kubeconfig)
	}
	if lab.up {
		_, _ = labpkg.Down(labName, lab.state)
	}
	if lab.tmp != "" {
		_ = os.RemoveAll(lab.tmp)
	}
}

func run(timeout time.Duration, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, lab.bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	return out.String(), errOut.String(), code
}

func needLab(t *testing.T) {
	t.Helper()
	if lab.skip != "" {
		t.Skip(lab.skip)
	}
	if lab.fail != "" {
		t.Fatal(lab.fail)
	}
}

type checkReport struct {
	Findings []struct {
		ID, Severity, Node, Subject, Message string
		Evidence                             []string
	} `json:"findings"`
	Checks []struct{ ID, Node, Status, Reason string } `json:"checks"`
	Matrix *struct {
		Rows []struct {
			Node, Netns string
			Cells       map[string]struct {
				Status string
				OK     int
				Total  int
				Odd    bool
			}
		}
	} `json:"matrix"`
}

func check(t *testing.T, args ...string) (*checkReport, int, time.Duration) {
	t.Helper()
	start := time.Now()
	out, errOut, code := run(3*time.Minute, append([]string{"check", "--kubeconfig", lab.kubeconfig, "-o", "json", "--external-name", "www.ext.ndlab.test", "--upstream", lab.upstream}, args...)...)
	took := time.Since(start)
	var r checkReport
	if code == 2 {
		t.Logf("check exit 2: %s", errOut)
		return &r, code, took
	}
	if code != 0 && code != 1 {
		t.Fatalf("check exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check json: %v\n%s", err, out)
	}
	return &r, code, took
}

func serious(r *checkReport) []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity == "critical" || f.Severity == "warning" {
			out = append(out, f.ID+"@"+f.Node+": "+f.Message+"\n\t"+strings.Join(f.Evidence, "\n\t"))
		}
	}
	return out
}

// TestTemporaryAgentHealthyLab: no agent installed, check deploys a
// temporary one, finds nothing wrong in the healthy lab, and removes it.
func TestTemporaryAgentHealthyLab(t *testing.T) {
	needLab(t)
	r, code, took := check(t, "--timeout", "40s")
	t.Logf("check with a temporary agent: exit %d in %s", code, took)
	if s := serious(r); len(s) > 0 {
		t.Errorf("healthy lab has findings:\n%s", strings.Join(s, "\n"))
	}
	for _, c := range r.Checks {
		if c.ID == "agent" && c.Status != "pass" {
			t.Errorf("agent on %s: %s %s", c.Node, c.Status, c.Reason)
		}
	}
	noAgentLeft(t, "check")
}

// noAgentLeft fails t if the temporary agent's namespace or pods are still there after what.
func noAgentLeft(t *testing.T, what string) {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", lab.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Dial = labpkg.GuardDial(nil) // from the host: only over the lab's root link, never the default route
	cs := kubernetes.NewForConfigOrDie(rc)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "netdoctor", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("temporary agent's namespace still there after %s: %v", what, err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=netdoctor"})
	if err != nil || len(pods.Items) != 0 {
		t.Errorf("netdoctor pods left after %s: %v %d", what, err, len(pods.Items))
	}
}

// TestTemporaryAgentCaptureTwoNodes: no agent installed, a capture on two nodes at once
// deploys one temporary agent for both, merges what each node saw (the kubelets' API
// traffic on each node's uplink) and removes the agent.
func TestTemporaryAgentCaptureTwoNodes(t *testing.T) {
	needLab(t)
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Fatal("tshark is needed to read the capture back (apt install tshark)")
	}
	file := filepath.Join(t.TempDir(), "two.pcapng")
	out, errOut, code := run(2*time.Minute, "capture", "--kubeconfig", lab.kubeconfig, "--node", "node1", "--node", "node2",
		"--iface", "eth0", "--duration", "4s", "-w", file, "tcp", "port", "6443")
	if code != 0 {
		t.Fatalf("capture on two nodes: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "deploying a temporary one") {
		t.Errorf("no temporary agent announced:\n%s", errOut)
	}
	b, err := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "tcp.port").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	per := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		name, ports, _ := strings.Cut(line, "\t")
		if !strings.Contains(ports, "6443") {
			t.Errorf("a packet the filter should have kept out: %q", line)
		}
		per[name]++
	}
	t.Logf("packets per point: %v\n%s", per, out)
	for _, point := range []string{"node1/host/eth0", "node2/host/eth0"} {
		if per[point] == 0 {
			t.Errorf("no packets from %s: %v", point, per)
		}
	}
	noAgentLeft(t, "capture")
}

// TestFaults: with the agent installed, each injectable fault is found on
// the node it was injected on.
func TestFaults(t *testing.T) {
	needLab(t)
	out, errOut, code := run(2*time.Minute, "install", "--kubeconfig", lab.kubeconfig)
	if code != 0 {
		t.Fatalf("install: %s %s", out, errOut)
	}
	agentsInstalled = true
	// Wait until every agent answers (the agents' start, not a fixed sleep).
	var r *checkReport
	var took time.Duration
	for i := 0; i < 12; i++ {
		r, code, took = check(t, "--timeout", "10s")
		answered := 0
		for _, c := range r.Checks {
			if c.ID == "agent" && c.Status == "pass" {
				answered++
			}
		}
		if answered == 3 {
			break
		}
	}
	t.Logf("healthy lab, installed agent: exit %d in %s", code, took)
	if s := serious(r); len(s) > 0 {
		t.Errorf("healthy lab has findings:\n%s", strings.Join(s, "\n"))
	}
	fout, _, _ := run(time.Minute, "lab", "faults", "-o", "json")
	var faults []struct {
		ID    string `json:"id"`
		Group string `json:"group"`
	}
	if err := json.Unmarshal([]byte(fout), &faults); err != nil {
		t.Fatalf("lab faults: %v\n%s", err, fout)
	}
	for _, f := range faults {
		t.Run(f.ID, func(t *testing.T) {
			if _, e, c := run(2*time.Minute, "lab", "inject", "--name", labName, f.ID, "--node", "node2"); c != 0 {
				t.Fatalf("the lab could not inject %s: %s", f.ID, e)
			}
			defer run(2*time.Minute, "lab", "heal", "--name", labName, f.ID)
			if f.ID == "node-pod-cidr-missing" {
				// The fault exhausts the cluster CIDR; it shows when a node
				// registers after that: register one, as a scale-out would.
				cs := labClient(t)
				ctx := context.Background()
				if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cd-scaleout"}}, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				defer func() { _ = cs.CoreV1().Nodes().Delete(ctx, "cd-scaleout", metav1.DeleteOptions{}) }()
			}
			var r *checkReport
			var took time.Duration
			found := false
			var elsewhere []string
			// Faults made of Kubernetes objects take a moment to converge
			// (pods start, controllers act, a DaemonSet rolls): ask again a few
			// times, until the finding is there and nothing critical elsewhere.
			for attempt := 0; attempt < 6 && (!found || len(elsewhere) > 0); attempt++ {
				if attempt > 0 {
					time.Sleep(3 * time.Second)
				}
				r, _, took = check(t, "--timeout", "20s")
				found, elsewhere = hasFinding(r, f.ID), criticalElsewhere(r, f.ID)
			}
			if len(elsewhere) > 0 {
				t.Errorf("%s on node2: critical findings elsewhere:\n%s", f.ID, strings.Join(elsewhere, "\n"))
			}
			for _, x := range r.Findings {
				if x.ID != f.ID {
					continue
				}
				switch {
				case x.Node == "node2":
					found = true
				case clusterWide[f.ID] && x.Node == "":
					found = true // a fault of a cluster object, not of a node
				case f.ID == "node-pod-cidr-missing" && x.Node == "cd-scaleout":
					found = true
				}
			}
			if !found {
				_, mine := clusterRuleIDs()[f.ID]
				_, nodeRule := rules.Lookup(f.ID)
				switch {
				case !mine && !nodeRule:
					t.Errorf("no detector for %s is registered (neither a cluster rule nor a node rule)", f.ID)
				case !mine:
					t.Errorf("the node rule %s (internal/rules) did not fire on the agent's facts of node2", f.ID)
				}
				t.Errorf("%s not found on node2 in %s; findings: %v", f.ID, took, serious(r))
			}
			broken := 0
			if r.Matrix != nil {
				for _, row := range r.Matrix.Rows {
					for col, c := range row.Cells {
						if c.Status == "fail" || c.Status == "partial" {
							broken++
							t.Logf("matrix: %s (%s) %s %s %d/%d", row.Node, row.Netns, col, c.Status, c.OK, c.Total)
						}
					}
				}
			}
			if broken == 0 && f.Group == "datapath" && f.ID != "bridge-nf-disabled" {
				t.Errorf("%s: the matrix shows no broken cell", f.ID)
			}
			t.Logf("%s found in %s, %d broken matrix cells", f.ID, took, broken)
			for _, x := range r.Findings {
				if x.ID == f.ID {
					t.Logf("finding %s@%s %s: %s\n\tevidence: %s", x.ID, x.Node, x.Severity, x.Message, strings.Join(x.Evidence, "\n\t          "))
				}
			}
		})
	}
}

// labClient is an admin client of the lab.
func labClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", lab.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Dial = labpkg.GuardDial(nil) // from the host: only over the lab's root link, never the default route
	return kubernetes.NewForConfigOrDie(rc)
}

// hasFinding says whether the report has the finding where the fault is.
func hasFinding(r *checkReport, id string) bool {
	for _, x := range r.Findings {
		if x.ID == id && (x.Node == "node2" || (clusterWide[id] && x.Node == "") || (id == "node-pod-cidr-missing" && x.Node == "cd-scaleout")) {
			return true
		}
	}
	return false
}

// criticalElsewhere lists the report's critical findings that a fault injected on node2 does
// not explain: on another node, other than its consequences there. A fault on node2 breaks
// DNS wherever node2 holds a CoreDNS replica (dns-resolution-failed anywhere); the nodes
// node-pod-cidr-missing registers have no kube-proxy, and the pod CIDR of its filler node no
// route (no datapath runs for them).
func criticalElsewhere(r *checkReport, id string) []string {
	labNode := map[string]bool{"node1": true, "node2": true, "node3": true}
	var out []string
	for _, x := range r.Findings {
		switch {
		case x.Severity != "critical", x.Node == "node2", x.Node == "", x.ID == "dns-resolution-failed":
		case id == "node-pod-cidr-missing" && (!labNode[x.Node] || x.ID == "pod-route-missing"):
		default:
			out = append(out, fmt.Sprintf("%s@%s: %s\n\t%s", x.ID, x.Node, x.Message, strings.Join(x.Evidence, "\n\t")))
		}
	}
	return out
}

// clusterWide are the faults of cluster objects: reported without a node.
var clusterWide = map[string]bool{"dns-pods-unavailable": true, "dns-upstream-failed": true, "service-no-endpoints": true, "kube-proxy-not-critical": true}

func clusterRuleIDs() map[string]bool {
	out := map[string]bool{}
	for _, r := range cluster.Rules() {
		out[r.ID] = true
	}
	return out
}

// TestAgentIdleMemory reads the resident memory of the installed agents
// (the lab runs them as processes of this machine) once they are idle.
func TestAgentIdleMemory(t *testing.T) {
	needLab(t)
	time.Sleep(3 * time.Second)
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) != 2 || args[0] != lab.bin || args[1] != "agent" {
			continue
		}
		// This lab's agents only, and which container of which pod each one is.
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		var owner, mark string
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, proc.OwnerEnv+"="); ok {
				owner = v
			}
			if v, ok := strings.CutPrefix(kv, kubelet.ContainerMarkEnv+"="); ok {
				mark = v
			}
		}
		if owner != labName {
			t.Logf("pid %s runs %s agent for another owner (%q): not counted", e.Name(), lab.bin, owner)
			continue
		}
		ppid := "?"
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if st, err := proc.ReadStat(pid); err == nil {
				ppid = strconv.Itoa(st.PPID)
			}
		}
		// Rss counts the binary's text pages (file-backed, shared with every
		// process of the same binary, reclaimable); Anon is the agent's own.
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "smaps_rollup"))
		if err != nil {
			continue
		}
		var parts []string
		for _, line := range strings.Split(string(st), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && (f[0] == "Rss:" || f[0] == "Pss:" || f[0] == "Anonymous:") {
				parts = append(parts, f[0]+" "+f[1]+" kB")
			}
		}
		t.Logf("agent pid %s (parent %s, container %s) idle: %s; Rss by mapping: %s", e.Name(), ppid, mark, strings.Join(parts, ", "), rssByMapping(e.Name(), lab.bin))
		n++
	}
	switch {
	case !agentsInstalled:
		t.Skip("skipped: TestFaults installs the agents this test measures; run it too")
	case n != 3:
		t.Errorf("found %d idle agent processes, want one per lab node (3)", n)
		for _, node := range []string{"node1", "node2", "node3"} {
			b, _ := os.ReadFile(filepath.Join(labpkg.LogDir(filepath.Join(lab.state, labName)), "kubelet-"+node+".log"))
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "netdoctor/") {
					t.Logf("%s kubelet: %s", node, line)
				}
			}
		}
	}
}

// rssByMapping sums /proc/PID/smaps' Rss by kind of mapping: the binary's text (r-xp), its
// read-only data and pclntab (r--p), its data (rw-p), anonymous memory and the rest.
func rssByMapping(pid, bin string) string {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "smaps"))
	if err != nil {
		return err.Error()
	}
	kb := map[string]int{}
	kind := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4:
			switch {
			case len(f) >= 6 && f[5] == bin:
				kind = "binary " + f[1]
			case len(f) < 6 || strings.HasPrefix(f[5], "["):
				kind = "anonymous"
			default:
				kind = "other files"
			}
		case len(f) >= 2 && f[0] == "Rss:":
			n, _ := strconv.Atoi(f[1])
			kb[kind] += n
		}
	}
	var out []string
	for _, k := range []string{"binary r-xp", "binary r--p", "binary rw-p", "anonymous", "other files"} {
		out = append(out, fmt.Sprintf("%s %d kB", k, kb[k]))
	}
	return strings.Join(out, ", ")
}

// agentsInstalled is set once TestFaults has installed the agent DaemonSet (it stays until
// the package's teardown).
var agentsInstalled bool
