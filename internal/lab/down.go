package lab

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// DownReport says what Down removed.
type DownReport struct {
	Stopped    []string // processes stopped (name pid)
	Namespaces []string // namespaces deleted
	RootLink   bool     // the root link was deleted
	StateDir   string   // removed state directory, if any
}

// Down removes a lab: its processes (from its proc state files, and every process still
// running inside one of its namespaces), its namespaces (from the state file and by the name
// prefix), its root link and its state directory. It is idempotent and works on a half-built
// or crashed lab. stateRoot "" means DefaultStateRoot().
func Down(name, stateRoot string) (*DownReport, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("lab name %q is not a lab name", name)
	}
	if stateRoot == "" {
		stateRoot = DefaultStateRoot()
	}
	c := Config{Name: name, StateRoot: stateRoot}
	dir := c.StateDir()
	rep := &DownReport{}
	var errs []error

	st, err := LoadState(dir)
	if err != nil && !errors.Is(err, ErrNoLab) {
		errs = append(errs, err)
	}

	// 1. Processes recorded by proc, stopped in parallel (SIGTERM, then SIGKILL).
	infos := AllProcs(dir)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, in := range infos {
		wg.Add(1)
		go func(in *proc.Info) {
			defer wg.Done()
			alive := proc.Alive(in)
			if err := proc.Stop(in, 3*time.Second); err != nil && !errors.Is(err, proc.ErrNotOurs) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", in.Name, in.PID, err))
				mu.Unlock()
				return
			}
			if alive {
				mu.Lock()
				rep.Stopped = append(rep.Stopped, fmt.Sprintf("%s %d", in.Name, in.PID))
				mu.Unlock()
			}
		}(in)
	}
	wg.Wait()

	// 2. Namespaces: those recorded and those carrying the lab's prefix.
	nsSet := map[string]bool{}
	if st != nil {
		for _, n := range st.Namespaces {
			nsSet[n] = true
		}
	}
	owned, err := ListOwnedNetns(name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range owned {
		nsSet[n] = true
	}
	names := make([]string, 0, len(nsSet))
	for n := range nsSet {
		names = append(names, n)
	}
	sort.Strings(names)

	// 3. Any process still inside one of those namespaces is a lab process (pods, stragglers).
	stopped, err := KillInNamespaces(names)
	rep.Stopped = append(rep.Stopped, stopped...)
	if err != nil {
		errs = append(errs, err)
	}
	// 3b. Any process still marked as the lab's, wherever it runs.
	stopped, err = killOwned(name)
	rep.Stopped = append(rep.Stopped, stopped...)
	if err != nil {
		errs = append(errs, err)
	}

	for _, n := range names {
		if !namespace.Exists(n) {
			continue
		}
		if err := namespace.Delete(n); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Namespaces = append(rep.Namespaces, n)
	}

	// 4. The root link (deleting the hub namespace usually took its peer, and it, already).
	if err := DeleteRootLink(name); err != nil {
		errs = append(errs, err)
	}

	// 5. Host mountpoint directories made for pod bind mounts, if still empty.
	// Only when no other lab remains: they are shared by every lab's pods.
	if st != nil {
		for i := len(st.Mountpoints) - 1; i >= 0; i-- {
			removeIfEmpty(st.Mountpoints[i])
		}
	}
	if !otherLabsExist() {
		removeRecordedMountpoints()
	}

	// 6. The state directory.
	if _, err := os.Stat(dir); err == nil {
		if len(errs) == 0 {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("remove lab state %s: %w", dir, err))
			} else {
				rep.StateDir = dir
			}
		}
	}
	return rep, errors.Join(errs...)
}

// KillInNamespaces sends SIGTERM, then SIGKILL after a grace period, to every process whose
// network namespace is one of the named ones, and waits until they are gone. It returns what
// it stopped, as "pid N (namespace)".
func KillInNamespaces(names []string) ([]string, error) {
	find := inNamespaces(names)
	if find == nil {
		return nil, nil
	}
	return killUntilGone(find, "in lab namespaces")
}

// inNamespaces returns a function listing the processes (PID to namespace name) that run in
// one of the named namespaces, or nil if none of them exists.
func inNamespaces(names []string) func() map[int]string {
	inodes := map[uint64]string{}
	for _, n := range names {
		var st syscall.Stat_t
		if err := syscall.Stat(NetnsPath(n), &st); err == nil {
			inodes[st.Ino] = n
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	return func() map[int]string {
		out := map[int]string{}
		ents, _ := os.ReadDir("/proc")
		self := os.Getpid()
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
			if err != nil {
				continue
			}
			ino, ok := parseNsLink(link)
			if !ok {
				continue
			}
			if n, ok := inodes[ino]; ok {
				out[pid] = n
			}
		}
		return out
	}
}

// LiveProcesses lists the processes that keep a lab alive: those running in one of its
// namespaces and those marked as its own (proc.Spec.Owner), as "PID (where)", sorted.
func LiveProcesses(name string) []string {
	seen := map[int]string{}
	if ns, err := ListOwnedNetns(name); err == nil {
		if find := inNamespaces(ns); find != nil {
			maps.Copy(seen, find())
		}
	}
	if pids, err := proc.FindOwned(name); err == nil {
		for _, pid := range pids {
			if _, ok := seen[pid]; !ok {
				seen[pid] = "marked as lab " + name + "'s"
			}
		}
	}
	out := make([]string, 0, len(seen))
	for pid, where := range seen {
		out = append(out, fmt.Sprintf("%d (%s)", pid, where))
	}
	sort.Strings(out)
	return out
}

// killOwned stops every process still marked as the lab's (proc.Spec.Owner): a container
// whose pod namespace was already gone, a program left by a run killed before its cleanup.
func killOwned(name string) ([]string, error) {
	find := func() map[int]string {
		pids, _ := proc.FindOwned(name)
		out := make(map[int]string, len(pids))
		for _, pid := range pids {
			out[pid] = "marked " + proc.OwnerEnv + "=" + name
		}
		return out
	}
	return killUntilGone(find, "marked as the lab's")
}

// KillMarked stops every process whose environment holds an entry starting with prefix
// (NAME=value..., as a kubelet marks the processes of one pod) and waits until none is left.
func KillMarked(prefix string) ([]string, error) {
	if !strings.Contains(prefix, "=") {
		return nil, fmt.Errorf("kill marked processes: %q is not NAME=value", prefix)
	}
	want := []byte(prefix)
	find := func() map[int]string {
		pids, _ := proc.FindEnv(func(kv []byte) bool { return bytes.HasPrefix(kv, want) })
		out := make(map[int]string, len(pids))
		for _, pid := range pids {
			out[pid] = "marked " + prefix
		}
		return out
	}
	return killUntilGone(find, "marked "+prefix)
}

// killUntilGone sends SIGTERM to every process find returns (PID to where it was found),
// then SIGKILL to those left after a grace period, and waits until find returns none.
func killUntilGone(find func() map[int]string, where string) ([]string, error) {
	procs := find()
	if len(procs) == 0 {
		return nil, nil
	}
	var stopped []string
	for pid, n := range procs {
		stopped = append(stopped, fmt.Sprintf("pid %d (%s)", pid, n))
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if len(find()) == 0 {
			return stopped, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	for pid := range find() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		left := find()
		if len(left) == 0 {
			return stopped, nil
		}
		// Zombies of ours (children of this process) need reaping.
		for pid := range left {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
		time.Sleep(50 * time.Millisecond)
	}
	left := find()
	if len(left) > 0 {
		var l []string
		for pid, n := range left {
			l = append(l, fmt.Sprintf("%d (%s)", pid, n))
		}
		sort.Strings(l)
		return stopped, fmt.Errorf("processes still running %s after SIGKILL: %s", where, strings.Join(l, ", "))
	}
	return stopped, nil
}

// parseNsLink parses "net:[4026532281]".
func parseNsLink(s string) (uint64, bool) {
	s = strings.TrimPrefix(s, "net:[")
	s = strings.TrimSuffix(s, "]")
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// removeIfEmpty removes an empty directory or an empty regular file; anything else stays.
func removeIfEmpty(p string) {
	if !filepath.IsAbs(p) {
		return
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return
	}
	switch {
	case fi.IsDir():
		_ = os.Remove(p) // fails unless empty
	case fi.Mode().IsRegular() && fi.Size() == 0:
		_ = os.Remove(p)
	}
}

// AllProcs loads every proc state file of a lab: its own (kubelets, pods, upstream DNS) and
// the control plane's.
func AllProcs(stateDir string) []*proc.Info {
	var out []*proc.Info
	for _, d := range []string{ProcDir(stateDir), filepath.Join(CPStateDir(stateDir), "procs")} {
		infos, _ := proc.LoadDir(d)
		out = append(out, infos...)
	}
	return out
}

// otherLabsExist reports whether any lab's hub namespace still exists on this machine.
func otherLabsExist() bool {
	ents, err := os.ReadDir(namespace.NetnsDir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ndlab-") && strings.HasSuffix(e.Name(), "-hub") {
			return true
		}
	}
	return false
}

// removeRecordedMountpoints removes the mountpoints of MountpointRegistry that are still
// empty, newest first, then the registry.
func removeRecordedMountpoints() {
	b, err := os.ReadFile(MountpointRegistry)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] != "" {
			removeIfEmpty(lines[i])
		}
	}
	_ = os.Remove(MountpointRegistry)
	_ = os.Remove(filepath.Dir(MountpointRegistry))
}
