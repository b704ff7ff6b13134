package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netdoctor/netdoctor/internal/cli"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// Snapshots captured from the flannel-like lab node of the rules' end-to-end test.
func fixture(name string) string {
	return filepath.Join("..", "rules", "testdata", name+".json")
}

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := cli.Run(append([]string{"netdoctor"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "snap.json")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAnalyzeBadInput(t *testing.T) {
	newer := strings.Replace(readFile(t, fixture("flannel-clean")), `"netdoctor.node/v1"`, `"netdoctor.node/v9"`, 1)
	tests := []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"missing file", []string{"analyze", "/nonexistent/snap.json"}, []string{"/nonexistent/snap.json", "no such file"}},
		{"empty file", []string{"analyze", writeFile(t, "  \n")}, []string{"snap.json", "the file is empty"}},
		{"malformed JSON", []string{"analyze", writeFile(t, "{\n  \"version\": \"netdoctor.node/v1\",\n  \"links\": [\n")}, []string{"snap.json", "not valid JSON"}},
		{"truncated JSON", []string{"analyze", writeFile(t, "{\n\"version\": \"netdoctor.node/v1\",\n\"links\": [}\n")}, []string{"snap.json", "not valid JSON at line 3"}},
		{"not a snapshot", []string{"analyze", writeFile(t, `{"schemaVersion":"v1","findings":[]}`)}, []string{"snap.json", `no "version"`}},
		{"wrong types", []string{"analyze", writeFile(t, `{"version":"netdoctor.node/v1","links":"eth0"}`)}, []string{"snap.json", "not a node snapshot"}},
		{"other version", []string{"analyze", writeFile(t, newer)}, []string{`version "netdoctor.node/v9"`}},
		{"no file", []string{"analyze"}, []string{"one snapshot FILE"}},
		{"nothing collected", []string{"analyze", writeFile(t, `{"version":"netdoctor.node/v1","node":"node-1"}`)}, []string{"no check could run"}},
		{"bad cidr flag", []string{"analyze", fixture("flannel-clean"), "--pod-cidr", "10.0.0.300/24"}, []string{"--pod-cidr", "10.0.0.300/24"}},
		{"bad output", []string{"analyze", fixture("flannel-clean"), "-o", "yaml"}, []string{"unknown output format"}},
		{"before of another node", []string{"analyze", fixture("flannel-clean"), "--before", writeFile(t, `{"version":"netdoctor.node/v1","node":"node-9"}`)}, []string{"same node"}},
		{"before is later", []string{"analyze", fixture("flannel-clean"), "--before", fixture("flannel-nic-queue-drops")}, []string{"swap them"}},
		{"before malformed", []string{"analyze", fixture("flannel-clean"), "--before", writeFile(t, "[")}, []string{"--before", "not valid JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(tt.args...)
			if code != cli.ExitError {
				t.Fatalf("exit %d, want 2; stdout %q stderr %q", code, out, errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not say %q", errs, w)
				}
			}
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAnalyzeFixtures(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"clean", []string{"analyze", fixture("flannel-clean")}, 0, []string{"✓ no faults found on node-1", "node-1: 0 critical, 0 warning"}},
		{"ip_forward off", []string{"analyze", fixture("flannel-ip-forward-disabled")}, 1,
			[]string{"✗ 1 critical on node-1", "[critical] ip-forward-disabled  node-1: IPv4 forwarding is off", "      sysctl net.ipv4.ip_forward = 0", "    fix: sysctl -w net.ipv4.ip_forward=1"}},
		{"drops since boot are a note", []string{"analyze", fixture("flannel-nic-queue-drops")}, 0, []string{"[info]", "nic-queue-drops"}},
		{"drops rising", []string{"analyze", fixture("flannel-nic-queue-drops"), "--before", fixture("flannel-clean")}, 1, []string{"[warning]  nic-queue-drops", "eth9: rx_dropped 5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out, errs)
			}
			for _, w := range tt.contains {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestAnalyzeJSON(t *testing.T) {
	code, out, _ := run("analyze", fixture("flannel-mtu-mismatch"), "-o", "json")
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	var r finding.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if r.SchemaVersion != "v1" || len(r.Findings) != 1 || r.Findings[0].ID != "mtu-mismatch" || r.Summary.Critical != 1 || len(r.Checks) != 16 {
		t.Fatalf("report %+v", r)
	}
}

func TestNodeCheckBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"node", "check", "--netns", "ndt-no-such-netns"}, "not found"},
		{[]string{"node", "check", "--netns", "x", "--pid", "1"}, "choose one"},
		{[]string{"node", "check", "--cluster-cidr", "10.244.0.0"}, "--cluster-cidr"},
		{[]string{"node", "check", "--root-dir", "/nonexistent-dir"}, "--root-dir"},
		{[]string{"node", "check", "-o", "xml"}, "unknown output format"},
	}
	for _, tt := range tests {
		code, _, errs := run(tt.args...)
		if code != cli.ExitError || !strings.Contains(errs, tt.want) {
			t.Errorf("%v: exit %d stderr %q, want 2 and %q", tt.args, code, errs, tt.want)
		}
	}
}

func TestLabUpBadInput(t *testing.T) {
	testutil.RequireRoot(t) // lab up refuses non-root first
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--name", "tbad", "--underlay-cidr", "198.18.0.0"}, "--underlay-cidr"},
		{[]string{"lab", "up", "--name", "tbad", "--underlay-cidr", "198.18.0.0/25"}, "needs at least a /24"},
		{[]string{"lab", "up", "--name", "tbad", "--underlay-cidr", "198.18.128.0/24"}, "overlaps pod (cluster) CIDR"},
		{[]string{"lab", "up", "--name", "tbad", "--cluster-cidr", "198.18.128.0/17", "--service-cidr", "198.18.200.0/24"}, "overlaps"},
		{[]string{"lab", "up", "--name", "Bad_Name"}, "lab name"},
		{[]string{"lab", "up", "--name", "tbad", "--proxy-mode", "ipvs"}, "proxy mode"},
	}
	for _, tt := range tests {
		code, _, errs := run(tt.args...)
		if code != cli.ExitError || !strings.Contains(errs, tt.want) {
			t.Errorf("%v: exit %d stderr %q, want 2 and %q", tt.args, code, errs, tt.want)
		}
		if left, _ := lab.ListOwnedNetns("tbad"); len(left) != 0 {
			t.Fatalf("%v created namespaces %v", tt.args, left)
		}
	}
}

// TestLabLoadProgramsRefuseTheHostNamespace: the fault clients run only inside lab
// namespaces; in the machine's own they stop before sending anything, exit 2.
func TestLabLoadProgramsRefuseTheHostNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	for _, args := range [][]string{
		{"lab", "portfill", "--to", "198.18.0.100:80"},
		{"lab", "nicqueue", "--to", "198.18.0.100:9"},
		{"lab", "dnsrace", "--server", "198.19.0.10:53", "--server", "198.19.0.11:53"},
	} {
		code, _, errs := run(args...)
		if code != cli.ExitError || !strings.Contains(errs, "runs only inside a lab network namespace") {
			t.Errorf("%v in the host namespace: exit %d stderr %q, want 2 and a refusal", args, code, errs)
		}
	}
}
