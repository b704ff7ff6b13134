package cli

import (
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/faults"
)

// newLabDNSRace is the racing DNS client the lab's conntrack-insert-failed fault runs in a pod.
func newLabDNSRace() *cobra.Command {
	var servers []string
	o := faults.DNSRaceOptions{}
	cmd := &cobra.Command{
		Use:    "dnsrace --server IP:PORT --server IP:PORT [--name NAME] [--rate N]",
		Short:  "Send each DNS query to two servers at once from one UDP socket and two CPUs (the lab's conntrack race)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.RequireLabNetns("lab dnsrace"); err != nil {
				return UsageError("%v", err)
			}
			if len(servers) != 2 {
				return UsageError("dnsrace needs exactly two --server, got %d", len(servers))
			}
			for _, s := range servers {
				ap, err := netip.ParseAddrPort(s)
				if err != nil {
					return UsageError("--server %q: %v", s, err)
				}
				o.Servers = append(o.Servers, ap)
			}
			if o.Rate <= 0 {
				return UsageError("--rate %d: must be positive", o.Rate)
			}
			o.Log = cmd.OutOrStdout()
			return faults.RunDNSRace(cmd.Context(), o)
		},
	}
	cmd.Flags().StringArrayVar(&servers, "server", nil, "nameserver IP:PORT (exactly two)")
	cmd.Flags().StringVar(&o.Name, "name", "kubernetes.default.svc.cluster.local.", "name to ask (type A)")
	cmd.Flags().IntVar(&o.Rate, "rate", 100, "racing pairs per second")
	return cmd
}
