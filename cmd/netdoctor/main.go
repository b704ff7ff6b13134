// Command netdoctor diagnoses Kubernetes cluster networking. Installed as
// kubectl-netdoctor it is also a kubectl plugin; it is also the per-node agent
// and the lab.
package main

import (
	"os"
	"runtime"

	"github.com/netdoctor/netdoctor/internal/cli"
)

// The main goroutine stays on the process's first thread, the thread-group leader. `lab
// podexec` execs from it: an exec from any other thread makes the kernel retire the leader
// first, and for that moment /proc shows the process's PID as a zombie (the lab kubelet took
// such containers for dead and started them again beside the running ones).
func init() { runtime.LockOSThread() }

func main() {
	os.Exit(cli.Main(os.Args))
}
