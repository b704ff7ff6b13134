package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

// BenchmarkUpDown brings a 3-node lab (iptables mode) up and down b.N times and reports the
// seconds of each half (up-s, down-s) and the lab's memory once up (rss-MiB, pss-MiB).
//
//	NETDOCTOR_K8S_BIN=$PWD/bin/netdoctor-k8s go test -run '^$' -bench BenchmarkUpDown -benchtime=3x ./internal/lab/
func BenchmarkUpDown(b *testing.B) {
	testutil.RequireRoot(b)
	k8s := os.Getenv("NETDOCTOR_K8S_BIN")
	if k8s == "" {
		k8s, _ = filepath.Abs("../../bin/netdoctor-k8s")
	}
	if _, err := os.Stat(k8s); err != nil {
		b.Skipf("skipped: lab Kubernetes binary not built (%v): run `make labbins`", err)
	}
	self := os.Getenv("NETDOCTOR_BIN")
	if self == "" {
		self = filepath.Join(b.TempDir(), "netdoctor")
		if out, err := exec.Command("go", "build", "-o", self, "github.com/netdoctor/netdoctor/cmd/netdoctor").CombinedOutput(); err != nil {
			b.Skipf("skipped: cannot build netdoctor: %v\n%s", err, out)
		}
	}
	root := b.TempDir()
	c := Config{Name: "bench", Nodes: 3, StateRoot: root, K8sBin: k8s, SelfBin: self}.WithDefaults()
	b.Cleanup(func() { _, _ = Down(c.Name, root) })
	var up, down time.Duration
	var rss, pss int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := Up(context.Background(), c, UpOptions{}); err != nil {
			b.Fatal(err)
		}
		up += time.Since(t0)
		if s, err := GetStatus(c.Name, root); err == nil {
			rss += s.Memory.RSSKiB
			pss += s.Memory.PSSKiB
		}
		t1 := time.Now()
		if _, err := Down(c.Name, root); err != nil {
			b.Fatal(err)
		}
		down += time.Since(t1)
	}
	n := float64(b.N)
	b.ReportMetric(up.Seconds()/n, "up-s")
	b.ReportMetric(down.Seconds()/n, "down-s")
	b.ReportMetric(float64(rss)/1024/n, "rss-MiB")
	b.ReportMetric(float64(pss)/1024/n, "pss-MiB")
}
