package collect

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/facts"
)

// InterestingProcesses are the programs whose command lines describe a
// Kubernetes node's datapath.
var InterestingProcesses = []string{"kube-proxy", "flanneld", "kubelet", "containerd", "coredns"}

// multiCallBinaries run a Kubernetes component named by their first
// argument (hyperkube kube-proxy ..., the lab's netdoctor-k8s kube-proxy ...).
var multiCallBinaries = []string{"hyperkube", "netdoctor-k8s"}

// maxConfigSize bounds config and CNI files read verbatim.
const maxConfigSize = 256 * 1024

// collectProcesses scans ProcRoot for the interesting processes and records
// their command lines, network namespace and, for kube-proxy, the file
// named by --config (read through /proc/PID/root, in the process's own
// mount namespace).
func (c *collector) collectProcesses() {
	ents, err := os.ReadDir(c.opts.ProcRoot)
	if err != nil {
		c.fail(SectionProcesses, fmt.Errorf("list processes in %s: %w", c.opts.ProcRoot, err))
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		dir := filepath.Join(c.opts.ProcRoot, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a kernel thread
		}
		argv := splitCmdline(raw)
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		name := matchProcess(strings.TrimSpace(string(comm)), argv)
		if name == "" {
			continue
		}
		p := facts.Process{PID: pid, Name: name, Cmdline: argv}
		if ino, ok := readNetnsInode(filepath.Join(dir, "ns", "net")); ok {
			p.NetnsInode = ino
			p.SameNetns = c.snap.NetnsInode != 0 && ino == c.snap.NetnsInode
		}
		if name == "kube-proxy" {
			if cfg := flagValue(argv, "config"); cfg != "" {
				b, err := c.readProcessFile(dir, cfg)
				if err != nil {
					c.fail(fmt.Sprintf("processes.kube-proxy[%d].config", pid), err)
				} else {
					p.Config = map[string]string{cfg: string(b)}
				}
			}
		}
		c.snap.Processes = append(c.snap.Processes, p)
	}
	sort.Slice(c.snap.Processes, func(i, j int) bool { return c.snap.Processes[i].PID < c.snap.Processes[j].PID })
}

// splitCmdline splits /proc/PID/cmdline (NUL-separated; a process may have
// rewritten it with spaces, which is kept as one argument).
func splitCmdline(raw []byte) []string {
	raw = bytes.TrimRight(raw, "\x00")
	parts := bytes.Split(raw, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// matchProcess returns which interesting program the process is, or "".
func matchProcess(comm string, argv []string) string {
	if slices.Contains(InterestingProcesses, comm) {
		return comm
	}
	if len(argv) == 0 {
		return ""
	}
	base := filepath.Base(argv[0])
	if slices.Contains(InterestingProcesses, base) {
		return base
	}
	if slices.Contains(multiCallBinaries, base) && len(argv) > 1 && slices.Contains(InterestingProcesses, argv[1]) {
		return argv[1]
	}
	return ""
}

// flagValue returns the value of --name or -name, in "--name=v" or
// "--name v" form; the last occurrence wins, as with Go's flag packages.
func flagValue(argv []string, name string) string {
	v := ""
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		for _, prefix := range []string{"--" + name, "-" + name} {
			if a == prefix && i+1 < len(argv) {
				v = argv[i+1]
			} else if strings.HasPrefix(a, prefix+"=") {
				v = strings.TrimPrefix(a, prefix+"=")
			}
		}
	}
	return v
}

// readProcessFile reads a file a process names, as the process sees it:
// through ProcRoot/PID/root (its mount namespace), relative paths against
// its working directory.
func (c *collector) readProcessFile(procDir, name string) ([]byte, error) {
	p := name
	if !filepath.IsAbs(p) {
		cwd, err := os.Readlink(filepath.Join(procDir, "cwd"))
		if err != nil {
			return nil, fmt.Errorf("resolve relative config path %s: %w", name, err)
		}
		p = filepath.Join(cwd, p)
	}
	return readSmallFile(filepath.Join(procDir, "root", p))
}

// readSmallFile reads a file of at most maxConfigSize bytes.
func readSmallFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	if fi.Size() > maxConfigSize {
		return nil, fmt.Errorf("%s is %d bytes, larger than the %d read verbatim", p, fi.Size(), maxConfigSize)
	}
	b := make([]byte, fi.Size())
	n, err := f.ReadAt(b, 0)
	if err != nil && n != len(b) {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return b[:n], nil
}

// readNetnsInode reads the inode of a /proc/PID/ns/net link (net:[INODE]).
func readNetnsInode(p string) (uint64, bool) {
	l, err := os.Readlink(p)
	if err != nil {
		return 0, false
	}
	l = strings.TrimSuffix(strings.TrimPrefix(l, "net:["), "]")
	n, err := strconv.ParseUint(l, 10, 64)
	return n, err == nil
}
