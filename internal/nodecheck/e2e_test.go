package nodecheck_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cli"
	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// rulesTestdata holds the fixtures this test captures for the rules' unit tests.
var rulesTestdata = filepath.Join("..", "rules", "testdata")

var update = flag.Bool("update", false, "rewrite testdata/ (snapshots captured from the lab namespaces, golden files)")

// nodeCheck runs `netdoctor node check -o json` (the real CLI code path)
// against the lab node and returns the report and exit code.
func nodeCheck(t testing.TB, lab *flannelLab) (*finding.Report, int) {
	t.Helper()
	var out, errb bytes.Buffer
	args := []string{"netdoctor", "node", "check", "--netns", lab.node, "--node-name", "node-1",
		"--root-dir", lab.rootDir, "--service-cidr", serviceCIDR, "-o", "json"}
	code := cli.Run(args, &out, &errb)
	var r finding.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("node check (exit %d) printed no JSON report: %v\nstdout: %s\nstderr: %s", code, err, out.String(), errb.String())
	}
	return &r, code
}

// captureFixture saves the lab node's snapshot as testdata/<name>.json when
// -update is given: the fixtures of the rules' unit tests are these captures.
func captureFixture(t testing.TB, lab *flannelLab, name string) {
	t.Helper()
	if !*update {
		return
	}
	snap, err := collect.Collect(context.Background(), collect.Options{Netns: lab.node, NodeName: "node-1", RootDir: lab.rootDir})
	if err != nil {
		t.Fatal(err)
	}
	snap.Processes = nil // the host's processes, not the lab node's
	snap.Netns = "node-1"
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rulesTestdata, name+".json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// problems returns the IDs of warning and critical findings, sorted.
func problems(r *finding.Report) []string { return r.ProblemIDs() }

// checkStatus returns the check with the ID (zero if there is none).
func checkStatus(r *finding.Report, id string) finding.Check {
	c, _ := r.Check(id)
	return c
}

func assertClean(t *testing.T, lab *flannelLab) {
	t.Helper()
	r, code := nodeCheck(t, lab)
	if code != 0 || len(problems(r)) > 0 {
		b, _ := json.MarshalIndent(r.Findings, "", "  ")
		t.Fatalf("healthy node: exit %d, findings %v, want exit 0 and none:\n%s", code, problems(r), b)
	}
	for _, c := range r.Checks {
		if c.Status == finding.Error {
			t.Errorf("healthy node: check %s could not run: %s", c.ID, c.Reason)
		}
	}
}

func TestNodeCheckEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds namespaces as root")
	}
	testutil.RequireRoot(t)
	lab := newFlannelLab(t)

	t.Run("clean", func(t *testing.T) {
		assertClean(t, lab)
		r, _ := nodeCheck(t, lab)
		// Everything a flannel node needs was found and checked, not skipped.
		for _, id := range []string{"ip-forward-disabled", "bridge-nf-disabled", "forward-policy-drop", "overlay-port-blocked",
			"pod-cidr-overlap", "pod-route-missing", "overlay-fdb-missing", "overlay-source-mismatch", "mtu-mismatch",
			"kube-proxy-cluster-cidr-missing", "kube-proxy-cluster-cidr-wrong", "ephemeral-ports-exhausted", "nic-queue-drops"} {
			if c := checkStatus(r, id); c.Status != finding.Pass {
				t.Errorf("check %s: %s (%s), want pass on the healthy node", id, c.Status, c.Reason)
			}
		}
		captureFixture(t, lab, "flannel-clean")
	})

	t.Run("by-pid", func(t *testing.T) {
		// A process of the node namespace selects it, as on a real node
		// (netdoctor node check --pid $(pidof kube-proxy)).
		var cmd *exec.Cmd
		err := namespace.Do(testutil.Path(lab.node), func() error {
			cmd = exec.Command("sleep", "60")
			return cmd.Start()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		var out, errb bytes.Buffer
		code := cli.Run([]string{"netdoctor", "node", "check", "--pid", strconv.Itoa(cmd.Process.Pid), "--root-dir", lab.rootDir, "-o", "json"}, &out, &errb)
		var r finding.Report
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("exit %d: %v %s", code, err, errb.String())
		}
		if code != 0 || len(problems(&r)) != 0 || checkStatus(&r, "overlay-port-blocked").Status != finding.Pass {
			t.Fatalf("node check --pid: exit %d, findings %v, overlay check %+v", code, problems(&r), checkStatus(&r, "overlay-port-blocked"))
		}
	})

	nodeNS := lab.node
	sh := func(args ...string) func(t *testing.T) {
		return func(t *testing.T) { t.Helper(); mustRunIn(t, nodeNS, args...) }
	}
	var closeConns func()
	origRPFilter := ""
	tests := []struct {
		name   string
		want   string
		inject func(t *testing.T)
		heal   func(t *testing.T)
		// broken, when set, proves the fault is real: pod A's ping to pod C fails.
		broken bool
		// twoSnapshots: the finding is about counters rising, so the node
		// is collected before and after the injection (`node collect`) and
		// the pair analysed (`analyze AFTER --before BEFORE`).
		twoSnapshots bool
		// bigBroken: full-size DF packets from pod A to pod C are lost, small ones pass.
		bigBroken bool
	}{
		{name: "ip-forward-disabled", want: "ip-forward-disabled", broken: true,
			inject: sh("sysctl", "-qw", "net.ipv4.ip_forward=0"), heal: sh("sysctl", "-qw", "net.ipv4.ip_forward=1")},
		{name: "bridge-nf-disabled", want: "bridge-nf-disabled",
			inject: sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"), heal: sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")},
		{name: "forward-policy-drop", want: "forward-policy-drop", broken: true,
			inject: sh("iptables", "-P", "FORWARD", "DROP"), heal: sh("iptables", "-P", "FORWARD", "ACCEPT")},
		{name: "forward-policy-drop-nft", want: "forward-policy-drop", broken: true,
			inject: func(t *testing.T) {
				mustRunIn(t, nodeNS, "nft", "add", "table", "inet", "ndtfw")
				mustRunIn(t, nodeNS, "nft", "add", "chain", "inet", "ndtfw", "podfwd", "{ type filter hook forward priority 10 ; policy drop ; }")
				mustRunIn(t, nodeNS, "nft", "add", "rule", "inet", "ndtfw", "podfwd", "ct", "state", "established,related", "accept")
			},
			heal: sh("nft", "delete", "table", "inet", "ndtfw")},
		{name: "overlay-port-blocked", want: "overlay-port-blocked", broken: true,
			inject: sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"),
			heal:   sh("iptables", "-D", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP")},
		{name: "overlay-port-blocked-nft", want: "overlay-port-blocked", broken: true,
			inject: func(t *testing.T) {
				mustRunIn(t, nodeNS, "nft", "add", "table", "inet", "ndtfw")
				mustRunIn(t, nodeNS, "nft", "add", "chain", "inet", "ndtfw", "out", "{ type filter hook output priority 0 ; policy accept ; }")
				mustRunIn(t, nodeNS, "nft", "add", "rule", "inet", "ndtfw", "out", "udp", "dport", "8472", "counter", "drop")
			},
			heal: sh("nft", "delete", "table", "inet", "ndtfw")},
		{name: "pod-cidr-overlap", want: "pod-cidr-overlap",
			inject: sh("ip", "addr", "add", "198.18.129.128/25", "dev", "eth0"), heal: sh("ip", "addr", "del", "198.18.129.128/25", "dev", "eth0")},
		{name: "pod-cidr-overlap-latent", want: "pod-cidr-overlap",
			inject: sh("ip", "route", "add", peerPodCIDR, "via", "198.18.0.254", "dev", "eth0", "metric", "100"),
			heal:   sh("ip", "route", "del", peerPodCIDR, "via", "198.18.0.254", "dev", "eth0", "metric", "100")},
		{name: "pod-route-missing", want: "pod-route-missing", broken: true,
			inject: sh("ip", "route", "del", peerPodCIDR), heal: sh("ip", "route", "add", peerPodCIDR, "via", "198.18.130.0", "dev", "flannel.1", "onlink")},
		{name: "overlay-fdb-missing", want: "overlay-fdb-missing", broken: true,
			inject: sh("bridge", "fdb", "del", peerVTEPMAC, "dev", "flannel.1", "dst", peerIP, "self"),
			heal:   sh("bridge", "fdb", "append", peerVTEPMAC, "dev", "flannel.1", "dst", peerIP, "self", "permanent")},
		{name: "overlay-fdb-wrong-dst", want: "overlay-fdb-missing", broken: true,
			inject: sh("bridge", "fdb", "replace", peerVTEPMAC, "dev", "flannel.1", "dst", nodeIP, "self", "permanent"),
			heal:   sh("bridge", "fdb", "replace", peerVTEPMAC, "dev", "flannel.1", "dst", peerIP, "self", "permanent")},
		{name: "overlay-source-mismatch", want: "overlay-source-mismatch",
			inject: func(t *testing.T) {
				// A second (DHCP-like) address on the uplink becomes the tunnel source.
				mustRunIn(t, nodeNS, "ip", "addr", "add", "198.18.0.21/24", "dev", "eth0")
				mustRunIn(t, nodeNS, "ip", "link", "del", "flannel.1")
				addVTEP(t, nodeSide(nodeNS), "198.18.0.21")
			},
			heal: func(t *testing.T) {
				mustRunIn(t, nodeNS, "ip", "link", "del", "flannel.1")
				addVTEP(t, nodeSide(nodeNS), nodeIP)
				mustRunIn(t, nodeNS, "ip", "addr", "del", "198.18.0.21/24", "dev", "eth0")
			}},
		{name: "mtu-mismatch", want: "mtu-mismatch", bigBroken: true,
			inject: sh("ip", "link", "set", "eth0", "mtu", "1400"), heal: sh("ip", "link", "set", "eth0", "mtu", "1500")},
		{name: "rp-filter-strict", want: "rp-filter-strict",
			inject: func(t *testing.T) {
				origRPFilter = strings.TrimSpace(mustRunIn(t, nodeNS, "sysctl", "-n", "net.ipv4.conf.all.rp_filter"))
				// A second uplink to the peer: replies may leave by the other one.
				mustRunIn(t, nodeNS, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", lab.peer)
				mustRunIn(t, nodeNS, "ip", "addr", "add", "198.18.1.1/24", "dev", "eth1")
				mustRunIn(t, nodeNS, "ip", "link", "set", "eth1", "up")
				mustRunIn(t, lab.peer, "ip", "addr", "add", "198.18.1.2/24", "dev", "eth1")
				mustRunIn(t, lab.peer, "ip", "link", "set", "eth1", "up")
				mustRunIn(t, nodeNS, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
			},
			heal: func(t *testing.T) {
				mustRunIn(t, nodeNS, "ip", "link", "del", "eth1")
				mustRunIn(t, nodeNS, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter="+origRPFilter)
			}},
		{name: "nic-queue-drops", want: "nic-queue-drops", twoSnapshots: true,
			inject: func(t *testing.T) {
				mustRunIn(t, nodeNS, "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9", "netns", lab.peer)
				mustRunIn(t, nodeNS, "ip", "link", "set", "eth9", "up")
				mustRunIn(t, lab.peer, "ip", "link", "set", "eth9", "up")
				sendUnknownEthertype(t, lab.peer, "eth9", 5)
			},
			heal: sh("ip", "link", "del", "eth9")},
		{name: "ephemeral-ports-exhausted", want: "ephemeral-ports-exhausted",
			inject: func(t *testing.T) {
				mustRunIn(t, nodeNS, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009")
				closeConns = holdConnections(t, nodeNS, nodeIP+":9000", 9)
			},
			heal: func(t *testing.T) {
				if closeConns != nil {
					closeConns()
				}
				mustRunIn(t, nodeNS, "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")
			}},
		{name: "kube-proxy-cluster-cidr-missing", want: "kube-proxy-cluster-cidr-missing",
			inject: func(t *testing.T) {
				runWithStdin(t, nodeNS, withoutMasquerade(lab.kubeProxyRules, ""), "iptables-restore")
			},
			heal: func(t *testing.T) { runWithStdin(t, nodeNS, lab.kubeProxyRules, "iptables-restore") }},
		{name: "kube-proxy-cluster-cidr-wrong", want: "kube-proxy-cluster-cidr-wrong",
			inject: func(t *testing.T) {
				runWithStdin(t, nodeNS, withoutMasquerade(lab.kubeProxyRules, serviceCIDR), "iptables-restore")
			},
			heal: func(t *testing.T) { runWithStdin(t, nodeNS, lab.kubeProxyRules, "iptables-restore") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := filepath.Join(t.TempDir(), "before.json")
			if tt.twoSnapshots {
				collectFile(t, lab, before)
			}
			tt.inject(t)
			healed := false
			heal := func() {
				if !healed {
					healed = true
					tt.heal(t)
				}
			}
			defer heal()
			r, code := nodeCheck(t, lab)
			if tt.twoSnapshots {
				after := filepath.Join(t.TempDir(), "after.json")
				collectFile(t, lab, after)
				r, code = analyze(t, after, "--before", before)
			}
			got := problems(r)
			if len(got) != 1 || got[0] != tt.want {
				b, _ := json.MarshalIndent(r.Findings, "", "  ")
				t.Fatalf("after injecting %s: findings %v, want exactly [%s]\n%s", tt.name, got, tt.want, b)
			}
			if code != 1 {
				t.Errorf("exit code %d, want 1 (findings)", code)
			}
			for _, f := range r.Findings {
				if f.ID != tt.want {
					continue
				}
				wantNode := "node-1"
				if tt.twoSnapshots {
					wantNode = r.Checks[0].Node // node collect names it after the host
				}
				if len(f.Evidence) == 0 || f.Remediation == "" || f.Message == "" || f.Node != wantNode || wantNode == "" {
					t.Errorf("finding %s lacks evidence, remediation, message or node: %+v", f.ID, f)
				}
				t.Logf("%s [%s] %s\n  evidence: %s", f.ID, f.Severity, f.Message, strings.Join(f.Evidence, "\n            "))
			}
			if c := checkStatus(r, tt.want); c.Status != finding.Fail {
				t.Errorf("check %s status %s, want fail", tt.want, c.Status)
			}
			if tt.bigBroken && (!lab.ping(t, podC) || lab.pingDF(t, podC, 1422)) {
				t.Errorf("the injected fault %s should pass small pings and lose 1422-byte DF pings from pod %s to pod %s", tt.name, podA, podC)
			}
			if tt.broken && lab.ping(t, podC) {
				t.Errorf("the injected fault %s did not break pod %s -> pod %s: the lab does not prove it", tt.name, podA, podC)
			}
			captureFixture(t, lab, "flannel-"+tt.name)
			heal()
			if !lab.ping(t, podC) {
				t.Fatalf("healing %s did not restore pod %s -> pod %s", tt.name, podA, podC)
			}
			if tt.bigBroken && !lab.pingDF(t, podC, 1422) {
				t.Fatalf("healing %s did not restore 1422-byte DF pings", tt.name)
			}
			if r, _ := nodeCheck(t, lab); len(problems(r)) != 0 {
				t.Fatalf("after healing %s the node still has findings %v", tt.name, problems(r))
			}
		})
	}
}

// collectFile runs `netdoctor node collect` on the lab node into file.
func collectFile(t testing.TB, lab *flannelLab, file string) {
	t.Helper()
	var out, errb bytes.Buffer
	if code := cli.Run([]string{"netdoctor", "node", "collect", "--netns", lab.node, "-f", file}, &out, &errb); code != 0 {
		t.Fatalf("node collect: exit %d: %s", code, errb.String())
	}
}

// analyze runs `netdoctor analyze FILE ARGS... -o json` with the lab's CIDRs.
func analyze(t testing.TB, file string, args ...string) (*finding.Report, int) {
	t.Helper()
	var out, errb bytes.Buffer
	argv := append([]string{"netdoctor", "analyze", file, "--cluster-cidr", clusterCIDR, "--service-cidr", serviceCIDR, "-o", "json"}, args...)
	code := cli.Run(argv, &out, &errb)
	var r finding.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("analyze (exit %d) printed no JSON report: %v\nstderr: %s", code, err, errb.String())
	}
	return &r, code
}

// nodeSide is the node half of the lab wiring (for recreating flannel.1).
func nodeSide(ns string) side {
	return side{ns: ns, ip: nodeIP, podNet: nodePodCIDR, gw: "198.18.129.1", vtep: "198.18.129.0", vtepMAC: nodeVTEPMAC,
		remoteIP: peerIP, remotePodNet: peerPodCIDR, remoteVTEP: "198.18.130.0", remoteMAC: peerVTEPMAC}
}
