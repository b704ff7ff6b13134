package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// NodeSubcommands are constructors of the `node` command's subcommands.
// Files of package cli append to it from init (node check lives in its own
// file); `node collect` is added here.
var NodeSubcommands []func() *cobra.Command

func init() {
	Register(newNodeCommand)
	NodeSubcommands = append(NodeSubcommands, newNodeCollectCommand)
}

func newNodeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Look at this machine (or one of its network namespaces): no Kubernetes needed",
		Args:  cobra.NoArgs,
	}
	for _, f := range NodeSubcommands {
		cmd.AddCommand(f())
	}
	return cmd
}

// NodeTarget is the namespace selection shared by the node subcommands:
// --netns NAME|PATH or --pid PID.
type NodeTarget struct {
	Netns string
	PID   int
}

// AddFlags registers --netns and --pid on cmd.
func (t *NodeTarget) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.Netns, "netns", "", "network namespace to examine: a name (ip netns list) or a path; default the current one")
	cmd.Flags().IntVar(&t.PID, "pid", 0, "examine the network namespace of this process")
}

// Spec validates the selection and returns the namespace spec for
// collect.Options.Netns ("" = current namespace). Bad input is a UsageError
// (exit 2) naming what is wrong.
func (t *NodeTarget) Spec(cmd *cobra.Command) (string, error) {
	pidSet := cmd.Flags().Changed("pid")
	if t.Netns != "" && pidSet {
		return "", UsageError("--netns and --pid both given: choose one namespace")
	}
	spec := t.Netns
	if pidSet {
		if t.PID <= 0 {
			return "", UsageError("--pid %d: a process ID is a positive number", t.PID)
		}
		spec = "pid:" + strconv.Itoa(t.PID)
	}
	if _, err := namespace.Resolve(spec); err != nil {
		return "", UsageError("%v", err)
	}
	return spec, nil
}

func newNodeCollectCommand() *cobra.Command {
	var target NodeTarget
	var file string
	var sections []string
	cmd := &cobra.Command{
		Use:   "collect [--netns NAME|PATH | --pid PID] [-f FILE]",
		Short: "Write this node's facts (links, routes, sysctls, netfilter...) as a JSON snapshot",
		Long: `Collect the node facts netdoctor's rules read (the same snapshot node check uses)
and write them as JSON, to stdout or to FILE. Sections that cannot be read are
listed under "errors" with the reason; the rest is still written.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := target.Spec(cmd)
			if err != nil {
				return err
			}
			snap, err := collect.Collect(cmd.Context(), collect.Options{Netns: spec, Sections: sections})
			if err != nil {
				return UsageError("collect node facts: %v", err)
			}
			out, err := json.MarshalIndent(snap, "", "  ")
			if err != nil {
				return fmt.Errorf("encode node snapshot: %w", err)
			}
			out = append(out, '\n')
			if file == "" || file == "-" {
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			if err := os.WriteFile(file, out, 0o644); err != nil {
				return fmt.Errorf("write node snapshot: %w", err)
			}
			return nil
		},
	}
	target.AddFlags(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", "", "write the snapshot to FILE instead of stdout")
	cmd.Flags().StringSliceVar(&sections, "sections", nil, "collect only these sections (comma-separated): "+strings.Join(collect.AllSections, ","))
	return cmd
}
