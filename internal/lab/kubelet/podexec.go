package kubelet

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mount is a bind mount a pod process sees: Source on the host onto Target.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

// String is the --mount flag form: SRC:DST[:ro].
func (m Mount) String() string {
	s := m.Source + ":" + m.Target
	if m.ReadOnly {
		s += ":ro"
	}
	return s
}

// ParseMount parses SRC:DST[:ro].
func ParseMount(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	switch {
	case len(parts) == 2:
		return Mount{Source: parts[0], Target: parts[1]}, nil
	case len(parts) == 3 && parts[2] == "ro":
		return Mount{Source: parts[0], Target: parts[1], ReadOnly: true}, nil
	}
	return Mount{}, fmt.Errorf("mount %q: want SRC:DST or SRC:DST:ro", s)
}

// ExecInMountNamespace is the body of `netdoctor lab podexec`: it moves the calling thread
// into a new, private mount namespace, bind-mounts each mount (so the program sees its own
// /etc/resolv.conf, service account files and volumes at the paths it expects, while the
// host's files stay untouched), and replaces the process with argv. It only returns on error.
// Equivalent to: unshare --mount --propagation private sh -c 'mount --bind ...; exec argv'.
func ExecInMountNamespace(mounts []Mount, argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("podexec: no program")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("podexec: %w", err)
	}
	runtime.LockOSThread() // never unlocked: the thread execs
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("podexec: new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("podexec: make mounts private: %w", err)
	}
	for _, m := range mounts {
		if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("podexec: bind %s on %s: %w", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("podexec: read-only %s: %w", m.Target, err)
			}
		}
	}
	return syscall.Exec(path, argv, os.Environ())
}
