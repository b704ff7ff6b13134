// Package proc supervises the lab's long-running programs (etcd, the API server, kubelets,
// kube-proxy...): it starts a program inside a network namespace, detached into its own session
// so that it outlives the `netdoctor lab up` process that started it, with its output in a log
// file, and records who it is (PID, start time, boot ID) in a JSON state file so that any later
// process (`lab status`, `lab down`) can tell whether that PID is still the program the lab
// started, and stop it, without ever signalling a process that merely reused the PID.
package proc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Spec describes a program to start.
type Spec struct {
	// Name labels the process (e.g. "kube-apiserver", "kubelet-node1"); it is recorded in Info.
	Name string
	// Path is the program to run: an absolute path, or a name looked up in PATH.
	Path string
	// Args are the arguments after the program name, passed as data (no shell).
	Args []string
	// Argv0, if set, is given to the program as its argv[0] instead of Path (multi-call
	// binaries dispatch on it).
	Argv0 string
	// Env is extra environment (KEY=VALUE) added to this process's environment.
	Env []string
	// Dir is the working directory; "" keeps the current one.
	Dir string
	// Netns is the path of the network namespace to run in; "" keeps the current one.
	Netns string
	// LogFile receives the program's stdout and stderr (appended; created with its directory).
	LogFile string
	// StateFile, if set, receives the Info as JSON once the program has started.
	StateFile string
	// Owner, if set, marks the process (and, by inheritance, every process it starts) with
	// OwnerEnv=Owner in its environment, so that FindOwned can find it even after its state
	// file is gone (a pod container whose kubelet died, a run killed before its cleanup).
	Owner string
}

// OwnerEnv is the environment variable that carries Spec.Owner.
const OwnerEnv = "NETDOCTOR_LAB_OWNER"

// Info identifies a started process. PID, StartTime and BootID together name one process
// for the life of the machine: a PID reused by another program has another start time.
type Info struct {
	Name      string   `json:"name"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"` // clock ticks after boot, field 22 of /proc/PID/stat
	BootID    string   `json:"bootID"`    // /proc/sys/kernel/random/boot_id when started
	Netns     string   `json:"netns,omitempty"`
	LogFile   string   `json:"logFile"`
	Path      string   `json:"path"`
	Args      []string `json:"args"`
	StateFile string   `json:"stateFile,omitempty"`
}

// ErrNotOurs is returned (wrapped) by Signal when the PID is alive but belongs to another
// process than the one recorded.
var ErrNotOurs = errors.New("process is not the one started (PID reused or different boot)")

// children holds the processes started by this process, which it must reap.
var children sync.Map // pid -> *child

// child is a process this process started: done is closed once it has been reaped.
type child struct {
	done      chan struct{}
	startTime uint64 // set by Start once read, before Start returns
}

// Start starts the program described by spec and returns its Info. The program runs in
// spec.Netns (inherited through namespace.Do), in a new session, with stdin from /dev/null and
// stdout/stderr appended to spec.LogFile. If spec.StateFile is set the Info is written there.
// The caller does not need to wait for the program: a goroutine reaps it when it exits.
func Start(spec Spec) (*Info, error) {
	if spec.Path == "" {
		return nil, fmt.Errorf("start %s: no program path", spec.Name)
	}
	if spec.LogFile == "" {
		return nil, fmt.Errorf("start %s: no log file", spec.Name)
	}
	path, err := exec.LookPath(spec.Path)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if err := os.MkdirAll(filepath.Dir(spec.LogFile), 0o755); err != nil {
		return nil, fmt.Errorf("start %s: create log directory: %w", spec.Name, err)
	}
	logf, err := os.OpenFile(spec.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log file: %w", spec.Name, err)
	}
	defer func() { _ = logf.Close() }() // the child has its own copy
	bootID, err := BootID()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}

	cmd := exec.Command(path, spec.Args...)
	if spec.Argv0 != "" {
		cmd.Args[0] = spec.Argv0
	}
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), spec.Env...)
	if spec.Owner != "" {
		cmd.Env = append(withoutVar(cmd.Env, OwnerEnv), OwnerEnv+"="+spec.Owner)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	_, _ = fmt.Fprintf(logf, "=== %s: starting %s %s\n", time.Now().UTC().Format(time.RFC3339), path, strings.Join(spec.Args, " "))
	if err := namespace.Do(spec.Netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", spec.Name, path, err)
	}
	pid := cmd.Process.Pid
	c := &child{done: make(chan struct{})}
	children.Store(pid, c)
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()

	st, err := ReadStat(pid)
	if err != nil {
		// The program died at once and was already reaped; still report what happened.
		<-c.done
		return nil, fmt.Errorf("start %s: exited at once (%s), see %s: %w", spec.Name, cmd.ProcessState, spec.LogFile, err)
	}
	c.startTime = st.StartTime
	info := &Info{
		Name:      spec.Name,
		PID:       pid,
		StartTime: st.StartTime,
		BootID:    bootID,
		Netns:     spec.Netns,
		LogFile:   spec.LogFile,
		Path:      path,
		Args:      append([]string(nil), spec.Args...),
		StateFile: spec.StateFile,
	}
	if spec.StateFile != "" {
		if err := Save(spec.StateFile, info); err != nil {
			_ = Stop(info, time.Second)
			return nil, err
		}
	}
	return info, nil
}

// Stat is the part of /proc/PID/stat that identifies a process.
type Stat struct {
	PID       int
	Comm      string
	State     byte   // R, S, D, Z, T...
	PPID      int    // parent
	Session   int    // session ID
	StartTime uint64 // clock ticks after boot
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, fmt.Errorf("read stat of process %d: %w", pid, err)
	}
	st, err := ParseStat(string(b))
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	return st, nil
}

// ParseStat parses the text of a /proc/PID/stat file. The command name may itself contain
// spaces and parentheses, so fields are counted after its last ')'.
func ParseStat(s string) (*Stat, error) {
	open := strings.IndexByte(s, '(')
	closeIdx := strings.LastIndexByte(s, ')')
	if open < 1 || closeIdx < open {
		return nil, fmt.Errorf("parse /proc stat %q: no (comm)", truncate(s))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return nil, fmt.Errorf("parse /proc stat %q: pid: %w", truncate(s), err)
	}
	f := strings.Fields(s[closeIdx+1:])
	// f[0] is field 3 (state); field N is f[N-3]. Start time is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return nil, fmt.Errorf("parse /proc stat %q: %d fields after comm", truncate(s), len(f))
	}
	st := &Stat{PID: pid, Comm: s[open+1 : closeIdx], State: f[0][0]}
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return nil, fmt.Errorf("parse /proc stat %q: ppid: %w", truncate(s), err)
	}
	if st.Session, err = strconv.Atoi(f[3]); err != nil {
		return nil, fmt.Errorf("parse /proc stat %q: session: %w", truncate(s), err)
	}
	if st.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return nil, fmt.Errorf("parse /proc stat %q: starttime: %w", truncate(s), err)
	}
	return st, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// BootID returns the kernel's boot ID, which changes at every boot.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Alive reports whether the process described by info is still running: its PID exists, is
// not a zombie, and has the recorded start time in the recorded boot.
func Alive(info *Info) bool {
	if info == nil || info.PID <= 0 {
		return false
	}
	if id, err := BootID(); err != nil || id != info.BootID {
		return false
	}
	st, err := ReadStat(info.PID)
	if err == nil && st.StartTime == info.StartTime && st.State != 'Z' && st.State != 'X' {
		return true
	}
	// /proc can say "ended" of a running process for a moment: while a multi-threaded
	// program execs from a thread other than its first, the kernel retires the old leader and
	// the PID reads as a zombie (or not at all) until the exec completes. Of a process this one
	// started, ask the kernel as its parent instead: has it exited (without reaping it: the
	// reaper goroutine does that)?
	if v, ok := children.Load(info.PID); ok {
		c := v.(*child)
		select {
		case <-c.done:
			return false
		default:
		}
		if c.startTime != info.StartTime {
			return false
		}
		var si unix.Siginfo
		if err := unix.Waitid(unix.P_PID, info.PID, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
			return false // reaped meanwhile (ECHILD)
		}
		return si.Signo != int32(unix.SIGCHLD) // SIGCHLD: it has exited
	}
	return false
}

// pidfd opens a pidfd for info's process and checks, after opening it, that it is still the
// recorded process: from then on the descriptor cannot refer to another process, so signals
// sent through it cannot reach a process that reused the PID. gone is true if the process has
// exited (or is a zombie); err is ErrNotOurs if the PID now belongs to someone else.
func pidfd(info *Info) (fd int, gone bool, err error) {
	if info == nil || info.PID <= 0 {
		return -1, true, nil
	}
	if id, err := BootID(); err != nil || id != info.BootID {
		return -1, true, nil
	}
	fd, err = unix.PidfdOpen(info.PID, 0)
	if err != nil {
		// ESRCH: no such process; ENOENT: seen for a PID that exited while
		// its pidfd was being opened. Either way there is nothing to stop.
		if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
			return -1, true, nil
		}
		return -1, false, fmt.Errorf("open pidfd of %s (pid %d): %w", info.Name, info.PID, err)
	}
	st, err := ReadStat(info.PID)
	if err != nil {
		_ = unix.Close(fd)
		return -1, true, nil
	}
	if st.StartTime != info.StartTime {
		_ = unix.Close(fd)
		return -1, false, fmt.Errorf("%s (pid %d, start time %d, now %d): %w", info.Name, info.PID, info.StartTime, st.StartTime, ErrNotOurs)
	}
	if st.State == 'Z' || st.State == 'X' {
		_ = unix.Close(fd)
		reap(info.PID, 0)
		return -1, true, nil
	}
	return fd, false, nil
}

// Signal sends sig to info's process if it is still that process. It returns nil if the
// process is gone, and an error wrapping ErrNotOurs if the PID was reused.
func Signal(info *Info, sig syscall.Signal) error {
	fd, gone, err := pidfd(info)
	if err != nil || gone {
		return err
	}
	defer func() { _ = unix.Close(fd) }()
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s (pid %d) with %v: %w", info.Name, info.PID, sig, err)
	}
	return nil
}

// Stop ends info's process: SIGTERM, up to timeout for it to exit, then SIGKILL, and reaps it
// if it is a child of this process. It returns nil if the process has already gone, and never
// signals a process whose start time differs from the recorded one (the PID was reused: the
// recorded process is gone, so nil is returned).
func Stop(info *Info, timeout time.Duration) error {
	fd, gone, err := pidfd(info)
	if errors.Is(err, ErrNotOurs) {
		return nil
	}
	if err != nil {
		return err
	}
	if gone {
		reap(info.PID, time.Second)
		return nil
	}
	defer func() { _ = unix.Close(fd) }()
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): SIGTERM: %w", info.Name, info.PID, err)
	}
	if waitFD(fd, timeout) {
		reap(info.PID, time.Second)
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): SIGKILL: %w", info.Name, info.PID, err)
	}
	if !waitFD(fd, 5*time.Second) {
		return fmt.Errorf("stop %s (pid %d): still running 5s after SIGKILL", info.Name, info.PID)
	}
	reap(info.PID, time.Second)
	return nil
}

// waitFD waits up to timeout for the pidfd to become readable (the process exited).
func waitFD(fd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		ms := int(left / time.Millisecond)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == nil && n > 0 {
			return true
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Fall back to polling /proc.
			time.Sleep(50 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// reap waits up to timeout for this process's reaper goroutine to collect pid, if pid is a
// child started by Start.
func reap(pid int, timeout time.Duration) {
	v, ok := children.Load(pid)
	if !ok {
		return
	}
	select {
	case <-v.(*child).done:
		children.Delete(pid)
	case <-time.After(timeout):
	}
}

// Save writes info as JSON to path (atomically, through a temporary file).
func Save(path string, info *Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("encode process state of %s: %w", info.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write process state %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write process state %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write process state %s: %w", path, err)
	}
	return nil
}

// Load reads an Info written by Save.
func Load(path string) (*Info, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read process state %s: %w", path, err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("parse process state %s: %w", path, err)
	}
	if info.StateFile == "" {
		info.StateFile = path
	}
	return &info, nil
}

// LoadDir reads every *.json state file in dir (missing dir: none), sorted by file name.
func LoadDir(dir string) ([]*Info, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list process states in %s: %w", dir, err)
	}
	var out []*Info
	for _, m := range matches {
		info, err := Load(m)
		if err != nil {
			return out, err
		}
		out = append(out, info)
	}
	return out, nil
}

// withoutVar returns env without its entries for the variable name.
func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// FindOwned returns the PIDs of the processes, other than this one, whose environment holds
// OwnerEnv=owner: those started with Spec.Owner = owner and their descendants. Processes
// whose environment cannot be read (gone, or not ours to read) are left out.
func FindOwned(owner string) ([]int, error) {
	if owner == "" {
		return nil, errors.New("find owned processes: no owner")
	}
	want := []byte(OwnerEnv + "=" + owner)
	return FindEnv(func(kv []byte) bool { return bytes.Equal(kv, want) })
}

// FindEnv returns the PIDs of the processes, other than this one, whose environment holds a
// NAME=value entry for which match is true. Processes whose environment cannot be read (gone,
// zombies, or not ours to read) are left out.
func FindEnv(match func(kv []byte) bool) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("find processes by environment: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(b, []byte{0}) {
			if match(kv) {
				out = append(out, pid)
				break
			}
		}
	}
	return out, nil
}

// InfoOf describes the running process pid (found, not started, by this process) so that it
// can be tracked and stopped like one Start returned: its start time pins it against PID reuse.
func InfoOf(pid int, name string) (*Info, error) {
	bootID, err := BootID()
	if err != nil {
		return nil, err
	}
	st, err := ReadStat(pid)
	if err != nil {
		return nil, err
	}
	if st.State == 'Z' || st.State == 'X' {
		return nil, fmt.Errorf("process %d has exited", pid)
	}
	info := &Info{Name: name, PID: pid, StartTime: st.StartTime, BootID: bootID}
	if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline")); err == nil {
		if args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"); len(args) > 0 {
			info.Path, info.Args = args[0], args[1:]
		}
	}
	return info, nil
}
