package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

// helperEnv turns the test binary into a helper program (see TestMain).
const helperEnv = "NETDOCTOR_PROC_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "exec-from-thread" {
		execFromThread()
		os.Exit(3) // only reached if the exec failed
	}
	os.Exit(m.Run())
}

// execFromThread replaces the process with `sleep 30`, calling exec from a thread other than
// the process's first: the kernel then retires the old thread-group leader during the exec.
func execFromThread() {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return
	}
	for {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // never unlocked: this thread execs or is dropped
			if unix.Gettid() != unix.Getpid() {
				_ = syscall.Exec(sleep, []string{"sleep", "30"}, os.Environ())
			}
		}()
		<-done
	}
}

// TestAliveWhileExecFromAnotherThread: a child that execs from a thread other than its first
// reads, for a moment, as a zombie in /proc; Alive must not take it for ended (the lab
// kubelet then started its containers a second time beside the running ones).
func TestAliveWhileExecFromAnotherThread(t *testing.T) {
	testutil.RequireProgram(t, "sleep")
	for run := 0; run < 10; run++ {
		info, err := Start(Spec{Name: "execs from a thread", Path: os.Args[0], Env: []string{helperEnv + "=exec-from-thread"},
			LogFile: filepath.Join(t.TempDir(), "helper.log")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Stop(info, time.Second) })
		// Ask through the exec and a little beyond it.
		reads, execd := 0, time.Time{}
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); reads++ {
			if !Alive(info) {
				t.Fatalf("run %d: Alive says pid %d ended after %d reads; it is running (%s)", run, info.PID, reads, stateOf(info.PID))
			}
			if execd.IsZero() {
				if st, err := ReadStat(info.PID); err == nil && st.Comm == "sleep" {
					execd = time.Now()
				}
			} else if time.Since(execd) > 50*time.Millisecond {
				break
			}
		}
		if execd.IsZero() {
			t.Fatalf("run %d: the helper did not exec sleep within 10 s", run)
		}
		if err := Stop(info, time.Second); err != nil {
			t.Fatal(err)
		}
		if Alive(info) {
			t.Fatalf("run %d: Alive after Stop", run)
		}
	}
}

func stateOf(pid int) string {
	st, err := ReadStat(pid)
	if err != nil {
		return err.Error()
	}
	return "state " + string(st.State)
}
