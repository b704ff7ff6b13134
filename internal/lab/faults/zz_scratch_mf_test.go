package faults_test

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab"
)

func TestScratchMFUp(t *testing.T) {
	if os.Getenv("MF_UP") == "" {
		t.Skip()
	}
	c := lab.Config{Name: "mf", Nodes: 3, ProxyMode: os.Getenv("MF_UP"), StateRoot: "/var/lib/netdoctor/lab",
		UnderlayCIDR: netip.MustParsePrefix("198.18.16.0/24"), ClusterCIDR: netip.MustParsePrefix("198.18.64.0/18"),
		ServiceCIDR: netip.MustParsePrefix("198.19.64.0/18"),
		K8sBin: "/work/main/bin/netdoctor-k8s", SelfBin: "/tmp/mf/netdoctor"}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err := lab.Up(ctx, c, lab.UpOptions{Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
}
