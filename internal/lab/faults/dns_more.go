package faults

import (
	"context"
	"fmt"
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/lab"
)

// dns-resolution-failed: the path from one node's pods to the DNS Service is broken, so
// every kind of name fails from that node's pods (seed 000: "only from node1") while pods of
// the other nodes resolve, and the node's pods still reach pods and Services by address.

// PodResolveOtherNamespace: "web.shop" (a Service of another namespace, as svc.ns) resolved
// from the web pod of namespace default on From the way its libc would (its resolv.conf's
// nameservers, search list and ndots).
const PodResolveOtherNamespace ProbeKind = "pod-resolve-other-ns"

// dnsDropComment marks the rules of dns-resolution-failed.
const dnsDropComment = "ndlab fault dns-resolution-failed"

func init() {
	Register(Fault{
		ID: "dns-resolution-failed", Group: "dns",
		Summary: "a firewall rule on the node drops its pods' traffic to the DNS Service (UDP and TCP, whichever CoreDNS replica it was sent to): " +
			"from that node's pods every name fails (same-namespace short name, other-namespace svc.ns, FQDN, external name); pods on other nodes resolve; pod and ClusterIP TCP work",
		Injection: "iptables -I FORWARD -s NODE_POD_CIDR -p udp -m conntrack --ctorigdst CLUSTER_DNS_IP -j DROP (and -p tcp)",
		Checks: []Check{
			{Kind: PodResolve, From: Faulted, Broken: true},
			{Kind: PodResolveOtherNamespace, From: Faulted, Broken: true},
			{Kind: PodDNSCluster, From: Faulted, Broken: true},
			{Kind: PodDNSExternal, From: Faulted, Broken: true},
			{Kind: PodResolve, From: Peer},
			{Kind: PodResolveOtherNamespace, From: Peer},
			{Kind: PodDNSCluster, From: Other},
			{Kind: PodDNSExternal, From: Other},
			{Kind: PodTCP, From: Faulted, To: Peer},
			{Kind: PodSampleService, From: Faulted},
			{Kind: UpstreamDirect, From: Faulted},
		},
		Inject: injectDNSPathDrop,
		Heal:   healDNSPathDrop,
	})
}

// dnsDropRule is the FORWARD rule for protocol proto (without the -I/-D/-C verb).
func dnsDropRule(podCIDR netip.Prefix, dnsIP netip.Addr, proto string) []string {
	return []string{"FORWARD", "-s", podCIDR.Masked().String(), "-p", proto, "-m", "conntrack", "--ctorigdst", dnsIP.String() + "/32",
		"-m", "comment", "--comment", dnsDropComment, "-j", "DROP"}
}

// nodePodCIDR reads the faulted node's pod CIDR from its Node.
func nodePodCIDR(ctx context.Context, t Target) (netip.Prefix, error) {
	n, err := t.Lab.Client.CoreV1().Nodes().Get(ctx, t.Node, metav1.GetOptions{})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("get node %s: %w", t.Node, err)
	}
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("pod CIDR %q of node %s: %w", n.Spec.PodCIDR, t.Node, err)
	}
	return p, nil
}

func injectDNSPathDrop(ctx context.Context, t Target) (map[string]string, error) {
	cidr, err := nodePodCIDR(ctx, t)
	if err != nil {
		return nil, err
	}
	dnsIP := t.Lab.State.Config.ClusterDNSIP()
	data := map[string]string{"podCIDR": cidr.String(), "dnsIP": dnsIP.String()}
	for _, proto := range []string{"udp", "tcp"} {
		if err := iptables(ctx, t, append([]string{"-I"}, dnsDropRule(cidr, dnsIP, proto)...)...); err != nil {
			return data, err
		}
	}
	return data, nil
}

func healDNSPathDrop(ctx context.Context, t Target, d map[string]string) error {
	cidr, err := netip.ParsePrefix(d["podCIDR"])
	if err != nil {
		if cidr, err = nodePodCIDR(ctx, t); err != nil {
			return err
		}
	}
	dnsIP, err := netip.ParseAddr(d["dnsIP"])
	if err != nil {
		dnsIP = t.Lab.State.Config.ClusterDNSIP()
	}
	for _, proto := range []string{"udp", "tcp"} {
		rule := dnsDropRule(cidr, dnsIP, proto)
		// Every copy (an inject retried after a partial failure may have left two).
		for iptables(ctx, t, append([]string{"-C"}, rule...)...) == nil {
			if err := iptables(ctx, t, append([]string{"-D"}, rule...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// probeExtra runs the probe kinds of tunnel.go and dns_more.go, then conntrack.go's.
func (p *Prober) probeExtra(ctx context.Context, kind ProbeKind, src, dst PodRef) error {
	switch kind {
	case PodUDPArrives:
		return udpArrives(ctx, src, dst)
	case PodResolveOtherNamespace:
		conf, err := podResolvConf(ctx, p.L, src)
		if err != nil {
			return err
		}
		_, err = Resolve(ctx, src.Netns, conf, lab.SampleName+"."+ServiceNamespace)
		return err
	case NodeTCPExt, NodeDropsQuiet, PodPingBurst:
		return p.probeCapacity(ctx, kind, src, dst) // capacity.go
	}
	return p.probeConntrack(ctx, kind, src.Node) // more kinds: conntrack.go
}
