// Command netdoctor-k8s is the lab's multi-call binary of real Kubernetes programs: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and CoreDNS, built from
// their own Go modules at one pinned version. One binary instead of six saves disk and link time.
//
// The program to run is chosen by the base name of argv[0] (a symlink named kube-proxy runs
// kube-proxy) or else by the first argument:
//
//	netdoctor-k8s kube-apiserver --etcd-servers=... ...
//	netdoctor-k8s list
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// programs maps a program name to its entry point. Each entry point sees os.Args as if it had
// been started under its own name and returns the process exit code.
var programs = map[string]func() int{
	"etcd":                    runEtcd,
	"kube-apiserver":          runAPIServer,
	"kube-controller-manager": runControllerManager,
	"kube-scheduler":          runScheduler,
	"kube-proxy":              runProxy,
	"coredns":                 runCoreDNS,
}

func names() []string {
	out := make([]string, 0, len(programs))
	for n := range programs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// pick returns the program named by argv and the argument vector to give it (its own name
// first), or ok=false.
func pick(argv []string) (name string, args []string, ok bool) {
	if len(argv) == 0 {
		return "", nil, false
	}
	base := filepath.Base(argv[0])
	if _, found := programs[base]; found {
		return base, argv, true
	}
	if len(argv) >= 2 {
		if _, found := programs[argv[1]]; found {
			return argv[1], append([]string{argv[1]}, argv[2:]...), true
		}
	}
	return "", nil, false
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: netdoctor-k8s PROGRAM [ARGS...]\nprograms: %s\n", strings.Join(names(), ", "))
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "list" {
		fmt.Println(strings.Join(names(), "\n"))
		return
	}
	name, args, ok := pick(os.Args)
	if !ok {
		usage()
		os.Exit(2)
	}
	os.Args = args
	os.Exit(programs[name]())
}
