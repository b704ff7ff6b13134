package agent

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/netfilter"
)

// ServiceNAT is one ClusterIP port's NAT as programmed on a node: the
// virtual address and the DNAT targets (ip:port).
type ServiceNAT struct {
	IP      string
	Proto   string // TCP, UDP, SCTP
	Port    int
	Targets []string
}

// Key is "ip proto port".
func (s ServiceNAT) Key() string { return fmt.Sprintf("%s %s %d", s.IP, s.Proto, s.Port) }

// ExtractServiceNAT reads kube-proxy's Service NAT from a node snapshot:
// iptables mode (nat KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT),
// nftables mode (table ip kube-proxy, map service-ips -> service chains ->
// dnat) or IPVS (virtual servers). It returns the mode found, or an error
// when no kube-proxy rules exist in any backend ("" mode, no error, means
// the rulesets were readable and held no kube-proxy rules).
func ExtractServiceNAT(snap *facts.NodeSnapshot) (string, []ServiceNAT, error) {
	var errs []string
	for _, src := range []struct{ name, text string }{{"iptables-nft", snap.Netfilter.IptablesNft}, {"iptables-legacy", snap.Netfilter.IptablesLegacy}} {
		if strings.TrimSpace(src.text) == "" {
			continue
		}
		rs, err := netfilter.ParseIptablesSave([]byte(src.text))
		if err != nil {
			errs = append(errs, fmt.Sprintf("parse %s: %v", src.name, err))
			continue
		}
		if out := iptablesNAT(rs); out != nil {
			return "iptables", out, nil
		}
	}
	if strings.TrimSpace(snap.Netfilter.NftJSON) != "" {
		rs, err := netfilter.ParseNftJSON([]byte(snap.Netfilter.NftJSON))
		if err != nil {
			errs = append(errs, fmt.Sprintf("parse nft json: %v", err))
		} else if out := nftNAT(rs); out != nil {
			return "nftables", out, nil
		}
	}
	if snap.IPVS != nil && len(snap.IPVS.Services) > 0 {
		var out []ServiceNAT
		for _, v := range snap.IPVS.Services {
			s := ServiceNAT{IP: v.Address, Proto: strings.ToUpper(v.Protocol), Port: v.Port}
			for _, d := range v.Destinations {
				s.Targets = append(s.Targets, joinHostPort(d.Address, d.Port))
			}
			out = append(out, s)
		}
		return "ipvs", out, nil
	}
	if len(errs) > 0 {
		return "", nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	for _, k := range []string{"netfilter.iptables-nft", "netfilter.iptables-legacy", "netfilter.nft"} {
		if e, ok := snap.Errors[k]; ok {
			errs = append(errs, k+": "+e)
		}
	}
	if len(errs) > 0 {
		return "", nil, fmt.Errorf("netfilter not readable: %s", strings.Join(errs, "; "))
	}
	return "", nil, nil
}

func joinHostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

func optValue(opts []netfilter.Option, name string) string {
	for _, o := range opts {
		if o.Name == name && !o.Negated {
			return o.Value()
		}
	}
	return ""
}

// iptablesNAT walks nat/KUBE-SERVICES; nil when the chain does not exist.
func iptablesNAT(rs *netfilter.Ruleset) []ServiceNAT {
	nat := rs.Table("ip", "nat")
	if nat == nil {
		nat = rs.Table("", "nat")
	}
	if nat == nil {
		return nil
	}
	svcs := nat.Chain("KUBE-SERVICES")
	if svcs == nil {
		return nil
	}
	out := []ServiceNAT{}
	for _, r := range svcs.Rules {
		if !strings.HasPrefix(r.Target, "KUBE-SVC-") {
			continue
		}
		dst := strings.TrimSuffix(optValue(r.Basic, "d"), "/32")
		proto := strings.ToUpper(optValue(r.Basic, "p"))
		port := 0
		for _, m := range r.Matches {
			if v, ok := m.Option("dport"); ok {
				port, _ = strconv.Atoi(v.Value())
			}
		}
		if dst == "" || port == 0 {
			continue
		}
		s := ServiceNAT{IP: dst, Proto: proto, Port: port}
		if c := nat.Chain(r.Target); c != nil {
			for _, sr := range c.Rules {
				if !strings.HasPrefix(sr.Target, "KUBE-SEP-") {
					continue
				}
				if sep := nat.Chain(sr.Target); sep != nil {
					for _, er := range sep.Rules {
						if er.Target == "DNAT" {
							if to := optValue(er.TargetOptions, "to-destination"); to != "" {
								s.Targets = append(s.Targets, to)
							}
						}
					}
				}
			}
		}
		out = append(out, s)
	}
	return out
}

var (
	nftPairRe     = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+) \. (\d+)`)
	nftDnatRe     = regexp.MustCompile(`dnat (?:ip )?to (\d+\.\d+\.\d+\.\d+):(\d+)`)
	nftEndpointRe = regexp.MustCompile(`endpoint-[A-Z0-9]+-\S*?__(\d+\.\d+\.\d+\.\d+)/(\d+)`)
)

var ipProto = map[string]string{"6": "TCP", "17": "UDP", "132": "SCTP", "tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}

// nftNAT reads table ip kube-proxy; nil when it does not exist.
func nftNAT(rs *netfilter.Ruleset) []ServiceNAT {
	var t *netfilter.Table
	for _, tb := range rs.Tables {
		if tb.Name == "kube-proxy" && tb.Family == "ip" {
			t = tb
		}
	}
	if t == nil {
		return nil
	}
	m := t.Sets["service-ips"]
	out := []ServiceNAT{}
	if m == nil {
		return out
	}
	for _, e := range m.Elements {
		if len(e.Key) < 3 {
			continue
		}
		port, _ := strconv.Atoi(e.Key[2])
		s := ServiceNAT{IP: e.Key[0], Proto: ipProto[strings.ToLower(e.Key[1])], Port: port}
		chain := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(e.Data, "goto "), "jump "))
		if c := t.Chain(chain); c != nil {
			for _, r := range c.Rules {
				s.Targets = append(s.Targets, nftTargets(t, r.Text)...)
			}
		}
		out = append(out, s)
	}
	return out
}

// nftTargets reads DNAT targets from a service chain rule: an inline dnat
// (to A:P, or numgen map { 0 : A . P, ... }) or gotos to endpoint chains
// whose names end in __A/P.
func nftTargets(t *netfilter.Table, text string) []string {
	var out []string
	if strings.Contains(text, "dnat") {
		for _, m := range nftDnatRe.FindAllStringSubmatch(text, -1) {
			out = append(out, m[1]+":"+m[2])
		}
		for _, m := range nftPairRe.FindAllStringSubmatch(text, -1) {
			out = append(out, m[1]+":"+m[2])
		}
		return out
	}
	for _, m := range nftEndpointRe.FindAllStringSubmatch(text, -1) {
		out = append(out, m[1]+":"+m[2])
	}
	return out
}

// ServiceFingerprints maps the node's Service NAT onto the API's Service
// ports and fingerprints each. expected is what the API says (from
// cluster.ExpectedServiceRules); the endpoint list is included only where
// the node differs from it. ClusterIPs the API does not know are left out.
func ServiceFingerprints(nat []ServiceNAT, services []cluster.Service, expected []cluster.ServiceRule) []cluster.ServiceRule {
	byAddr := map[string]string{} // "ip proto port" -> "ns/name port/proto"
	for _, s := range services {
		for _, ip := range s.ClusterIPs {
			for _, p := range s.Ports {
				byAddr[fmt.Sprintf("%s %s %d", ip, p.Protocol, p.Port)] = s.Key() + " " + fmt.Sprintf("%d/%s", p.Port, p.Protocol)
			}
		}
	}
	want := map[string]string{}
	for _, e := range expected {
		want[e.Key()] = e.Hash
	}
	var out []cluster.ServiceRule
	for _, n := range nat {
		key, ok := byAddr[n.Key()]
		if !ok {
			continue
		}
		svc, port, _ := strings.Cut(key, " ")
		t := append([]string(nil), n.Targets...)
		sort.Strings(t)
		r := cluster.ServiceRule{Service: svc, Port: port, ClusterIP: n.IP, Endpoints: len(t), Hash: cluster.EndpointsHash(t)}
		if want[key] != r.Hash {
			r.Targets = t
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}
