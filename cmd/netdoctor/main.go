// Command netdoctor diagnoses Kubernetes cluster networking. Installed as
// kubectl-netdoctor it is also a kubectl plugin; it is also the per-node agent
// and the lab.
package main

import (
	"os"

	"github.com/netdoctor/netdoctor/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args))
}
