package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/install"
)

func init() {
	Register(newInstallCommand)
	Register(newUninstallCommand)
}

func newInstallCommand() *cobra.Command {
	kube := newKubeFlags(true)
	var image string
	var dryRun, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the netdoctor agent (namespace, RBAC, DaemonSet) in the cluster",
		Long: `install creates the netdoctor namespace, the agent's ServiceAccount and its
least-privilege RBAC, the agent DaemonSet (hostNetwork, NET_ADMIN, NET_RAW,
SYS_ADMIN, SYS_PTRACE, no privileged mode, every taint tolerated,
system-node-critical) and the probe-target DaemonSet and Service.
--dry-run prints the manifests instead (the same as deploy/netdoctor.yaml).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := install.Options{Image: image}
			if dryRun {
				y, err := install.YAML(opts)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(y)
				return err
			}
			cs, _, err := connect(cmd.Context(), kube)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := install.Apply(ctx, cs, install.Objects(opts)); err != nil {
				return &ExitCodeError{Code: ExitError, Err: err}
			}
			_, _ = fmt.Fprintf(cmd.OutOrStdout(), "installed netdoctor agent in namespace %s (image %s)\n", install.Namespace, orDefault(image, install.DefaultImg))
			if wait {
				n, err := install.WaitReady(ctx, cs, 0)
				if err != nil {
					return &ExitCodeError{Code: ExitError, Err: err}
				}
				_, _ = fmt.Fprintf(cmd.OutOrStdout(), "%d agent(s) ready\n", n)
			}
			return nil
		},
	}
	kube.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&image, "image", install.DefaultImg, "netdoctor image")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the manifests, change nothing")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until an agent is ready on every node")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait")
	return cmd
}

func newUninstallCommand() *cobra.Command {
	kube := newKubeFlags(true)
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the netdoctor agent and everything install created",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, _, err := connect(cmd.Context(), kube)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := install.Uninstall(ctx, cs, true); err != nil {
				return &ExitCodeError{Code: ExitError, Err: err}
			}
			_, _ = fmt.Fprintf(cmd.OutOrStdout(), "removed netdoctor from the cluster\n")
			return nil
		},
	}
	kube.AddFlags(cmd.Flags())
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the namespace to go")
	return cmd
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
