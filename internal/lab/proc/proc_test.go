package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Stat
		wantErr bool
	}{
		{
			name: "plain",
			in:   "4242 (sleep) S 1 4242 4242 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 987654 2449408 128 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
			want: Stat{PID: 4242, Comm: "sleep", State: 'S', PPID: 1, Session: 4242, StartTime: 987654},
		},
		{
			name: "comm with spaces and parens",
			in:   "77 (a b) (c)) Z 5 6 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0 0",
			want: Stat{PID: 77, Comm: "a b) (c)", State: 'Z', PPID: 5, Session: 7, StartTime: 12},
		},
		{name: "empty", in: "", wantErr: true},
		{name: "no comm", in: "12 S 1 2 3", wantErr: true},
		{name: "short", in: "12 (x) S 1 2 3", wantErr: true},
		{name: "bad start time", in: "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 0", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Fatalf("got %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add("4242 (sleep) S 1 4242 4242 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 987654 2449408 128")
	f.Add("1 ()) R 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStat(s)
		if err == nil && st == nil {
			t.Fatal("nil stat without error")
		}
	})
}

func TestStatOfSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || st.StartTime == 0 || st.State == 'Z' {
		t.Fatalf("implausible stat of self: %+v", st)
	}
}

// netnsInode returns the inode of a network namespace file, which identifies the namespace.
func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func TestStartInNetnsAndStop(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	ns := testutil.NewNetns(t, "proc")
	dir := t.TempDir()
	spec := Spec{
		Name:      "sleeper",
		Path:      "sleep",
		Args:      []string{"300"},
		Netns:     testutil.Path(ns),
		LogFile:   filepath.Join(dir, "logs", "sleeper.log"),
		StateFile: filepath.Join(dir, "procs", "sleeper.json"),
	}
	info, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Stop(info, time.Second) })

	if !Alive(info) {
		t.Fatal("not alive right after start")
	}
	if got, want := netnsInode(t, filepath.Join("/proc", itoa(info.PID), "ns", "net")), netnsInode(t, testutil.Path(ns)); got != want {
		t.Fatalf("child runs in netns inode %d, want %d (the test namespace)", got, want)
	}
	if self := netnsInode(t, "/proc/self/ns/net"); self == netnsInode(t, testutil.Path(ns)) {
		t.Fatal("the caller was left in the child's namespace")
	}
	st, err := ReadStat(info.PID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Session != info.PID {
		t.Fatalf("child session %d, want its own session %d (setsid)", st.Session, info.PID)
	}

	loaded, err := Load(spec.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.PID != info.PID || loaded.StartTime != info.StartTime || loaded.BootID != info.BootID ||
		loaded.LogFile != spec.LogFile || loaded.Netns != spec.Netns || strings.Join(loaded.Args, " ") != "300" {
		t.Fatalf("state file round trip: got %+v, want %+v", loaded, info)
	}
	all, err := LoadDir(filepath.Dir(spec.StateFile))
	if err != nil || len(all) != 1 || all[0].PID != info.PID {
		t.Fatalf("LoadDir = %v, %v", all, err)
	}
	logText, err := os.ReadFile(spec.LogFile)
	if err != nil || !strings.Contains(string(logText), "starting") {
		t.Fatalf("log file: %q, %v", logText, err)
	}

	start := time.Now()
	if err := Stop(loaded, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if Alive(info) {
		t.Fatal("alive after Stop")
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("sleep took %v to stop on SIGTERM", d)
	}
	// Reaped: no zombie left behind.
	if _, err := os.Stat(filepath.Join("/proc", itoa(info.PID))); err == nil {
		if st, err := ReadStat(info.PID); err == nil && st.StartTime == info.StartTime {
			t.Fatalf("process %d still present after Stop: state %c", info.PID, st.State)
		}
	}
	// Idempotent.
	if err := Stop(loaded, time.Second); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sh")
	ns := testutil.NewNetns(t, "prock")
	dir := t.TempDir()
	// A program that ignores SIGTERM (ignored signals stay ignored across exec).
	info, err := Start(Spec{
		Name:    "stubborn",
		Path:    "sh",
		Args:    []string{"-c", "trap '' TERM; exec sleep 300"},
		Netns:   testutil.Path(ns),
		LogFile: filepath.Join(dir, "stubborn.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Stop(info, 100*time.Millisecond) })
	time.Sleep(200 * time.Millisecond) // let the trap be set and sleep exec'd
	start := time.Now()
	if err := Stop(info, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("stopped after %v: SIGTERM should have been ignored", d)
	}
	if Alive(info) {
		t.Fatal("alive after SIGKILL")
	}
}

func TestNeverSignalsAReusedPID(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sleep")
	dir := t.TempDir()
	ns := testutil.NewNetns(t, "procr")
	info, err := Start(Spec{Name: "victim", Path: "sleep", Args: []string{"300"}, Netns: testutil.Path(ns), LogFile: filepath.Join(dir, "v.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Stop(info, time.Second) })

	// The same PID with another start time stands for a process that has gone and whose PID
	// was reused: it must be reported dead and never signalled.
	stale := *info
	stale.StartTime = info.StartTime - 1
	if Alive(&stale) {
		t.Fatal("stale info reported alive")
	}
	if err := Signal(&stale, syscall.SIGKILL); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("Signal on reused PID: %v, want ErrNotOurs", err)
	}
	if err := Stop(&stale, 100*time.Millisecond); err != nil {
		t.Fatalf("Stop on reused PID: %v", err)
	}
	otherBoot := *info
	otherBoot.BootID = "00000000-0000-0000-0000-000000000000"
	if Alive(&otherBoot) {
		t.Fatal("info of another boot reported alive")
	}
	if err := Stop(&otherBoot, 100*time.Millisecond); err != nil {
		t.Fatalf("Stop with another boot ID: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if !Alive(info) {
		t.Fatal("the real process was signalled through a stale record")
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no path", Spec{Name: "x", LogFile: filepath.Join(dir, "x.log")}, "no program path"},
		{"no log", Spec{Name: "x", Path: "sleep"}, "no log file"},
		{"missing program", Spec{Name: "x", Path: "/nonexistent/prog", LogFile: filepath.Join(dir, "x.log")}, "/nonexistent/prog"},
		{"missing netns", Spec{Name: "x", Path: "sleep", Args: []string{"1"}, Netns: "/nonexistent/netns", LogFile: filepath.Join(dir, "x.log")}, "network namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := Start(tt.spec)
			if err == nil {
				_ = Stop(info, time.Second)
				t.Fatal("want error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil {
		t.Fatal("want parse error")
	}
	if _, err := Load(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("want read error")
	}
	if infos, err := LoadDir(filepath.Join(dir, "none")); err != nil || len(infos) != 0 {
		t.Fatalf("LoadDir of missing dir = %v, %v", infos, err)
	}
	if Alive(nil) || Alive(&Info{}) {
		t.Fatal("empty info alive")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestStopNonChild stops a process this test process did not start itself (an orphaned
// grandchild, as `lab down` meets the programs `lab up` left behind): identified from its
// state alone, signalled through a pidfd, waited for without being able to reap it.
func TestStopNonChild(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sh")
	ns := testutil.NewNetns(t, "procn")
	out := testutil.MustRun(t, ns, "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $!")
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("pid of orphan: %q", out)
	}
	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	boot, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	info := &Info{Name: "orphan", PID: pid, StartTime: st.StartTime, BootID: boot}
	t.Cleanup(func() { _ = Stop(info, 100*time.Millisecond) })
	if st.PPID == os.Getpid() {
		t.Fatalf("orphan %d is our child", pid)
	}
	if !Alive(info) {
		t.Fatal("orphan not alive")
	}
	if err := Stop(info, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if Alive(info) {
		t.Fatal("orphan alive after Stop")
	}
}

func TestFindOwnedFindsDescendants(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "sh")
	dir := t.TempDir()
	owner := fmt.Sprintf("proctest-%d", os.Getpid())
	info, err := Start(Spec{
		Name: "parent", Path: "sh", Args: []string{"-c", "sleep 300 & wait"}, Owner: owner,
		LogFile: filepath.Join(dir, "parent.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	t.Cleanup(func() {
		_ = Stop(info, time.Second)
		for _, pid := range pids {
			if pid != info.PID {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	other, err := Start(Spec{Name: "other", Path: "sleep", Args: []string{"300"}, LogFile: filepath.Join(dir, "other.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Stop(other, time.Second) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if pids, err = FindOwned(owner); err != nil {
			t.Fatal(err)
		}
		if len(pids) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(pids) != 2 || !slices.Contains(pids, info.PID) {
		t.Fatalf("FindOwned(%s) = %v, want the shell %d and its sleep child", owner, pids, info.PID)
	}
	if slices.Contains(pids, other.PID) {
		t.Fatalf("FindOwned(%s) = %v holds the unmarked process %d", owner, pids, other.PID)
	}
	if none, err := FindOwned(owner + "x"); err != nil || len(none) != 0 {
		t.Fatalf("FindOwned of another owner = %v, %v; want none (exact match)", none, err)
	}
	if _, err := FindOwned(""); err == nil {
		t.Fatal("FindOwned(\"\") did not fail")
	}
}
