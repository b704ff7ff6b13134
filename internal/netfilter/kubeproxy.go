package netfilter

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// KubeService is one service port as kube-proxy programmed it on a node:
// the destination it captures, the chain it dispatches to and the
// endpoints it balances over.
type KubeService struct {
	// Name is "namespace/name:port" (the port name may be empty:
	// "default/web:").
	Name string `json:"name"`
	// Kind is "cluster IP", "external IP" or "loadbalancer IP".
	Kind string     `json:"kind"`
	IP   netip.Addr `json:"ip"`
	// Proto is "tcp", "udp" or "sctp".
	Proto string `json:"proto"`
	Port  uint16 `json:"port"`
	// NodePort is the service's node port, 0 if none is programmed.
	NodePort uint16 `json:"nodePort,omitempty"`
	// Chain is the chain the destination dispatches to (KUBE-SVC-...,
	// KUBE-SVL-..., KUBE-EXT-..., or nftables service-.../external-...).
	Chain string `json:"chain"`
	// Endpoints in kube-proxy's order, each with the probability of being
	// chosen for a new connection.
	Endpoints []KubeEndpoint `json:"endpoints"`
	// NoEndpoints is true when kube-proxy programmed the "has no
	// endpoints" reject/drop for this destination.
	NoEndpoints bool `json:"noEndpoints,omitempty"`
	// Backend is "iptables" or "nftables".
	Backend string `json:"backend"`
}

// KubeEndpoint is one endpoint of a KubeService.
type KubeEndpoint struct {
	Addr        netip.AddrPort `json:"addr"`
	Chain       string         `json:"chain"`
	Probability float64        `json:"probability"`
}

// Key returns "proto ip:port" (e.g. "tcp 198.19.0.20:80").
func (s KubeService) Key() string {
	return s.Proto + " " + netip.AddrPortFrom(s.IP, s.Port).String()
}

// Fingerprint is a short stable hash of what the node does with the
// service: destination, node port, endpoints (sorted) and whether it
// rejects. Two nodes with the same fingerprint program the service alike;
// chain names (hashes of the same inputs) are left out.
func (s KubeService) Fingerprint() string {
	eps := make([]string, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		eps = append(eps, e.Addr.String())
	}
	sort.Strings(eps)
	canon := fmt.Sprintf("%s|%s|np=%d|noep=%t|%s", s.Key(), s.Name, s.NodePort, s.NoEndpoints, strings.Join(eps, ","))
	h := sha256.Sum256([]byte(canon))
	return hex.EncodeToString(h[:8])
}

// KubeProxyServices extracts kube-proxy's service map from a ruleset in
// either mode: for iptables the nat table's KUBE-SERVICES, KUBE-SVC-*,
// KUBE-SEP-* and KUBE-NODEPORTS chains (plus the filter table's "has no
// endpoints" rejects); for nftables the kube-proxy table's service-ips,
// service-nodeports and no-endpoint-* maps. The result is sorted by Key.
// A ruleset without kube-proxy rules gives an empty list.
func KubeProxyServices(rs *Ruleset) ([]KubeService, error) {
	if rs == nil {
		return nil, nil
	}
	var out []KubeService
	var err error
	if rs.Backend == BackendNftables {
		for _, t := range rs.Tables {
			if t.Name != "kube-proxy" {
				continue
			}
			s, e := kubeNftServices(t)
			if e != nil {
				return nil, e
			}
			out = append(out, s...)
		}
	} else {
		out, err = kubeIptServices(rs)
		if err != nil {
			return nil, err
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].IP != out[j].IP {
			return out[i].IP.Less(out[j].IP)
		}
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return out[i].Proto < out[j].Proto
	})
	return out, nil
}

var kubeKinds = []string{" cluster IP", " external IP", " loadbalancer IP", " has no endpoints"}

func splitKubeComment(c string) (name, kind string) {
	for _, k := range kubeKinds {
		if strings.HasSuffix(c, k) {
			return strings.TrimSuffix(c, k), strings.TrimSpace(k)
		}
	}
	return c, ""
}

// iptDest reads "-d IP/32 -p proto --dport N" of a rule.
func iptDest(r *Rule) (netip.Addr, string, uint16, bool) {
	d, ok := r.MatchOption("", "d")
	if !ok || d.Negated {
		return netip.Addr{}, "", 0, false
	}
	pfx, err := parseAddrOrPrefix(d.Arg)
	if err != nil || !pfx.IsSingleIP() {
		return netip.Addr{}, "", 0, false
	}
	p, _ := r.MatchOption("", "p")
	var port uint16
	for _, m := range r.Matches {
		if o, ok := m.Option("dport"); ok {
			if v, err := strconv.ParseUint(o.Arg, 10, 16); err == nil {
				port = uint16(v)
			}
		}
	}
	return pfx.Addr(), strings.ToLower(p.Arg), port, port != 0
}

func kubeIptServices(rs *Ruleset) ([]KubeService, error) {
	var out []KubeService
	nat := rs.Table("", "nat")
	if nat != nil {
		if svcs := nat.Chain("KUBE-SERVICES"); svcs != nil {
			for _, r := range svcs.Rules {
				ip, proto, port, ok := iptDest(r)
				if !ok || r.JumpTarget() == nil {
					continue
				}
				name, kind := splitKubeComment(r.Comment)
				s := KubeService{Name: name, Kind: kind, IP: ip, Proto: proto, Port: port, Chain: r.Target, Backend: BackendIptables}
				s.Endpoints = iptEndpoints(r.JumpTarget(), 1, 0)
				out = append(out, s)
			}
		}
		// node ports: KUBE-NODEPORTS -p tcp --dport N -j KUBE-EXT-X
		if np := nat.Chain("KUBE-NODEPORTS"); np != nil {
			for _, r := range np.Rules {
				var port uint16
				for _, m := range r.Matches {
					if o, ok := m.Option("dport"); ok {
						v, _ := strconv.ParseUint(o.Arg, 10, 16)
						port = uint16(v)
					}
				}
				if port == 0 {
					continue
				}
				name, _ := splitKubeComment(r.Comment)
				for i := range out {
					if out[i].Name == name && out[i].Kind == "cluster IP" {
						out[i].NodePort = port
					}
				}
			}
		}
	}
	if filter := rs.Table("", "filter"); filter != nil {
		for _, cn := range []string{"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"} {
			c := filter.Chain(cn)
			if c == nil {
				continue
			}
			for _, r := range c.Rules {
				ip, proto, port, ok := iptDest(r)
				if !ok || (r.Target != "REJECT" && r.Target != "DROP") {
					continue
				}
				name, _ := splitKubeComment(r.Comment)
				out = append(out, KubeService{Name: name, Kind: "cluster IP", IP: ip, Proto: proto, Port: port,
					Chain: r.Target, NoEndpoints: true, Backend: BackendIptables})
			}
		}
	}
	return out, nil
}

// iptEndpoints follows a KUBE-SVC/KUBE-SVL/KUBE-EXT chain to its
// KUBE-SEP chains, computing each endpoint's probability.
func iptEndpoints(c *Chain, p float64, depth int) []KubeEndpoint {
	if depth > 4 {
		return nil
	}
	var out []KubeEndpoint
	remaining := p
	for _, r := range c.Rules {
		j := r.JumpTarget()
		if j == nil {
			continue
		}
		if _, affinity := r.MatchOption("recent", "rcheck"); affinity {
			// ClientIP session affinity: the same endpoints follow with
			// their statistic rules
			continue
		}
		prob := 1.0
		if o, ok := r.MatchOption("statistic", "probability"); ok {
			prob, _ = strconv.ParseFloat(o.Arg, 64)
		}
		switch {
		case strings.HasPrefix(j.Name, "KUBE-SEP-"):
			ep := KubeEndpoint{Chain: j.Name, Probability: remaining * prob}
			for _, sr := range j.Rules {
				if sr.Target == "DNAT" {
					if o, ok := sr.TargetOption("to-destination"); ok {
						a, port, _, err := parseNATTarget(o.Arg)
						if err == nil {
							ep.Addr = netip.AddrPortFrom(a, port)
						}
					}
				}
			}
			out = append(out, ep)
			remaining *= 1 - prob
		case strings.HasPrefix(j.Name, "KUBE-SVC-") || strings.HasPrefix(j.Name, "KUBE-SVL-"):
			out = append(out, iptEndpoints(j, remaining*prob, depth+1)...)
			if r.Goto || len(r.Matches) == 0 && len(r.Basic) == 0 {
				return out
			}
			remaining *= 1 - prob
		}
	}
	return out
}

// nftServiceName turns "service-ULMVA6XW-default/web/tcp/http" into
// "default/web:http".
func nftServiceName(chain string) string {
	i := strings.Index(chain, "-")
	if i < 0 {
		return chain
	}
	rest := chain[i+1:]
	if j := strings.Index(rest, "-"); j >= 0 {
		rest = rest[j+1:]
	}
	parts := strings.Split(rest, "/")
	if len(parts) == 4 {
		return parts[0] + "/" + parts[1] + ":" + parts[3]
	}
	return rest
}

func protoName(n uint64) string {
	for name, v := range map[string]uint64{"tcp": 6, "udp": 17, "sctp": 132} {
		if v == n {
			return name
		}
	}
	return strconv.FormatUint(n, 10)
}

func kubeNftServices(t *Table) ([]KubeService, error) {
	var out []KubeService
	if m := t.Sets["service-ips"]; m != nil {
		for i, el := range m.Elements {
			key := m.keys[i]
			if len(key) != 3 || el.verdict == nil || key[0].kind != vAddr {
				continue
			}
			s := KubeService{IP: key[0].lo, Proto: protoName(key[1].nlo), Port: uint16(key[2].nlo),
				Chain: el.verdict.target, Backend: BackendNftables, Kind: "cluster IP"}
			if strings.HasPrefix(s.Chain, "external-") {
				s.Kind = "external IP"
			}
			s.Name = nftServiceName(s.Chain)
			if c := t.Chain(s.Chain); c != nil {
				s.Endpoints = nftEndpoints(t, c, 1, 0)
			}
			out = append(out, s)
		}
	}
	if m := t.Sets["service-nodeports"]; m != nil {
		for i, el := range m.Elements {
			key := m.keys[i]
			if len(key) != 2 || el.verdict == nil {
				continue
			}
			name := nftServiceName(el.verdict.target)
			for j := range out {
				if out[j].Name == name && out[j].Kind == "cluster IP" && out[j].Proto == protoName(key[0].nlo) {
					out[j].NodePort = uint16(key[1].nlo)
				}
			}
		}
	}
	if m := t.Sets["no-endpoint-services"]; m != nil {
		for i, el := range m.Elements {
			key := m.keys[i]
			if len(key) != 3 || key[0].kind != vAddr {
				continue
			}
			v := ""
			if el.verdict != nil {
				v = el.verdict.String()
			}
			out = append(out, KubeService{Name: el.Comment, Kind: "cluster IP", IP: key[0].lo, Proto: protoName(key[1].nlo),
				Port: uint16(key[2].nlo), Chain: v, NoEndpoints: true, Backend: BackendNftables})
		}
	}
	return out, nil
}

// nftEndpoints follows a service chain to its endpoints, in both layouts
// kube-proxy has used: "numgen random mod N vmap { i : goto endpoint-... }"
// with a dnat in each endpoint chain, and (v1.33+) one
// "dnat to numgen random mod N map { i : addr . port }" in the service chain.
func nftEndpoints(t *Table, c *Chain, p float64, depth int) []KubeEndpoint {
	if depth > 4 {
		return nil
	}
	var out []KubeEndpoint
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			switch e.Kind {
			case "vmap":
				var m struct {
					Key  json.RawMessage `json:"key"`
					Data json.RawMessage `json:"data"`
				}
				if json.Unmarshal(e.Raw, &m) != nil || !strings.Contains(string(m.Key), "numgen") {
					continue
				}
				_, dv, err := oneKey(m.Data)
				if err != nil {
					continue
				}
				var targets []string
				for _, el := range splitList(dv) {
					var pair []json.RawMessage
					if json.Unmarshal(el, &pair) != nil || len(pair) != 2 {
						continue
					}
					if v, err := parseVerdict(pair[1]); err == nil && v.target != "" {
						targets = append(targets, v.target)
					}
				}
				for _, tg := range targets {
					ep := KubeEndpoint{Chain: tg, Probability: p / float64(len(targets))}
					if ec := t.Chain(tg); ec != nil {
						if eps := nftDNATs(ec, 1); len(eps) == 1 {
							ep.Addr = eps[0].Addr
						}
					}
					out = append(out, ep)
				}
			case "dnat":
				for _, ep := range nftDNATs(&Chain{Name: c.Name, Rules: []*Rule{{Exprs: []NftExpr{e}}}}, p) {
					ep.Chain = c.Name
					out = append(out, ep)
				}
			case "goto", "jump":
				v, err := parseVerdict(mustObj(e.Kind, e.Raw))
				if err == nil && (strings.HasPrefix(v.target, "service-") || strings.HasPrefix(v.target, "local-")) {
					if sc := t.Chain(v.target); sc != nil {
						out = append(out, nftEndpoints(t, sc, p, depth+1)...)
					}
				}
			}
		}
	}
	return out
}

// nftDNATs lists the dnat targets of a chain with their probabilities.
func nftDNATs(c *Chain, p float64) []KubeEndpoint {
	var out []KubeEndpoint
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			if e.Kind != "dnat" {
				continue
			}
			var n struct {
				Addr json.RawMessage `json:"addr"`
				Port json.RawMessage `json:"port"`
			}
			if json.Unmarshal(e.Raw, &n) != nil || n.Addr == nil {
				continue
			}
			if _, entries, ok := compileNATMap(n.Addr); ok {
				for _, en := range entries {
					out = append(out, KubeEndpoint{Addr: netip.AddrPortFrom(en.addr, uint16(en.port)), Probability: p / float64(len(entries))})
				}
				continue
			}
			a, port, ok := natTargetValue(n.Addr)
			if !ok {
				continue
			}
			if n.Port != nil {
				if v, err := compileNval(n.Port, "inet_service"); err == nil && v.kind == vNum {
					port = v.nlo
				}
			}
			out = append(out, KubeEndpoint{Addr: netip.AddrPortFrom(a, uint16(port)), Chain: c.Name, Probability: p})
		}
	}
	return out
}
