package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/cri"
)

// maxResolvConf bounds what is read of one resolv.conf.
const maxResolvConf = 16 << 10

// podResolv reads the resolv.conf of each of this node's pods of spec, as
// the pod's processes see it (/proc/PID/root/etc/resolv.conf of a process
// in the pod's network namespace, not the sandbox's pause process when an
// application process is there), and checks it.
func (a *Agent) podResolv(ctx context.Context, spec *cluster.ProbeSpec) []cluster.PodResolv {
	var mine []cluster.ResolvPod
	for _, p := range spec.ResolvPods {
		if p.Node == a.Node {
			mine = append(mine, p)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	var c *cri.Client
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if cl, err := cri.DialAny(cctx, a.CRIEndpoint); err == nil {
		c = cl
		defer func() { _ = c.Close() }()
	}
	procRoot := a.procRoot()
	var byNet map[uint64][]int // netns inode -> PIDs, read once
	out := make([]cluster.PodResolv, 0, len(mine))
	for _, p := range mine {
		if ctx.Err() != nil {
			break
		}
		r := cluster.PodResolv{Pod: p.Pod}
		netns, pid, err := a.podNetnsPID(cctx, c, p)
		if err != nil {
			r.Status, r.Problems = cluster.ProbeError, []string{err.Error()}
			out = append(out, r)
			continue
		}
		if byNet == nil {
			byNet = pidsByNetns(procRoot)
		}
		var st statIno
		if st.of(netns) {
			if app := appPID(procRoot, byNet[st.ino]); app > 0 {
				pid = app
			}
		}
		if pid <= 0 {
			r.Status, r.Problems = cluster.ProbeError, []string{"no process found in the pod's network namespace " + netns}
			out = append(out, r)
			continue
		}
		r.From = filepath.Join(procRoot, strconv.Itoa(pid), "root", "etc", "resolv.conf")
		text, err := readBounded(r.From, maxResolvConf)
		if err != nil {
			r.Status, r.Problems = cluster.ProbeError, []string{fmt.Sprintf("read %s: %v", r.From, err)}
			out = append(out, r)
			continue
		}
		probs, crit := cluster.CheckResolvConf(text, p, spec.DNSServer, spec.ClusterDomain)
		if len(probs) == 0 {
			r.Status, r.From = cluster.ProbeOK, ""
		} else {
			r.Status, r.Problems, r.Critical, r.Conf = "wrong", probs, crit, text
		}
		out = append(out, r)
	}
	return out
}

// podNetnsPID finds the pod's network namespace (a path) and a PID in it:
// through the CRI, else by the pod's IP under /proc.
func (a *Agent) podNetnsPID(ctx context.Context, c *cri.Client, p cluster.ResolvPod) (string, int, error) {
	criErr := cri.ErrNoRuntime
	if c != nil {
		ns, name, _ := strings.Cut(p.Pod, "/")
		cp, err := c.FindPod(ctx, ns, name)
		if err == nil && cp.Netns != "" {
			return cp.Netns, cp.PID, nil
		}
		criErr = err
	}
	if p.IP == "" {
		return "", 0, fmt.Errorf("pod %s: CRI: %w; no pod IP for the /proc scan", p.Pod, criErr)
	}
	path, err := FindNetnsByAddr(a.procRoot(), p.IP, a.Netns)
	if err != nil {
		return "", 0, fmt.Errorf("pod %s: CRI: %w; /proc: %w", p.Pod, criErr, err)
	}
	pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return path, pid, nil
}

// pidsByNetns maps each network namespace inode under procRoot to its PIDs.
func pidsByNetns(procRoot string) map[uint64][]int {
	out := map[uint64][]int{}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st statIno
		if st.of(filepath.Join(procRoot, e.Name(), "ns", "net")) {
			out[st.ino] = append(out[st.ino], pid)
		}
	}
	for _, v := range out {
		sort.Ints(v)
	}
	return out
}

// appPID picks an application process among pids (not the sandbox's pause
// process, whose root has no resolv.conf of the application's), else the
// first one.
func appPID(procRoot string, pids []int) int {
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "comm"))
		if err == nil && strings.TrimSpace(string(b)) != "pause" {
			return pid
		}
	}
	if len(pids) > 0 {
		return pids[0]
	}
	return 0
}

func readBounded(path string, limit int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, limit))
	return string(b), err
}
