package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/netdoctor/netdoctor/internal/finding"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func sampleReport() *finding.Report {
	fs := []finding.Finding{
		{
			ID: "mtu-mismatch", Severity: finding.Critical, Node: "node-1", Subject: "flannel.1",
			Message:     "MTUs disagree along the pod path: overlay flannel.1 mtu 1450 > uplink eth0 mtu 1400 - 50 (VXLAN) = 1350",
			Evidence:    []string{"hops: bridge cni0 mtu 1450 -> overlay flannel.1 (vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472) mtu 1450 -> uplink eth0 mtu 1400"},
			Remediation: "ip link set dev eth0 mtu 1500; verify: ping -M do -s 1422 to a pod on another node",
		},
		{
			ID: "ip-forward-disabled", Severity: finding.Critical, Node: "node-1", Subject: "net.ipv4.ip_forward",
			Message:     "IPv4 forwarding is off",
			Evidence:    []string{"sysctl net.ipv4.ip_forward = 0"},
			Remediation: "sysctl -w net.ipv4.ip_forward=1",
			Docs:        "https://kubernetes.io/docs/setup/production-environment/container-runtimes/",
		},
		{
			ID: "rp-filter-strict", Severity: finding.Warning, Node: "node-1",
			Message:  "strict reverse-path filtering where traffic can be asymmetric",
			Evidence: []string{"eth0: effective rp_filter = 1 (net.ipv4.conf.all.rp_filter = 1)"},
		},
	}
	cs := []finding.Check{
		{ID: "ip-forward-disabled", Node: "node-1", Status: finding.Fail},
		{ID: "mtu-mismatch", Node: "node-1", Status: finding.Fail},
		{ID: "rp-filter-strict", Node: "node-1", Status: finding.Fail},
		{ID: "bridge-nf-disabled", Node: "node-1", Status: finding.Pass, Reason: "net.bridge.bridge-nf-call-iptables = 1"},
		{ID: "conntrack-table-full", Node: "node-1", Status: finding.Skipped, Reason: "nf_conntrack_max not in the snapshot"},
		{ID: "overlay-port-blocked", Node: "node-1", Status: finding.Error, Reason: "the tracer could not decide: unsupported match -m foo"},
	}
	return finding.NewReport(fs, cs)
}

func cleanReport() *finding.Report {
	return finding.NewReport(nil, []finding.Check{
		{ID: "ip-forward-disabled", Node: "node-1", Status: finding.Pass},
		{ID: "bridge-nf-disabled", Node: "node-1", Status: finding.Pass},
		{ID: "conntrack-insert-failed", Node: "node-1", Status: finding.Skipped, Reason: "no conntrack statistics"},
	})
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden %s (run go test -update): %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./internal/report -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestTextGolden(t *testing.T) {
	tests := []struct {
		name string
		r    *finding.Report
		o    Options
	}{
		{"findings.txt", sampleReport(), Options{}},
		{"findings-color.txt", sampleReport(), Options{Color: true}},
		{"findings-verbose.txt", sampleReport(), Options{Verbose: true}},
		{"clean.txt", cleanReport(), Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := Text(&b, tt.r, tt.o); err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, b.Bytes())
		})
	}
}

func TestJSONGolden(t *testing.T) {
	var b bytes.Buffer
	if err := Write(&b, sampleReport(), "json", Options{}); err != nil {
		t.Fatal(err)
	}
	golden(t, "findings.json", b.Bytes())
	var back finding.Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not read back: %v", err)
	}
	if back.SchemaVersion != "v1" || len(back.Findings) != 3 || back.Findings[0].Severity != finding.Critical {
		t.Fatalf("round trip lost data: %+v", back)
	}
}

func TestVerdictAndSummaryLine(t *testing.T) {
	tests := []struct {
		r           *finding.Report
		verdict, sl string
	}{
		{sampleReport(), "✗ 2 critical, 1 warning on node-1",
			"node-1: 2 critical, 1 warning, 0 info | 6 checks: 1 passed, 3 failed, 1 skipped, 1 errors"},
		{cleanReport(), "✓ no faults found on node-1 (2 checks passed, 1 skipped)",
			"node-1: 0 critical, 0 warning, 0 info | 3 checks: 2 passed, 0 failed, 1 skipped, 0 errors"},
		{finding.NewReport(nil, nil), "✓ no faults found (0 checks passed)",
			"summary: 0 critical, 0 warning, 0 info | 0 checks: 0 passed, 0 failed, 0 skipped, 0 errors"},
	}
	for _, tt := range tests {
		if got := Verdict(tt.r); got != tt.verdict {
			t.Errorf("Verdict = %q, want %q", got, tt.verdict)
		}
		if got := SummaryLine(tt.r); got != tt.sl {
			t.Errorf("SummaryLine = %q, want %q", got, tt.sl)
		}
	}
}

func TestColorFor(t *testing.T) {
	var b bytes.Buffer
	if ColorFor(&b) {
		t.Error("a buffer is not a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if ColorFor(f) {
		t.Error("a regular file is not a terminal")
	}
	t.Setenv("NO_COLOR", "1")
	if ColorFor(os.Stdout) {
		t.Error("NO_COLOR must turn colour off")
	}
}

func TestWriteUnknownFormat(t *testing.T) {
	if err := Write(&bytes.Buffer{}, cleanReport(), "yaml", Options{}); err == nil {
		t.Fatal("want an error for an unknown format")
	}
}
