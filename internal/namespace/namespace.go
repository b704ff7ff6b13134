// Package namespace finds network namespaces (by name, path or PID) and runs
// code inside them on a locked OS thread, the way `ip netns exec` and
// `nsenter --net` do.
package namespace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
)

// NetnsDir is where `ip netns add` bind-mounts named namespaces.
const NetnsDir = "/var/run/netns"

// Resolve turns a namespace spec into a path: "" is the current namespace
// (returns ""), "pid:N" or a number is /proc/N/ns/net, a string containing a
// slash is a path, anything else is a name under /var/run/netns. It checks
// that the namespace exists.
func Resolve(spec string) (string, error) {
	if spec == "" {
		return "", nil
	}
	var p string
	switch {
	case strings.HasPrefix(spec, "pid:"):
		p = filepath.Join("/proc", strings.TrimPrefix(spec, "pid:"), "ns", "net")
	case isNumber(spec):
		p = filepath.Join("/proc", spec, "ns", "net")
	case strings.Contains(spec, "/"):
		p = spec
	default:
		p = filepath.Join(NetnsDir, spec)
	}
	if _, err := os.Stat(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("network namespace %q not found (%s does not exist): list them with `ip netns list` or give a path or pid", spec, p)
		}
		return "", fmt.Errorf("network namespace %q: %w", spec, err)
	}
	return p, nil
}

// PIDPath is the netns path of a process.
func PIDPath(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "ns", "net") }

func isNumber(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// Do runs fn with the calling goroutine's OS thread switched into the network
// namespace at path ("" runs fn in place). The thread is locked for the
// duration; if switching back fails the thread is left locked so the Go
// runtime discards it instead of reusing a thread in the wrong namespace.
// Processes started by fn (os/exec) inherit the namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer func() { _ = target.Close() }()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return // thread stays locked and is discarded
		}
		defer func() { _ = orig.Close() }()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			runtime.UnlockOSThread()
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Exists reports whether a named namespace exists under /var/run/netns.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(NetnsDir, name))
	return err == nil
}

// Create makes a named network namespace (ip netns add NAME) without
// switching the caller into it.
func Create(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer func() { _ = orig.Close() }()
		h, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(orig)
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("create network namespace %s: %w", name, err)
			return
		}
		_ = h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("return from new network namespace %s: %w", name, err)
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// Delete removes a named network namespace (ip netns del NAME). Missing is not an error.
func Delete(name string) error {
	if !Exists(name) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil {
		return fmt.Errorf("delete network namespace %s: %w", name, err)
	}
	return nil
}
