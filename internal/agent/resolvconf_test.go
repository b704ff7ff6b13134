package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// A pod as the lab makes one: a process in its own network namespace (a
// veth to the node's) and a private mount namespace where its resolv.conf
// is bind-mounted on /etc/resolv.conf. The agent reads that file, not the
// host's, found by the pod IP under /proc (no CRI here).
func TestPodResolvReadsWhatThePodSees(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "unshare")
	node := testutil.NewNetns(t, "cd-rnode")
	good := testutil.NewNetns(t, "cd-rgood")
	bad := testutil.NewNetns(t, "cd-rbad")
	dir := t.TempDir()
	confs := map[string]string{
		good: "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n",
		bad:  "nameserver 198.18.8.53\n",
	}
	ips := map[string]string{good: "198.18.202.2", bad: "198.18.202.3"}
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	for i, ns := range []string{good, bad} {
		veth := "cdr" + string(rune('0'+i))
		testutil.MustRun(t, node, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		testutil.MustRun(t, ns, "ip", "addr", "add", ips[ns]+"/24", "dev", "eth0")
		f := filepath.Join(dir, ns+".conf")
		if err := os.WriteFile(f, []byte(confs[ns]), 0o644); err != nil {
			t.Fatal(err)
		}
		// A private mount namespace: the bind mount is the pod's only.
		c := exec.Command("ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
			"mount --bind \"$1\" /etc/resolv.conf && exec sleep 60", "sh", f)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	spec := &cluster.ProbeSpec{DNSServer: "198.19.0.10", ClusterDomain: "cluster.local", ResolvPods: []cluster.ResolvPod{
		{Node: "n1", Pod: "shop/good", IP: ips[good]},
		{Node: "n1", Pod: "shop/bad", IP: ips[bad]},
		{Node: "n2", Pod: "shop/elsewhere", IP: "198.18.202.9"},
	}}
	a := &Agent{Node: "n1", Netns: testutil.Path(node), CRIEndpoint: filepath.Join(dir, "no-cri.sock")}
	var got []cluster.PodResolv
	for i := 0; i < 50; i++ { // the processes need a moment to mount and exec sleep
		got = a.podResolv(context.Background(), spec)
		// Wait for the bind mounts themselves: before them the pods see the
		// host's resolv.conf, which is "wrong" too.
		if len(got) == 2 && got[0].Status == cluster.ProbeOK && got[1].Status == "wrong" && got[1].Conf == confs[bad] {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(got) != 2 {
		t.Fatalf("verdicts %+v, want 2 (n1's pods only)", got)
	}
	if got[0].Pod != "shop/good" || got[0].Status != cluster.ProbeOK {
		t.Errorf("good pod: %+v", got[0])
	}
	b := got[1]
	if b.Pod != "shop/bad" || b.Status != "wrong" || !b.Critical || b.Conf != confs[bad] {
		t.Fatalf("bad pod: %+v", b)
	}
	if !strings.Contains(strings.Join(b.Problems, "\n"), "nameserver 198.18.8.53, not the cluster DNS Service 198.19.0.10") {
		t.Errorf("problems %q", b.Problems)
	}
	if !strings.HasPrefix(b.From, "/proc/") || !strings.HasSuffix(b.From, "/root/etc/resolv.conf") {
		t.Errorf("read from %q", b.From)
	}
	if string(host) == confs[bad] {
		t.Error("the host's resolv.conf equals the pod's: the test proves nothing")
	}
}
