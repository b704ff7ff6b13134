package cli

import (
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeFlags are kubectl's connection flags (--kubeconfig, --context, --cluster, --user,
// -n/--namespace, -s/--server, --token, --as..., --request-timeout), bound with client-go's
// clientcmd, the library kubectl's own flags are built on. They are not cli-runtime's
// ConfigFlags: that package brings kustomize, and kustomize the "plugin" package, which makes
// the linker export every symbol and keep every exported method. The one binary is also the
// agent on every node; docs/performance.md has what that cost in size and memory.
type kubeFlags struct {
	kubeconfig string
	overrides  clientcmd.ConfigOverrides
	names      clientcmd.ConfigOverrideFlags
}

// newKubeFlags returns kubectl's flags; without namespaceAndServer, -n/--namespace and
// -s/--server are left out (the tools use those shorthands for their own options).
func newKubeFlags(namespaceAndServer bool) *kubeFlags {
	k := &kubeFlags{names: clientcmd.RecommendedConfigOverrideFlags("")}
	k.names.ClusterOverrideFlags.APIServer.ShortName = "s" // as kubectl
	if !namespaceAndServer {
		// A flag without a long name is not registered.
		k.names.ContextOverrideFlags.Namespace = clientcmd.FlagInfo{}
		k.names.ClusterOverrideFlags.APIServer = clientcmd.FlagInfo{}
	}
	return k
}

// AddFlags registers the flags on fs.
func (k *kubeFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, clientcmd.RecommendedConfigPathFlag, "", "Path to the kubeconfig file to use for CLI requests.")
	clientcmd.BindOverrideFlags(&k.overrides, fs, k.names)
}

// clientConfig loads the kubeconfig as kubectl does: --kubeconfig, else $KUBECONFIG, else
// ~/.kube/config, with the flags on top; in a pod without any, the in-cluster configuration.
func (k *kubeFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &k.overrides)
}

// ToRESTConfig is the client configuration the flags and the kubeconfig give.
func (k *kubeFlags) ToRESTConfig() (*rest.Config, error) {
	return k.clientConfig().ClientConfig()
}

// rawConfig is the merged kubeconfig, before the flags apply.
func (k *kubeFlags) rawConfig() (clientcmdapi.Config, error) {
	return k.clientConfig().RawConfig()
}

// namespace is the -n/--namespace flag's value ("" when not given).
func (k *kubeFlags) namespace() string {
	return k.overrides.Context.Namespace
}
