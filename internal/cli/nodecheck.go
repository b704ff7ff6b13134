package cli

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/finding"
	"github.com/netdoctor/netdoctor/internal/report"
	"github.com/netdoctor/netdoctor/internal/rules"
)

func init() {
	NodeSubcommands = append(NodeSubcommands, newNodeCheckCommand)
}

// hintFlags are the cluster facts a user can give node check and analyze.
type hintFlags struct {
	podCIDRs     []string
	clusterCIDRs []string
	serviceCIDRs []string
}

func (h *hintFlags) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&h.podCIDRs, "pod-cidr", nil, "a node's pod CIDR (repeatable): the one holding this node's pod bridge address is this node's, the others are peers' (default: learned from cni0, flannel's subnet.env and overlay routes)")
	cmd.Flags().StringArrayVar(&h.clusterCIDRs, "cluster-cidr", nil, "the cluster's pod network (kube-controller-manager --cluster-cidr); repeat for dual-stack (default: FLANNEL_NETWORK)")
	cmd.Flags().StringArrayVar(&h.serviceCIDRs, "service-cidr", nil, "the Service ClusterIP range (--service-cluster-ip-range); repeat for dual-stack")
}

func parsePrefixes(flag string, vals []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, UsageError("--%s %q is not a CIDR (like 10.244.0.0/16): %v", flag, s, err)
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// hints validates the flags into rules.Hints (bad input: exit 2).
func (h *hintFlags) hints() (rules.Hints, error) {
	var r rules.Hints
	var err error
	if r.PodCIDRs, err = parsePrefixes("pod-cidr", h.podCIDRs); err != nil {
		return r, err
	}
	if r.ClusterCIDRs, err = parsePrefixes("cluster-cidr", h.clusterCIDRs); err != nil {
		return r, err
	}
	if r.ServiceCIDRs, err = parsePrefixes("service-cidr", h.serviceCIDRs); err != nil {
		return r, err
	}
	return r, nil
}

// render writes the report in the chosen format and turns findings into
// exit code 1.
func render(cmd *cobra.Command, r *finding.Report) error {
	w := cmd.OutOrStdout()
	opts := report.Options{Color: report.ColorFor(w), Verbose: Globals.Verbose}
	if err := report.Write(w, r, Globals.Output, opts); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if r.ExitCode() != 0 {
		return FindingsExit()
	}
	if len(r.Checks) > 0 && r.Summary.Passed+r.Summary.Failed == 0 {
		// Nothing was actually checked: saying "no faults" would be a lie.
		return UsageError("no check could run: every rule lacked the facts it needs (reasons above)")
	}
	return nil
}

func newNodeCheckCommand() *cobra.Command {
	var target NodeTarget
	var h hintFlags
	var nodeName, rootDir string
	cmd := &cobra.Command{
		Use:   "check [--netns NAME|PATH | --pid PID] [--pod-cidr CIDR]... [--cluster-cidr CIDR] [--service-cidr CIDR]",
		Short: "Find this node's network faults (ip_forward, br_netfilter, FORWARD drop, overlay blocked, routes, FDB, MTU, conntrack, kube-proxy...)",
		Long: `Collect this node's facts (or those of a network namespace) and run every
node rule on them: each fault found is printed with its evidence and the fix;
a rule that lacks the facts it needs says "skipped" with the reason.

Exit status: 0 no critical or warning finding, 1 findings, 2 the check could
not be done (bad flags, unknown namespace).`,
		Example: `  netdoctor node check
  netdoctor node check --netns node-2 --cluster-cidr 10.244.0.0/16 --service-cidr 10.96.0.0/12
  netdoctor node check --pid 4242 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			spec, err := target.Spec(cmd)
			if err != nil {
				return err
			}
			hints, err := h.hints()
			if err != nil {
				return err
			}
			if nodeName == "" && target.Netns != "" {
				nodeName = filepath.Base(target.Netns)
			}
			if rootDir != "" {
				if st, err := os.Stat(rootDir); err != nil || !st.IsDir() {
					return UsageError("--root-dir %s: not a directory", rootDir)
				}
			}
			snap, err := collect.Collect(cmd.Context(), collect.Options{Netns: spec, NodeName: nodeName, RootDir: rootDir})
			if err != nil {
				return UsageError("collect node facts: %v", err)
			}
			return render(cmd, rules.Evaluate(&rules.Input{Node: snap, Hints: hints}))
		},
	}
	target.AddFlags(cmd)
	h.addFlags(cmd)
	cmd.Flags().StringVar(&nodeName, "node-name", "", "name the node in the report (default: the --netns name, else the hostname)")
	cmd.Flags().StringVar(&rootDir, "root-dir", "", "read the node's config files (/run/flannel/subnet.env...) below this directory, e.g. /host in a DaemonSet")
	return cmd
}
