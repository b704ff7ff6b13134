package cli

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/cluster"
)

func init() { Register(newAgentCommand) }

func newAgentCommand() *cobra.Command {
	kube := newKubeFlags(true)
	var node, netns, criEndpoint string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the per-node agent (the netdoctor DaemonSet's entry point)",
		Long: `The agent answers netdoctor check's requests for its node through the
Kubernetes API: it watches request ConfigMaps in the netdoctor namespace,
analyses its node (node facts and rules, Service NAT fingerprints, probes)
and writes a result ConfigMap. It opens no listening port. The node name
comes from --node or $NODE_NAME.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if node == "" {
				node = os.Getenv("NODE_NAME")
			}
			if node == "" {
				return UsageError("no node name: set $NODE_NAME (the DaemonSet does, from spec.nodeName) or --node")
			}
			rc, err := kube.ToRESTConfig()
			if err != nil {
				return UsageError("kubernetes client configuration: %v", err)
			}
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return UsageError("kubernetes client: %v", err)
			}
			ns := cluster.AgentNamespace
			if v := os.Getenv("POD_NAMESPACE"); v != "" {
				ns = v
			}
			a := &agent.Agent{Client: cs, Namespace: ns, Node: node, Netns: netns, CRIEndpoint: criEndpoint,
				Log: slog.Default().With("component", "agent", "node", node)}
			// A small steady heap on every node: collect more often, and
			// return freed memory (see Agent.consider).
			debug.SetGCPercent(50)
			a.Log.Info("agent started", "namespace", ns)
			return a.Run(cmd.Context())
		},
	}
	kube.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&node, "node", "", "node name (default $NODE_NAME)")
	cmd.Flags().StringVar(&netns, "netns", "", "the node's network namespace, if not the agent's own (name, path or pid)")
	cmd.Flags().StringVar(&criEndpoint, "cri-endpoint", os.Getenv("CONTAINER_RUNTIME_ENDPOINT"), "CRI socket (default: containerd, CRI-O, then /proc)")
	cmd.AddCommand(newAgentTargetCommand())
	return cmd
}

func newAgentTargetCommand() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "target",
		Short: "Accept and close TCP connections: the connectivity matrix's probe target pod",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "netdoctor probe target on %s\n", listen)
			return agent.ServeTarget(cmd.Context(), listen)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", fmt.Sprintf(":%d", cluster.TargetPort), "address to accept probes on")
	return cmd
}
