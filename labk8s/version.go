package main

import (
	"fmt"
	"os"
	"strings"
	_ "unsafe" // for go:linkname

	"k8s.io/component-base/version"
)

// kubernetesVersion is the Kubernetes release this module is built from (see go.mod). The
// Kubernetes build stamps it into component-base and client-go with -ldflags -X; `make
// labbins` is a plain `go build`, so the stamps are set here, before any program reads them,
// so that /version, user agents and --version report the real release instead of
// v0.0.0-master.
const kubernetesVersion = "v1.37.2"

//go:linkname componentBaseGitVersion k8s.io/component-base/version.gitVersion
var componentBaseGitVersion string

//go:linkname componentBaseGitMajor k8s.io/component-base/version.gitMajor
var componentBaseGitMajor string

//go:linkname componentBaseGitMinor k8s.io/component-base/version.gitMinor
var componentBaseGitMinor string

//go:linkname clientGoGitVersion k8s.io/client-go/pkg/version.gitVersion
var clientGoGitVersion string

//go:linkname clientGoGitMajor k8s.io/client-go/pkg/version.gitMajor
var clientGoGitMajor string

//go:linkname clientGoGitMinor k8s.io/client-go/pkg/version.gitMinor
var clientGoGitMinor string

func init() {
	parts := strings.SplitN(strings.TrimPrefix(kubernetesVersion, "v"), ".", 3)
	componentBaseGitVersion, clientGoGitVersion = kubernetesVersion, kubernetesVersion
	componentBaseGitMajor, clientGoGitMajor = parts[0], parts[0]
	componentBaseGitMinor, clientGoGitMinor = parts[1], parts[1]
	// component-base copied gitVersion into its dynamic version at its own init.
	if err := version.SetDynamicVersion(kubernetesVersion); err != nil {
		fmt.Fprintf(os.Stderr, "netdoctor-k8s: set Kubernetes version: %v\n", err)
	}
}
