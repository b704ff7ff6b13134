package cli

import (
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
)

// newLabPortFill is the client the lab's ephemeral-ports-exhausted fault runs in a node's namespace.
func newLabPortFill() *cobra.Command {
	var to string
	o := faults.PortFillOptions{}
	cmd := &cobra.Command{
		Use:    "portfill --to IP:PORT [--max N]",
		Short:  "Open and hold TCP connections to one destination until the ephemeral ports run out (the lab's port exhaustion)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.RequireLabNetns("lab portfill"); err != nil {
				return UsageError("%v", err)
			}
			ap, err := netip.ParseAddrPort(to)
			if err != nil {
				return UsageError("--to %q: %v", to, err)
			}
			if o.Max <= 0 {
				return UsageError("--max %d: must be positive", o.Max)
			}
			o.To, o.Log = ap, cmd.OutOrStdout()
			return faults.RunPortFill(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination IP:PORT")
	cmd.Flags().IntVar(&o.Max, "max", 200, "connections to hold at most")
	return cmd
}

// newLabNICQueue is the stuck queue and steady traffic the lab's nic-queue-drops fault runs in a node's namespace.
func newLabNICQueue() *cobra.Command {
	var to string
	o := faults.NICQueueOptions{}
	cmd := &cobra.Command{
		Use:    "nicqueue --tap NAME --to IP:PORT [--qlen N] [--rate N]",
		Short:  "Make a TAP device nobody reads (its queue drops) and send steady UDP traffic (the lab's NIC queue drops)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.RequireLabNetns("lab nicqueue"); err != nil {
				return UsageError("%v", err)
			}
			ap, err := netip.ParseAddrPort(to)
			if err != nil {
				return UsageError("--to %q: %v", to, err)
			}
			if o.Tap == "" || o.QLen <= 0 || o.Rate <= 0 {
				return UsageError("--tap, a positive --qlen and a positive --rate are needed")
			}
			o.To, o.Log = ap, cmd.OutOrStdout()
			return faults.RunNICQueue(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination of the steady traffic, IP:PORT (a discard port)")
	cmd.Flags().StringVar(&o.Tap, "tap", "ndq0", "name of the TAP device")
	cmd.Flags().IntVar(&o.QLen, "qlen", 8, "txqueuelen of the TAP device")
	cmd.Flags().IntVar(&o.Rate, "rate", 200, "packets a second")
	return cmd
}
