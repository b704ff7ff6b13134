package netfilter

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseIptablesSaveFixtures(t *testing.T) {
	for _, tc := range []struct {
		file          string
		family        string
		tables        []string
		chains, rules int
	}{
		{"kubeproxy-like-iptables-nft.save", "ip", []string{"mangle", "filter", "nat"}, 39, 51},
		{"kubeproxy-like-iptables-legacy.save", "ip", []string{"nat", "filter", "mangle"}, 39, 51},
		{"firewall-iptables-nft.save", "ip", []string{"mangle", "raw", "filter", "nat"}, 18, 34},
		{"firewall-iptables-legacy.save", "ip", []string{"filter", "nat", "mangle", "raw"}, 18, 34},
		{"firewall-ip6tables.save", "ip6", []string{"filter", "nat"}, 7, 7},
		{"firewall-ip6tables-nft.save", "ip6", []string{"filter", "nat"}, 7, 7},
		{"firewall-ip6tables-legacy.save", "ip6", []string{"nat", "filter"}, 7, 7},
		{"kube-proxy-iptables.save", "ip", []string{"mangle", "filter", "nat"}, 0, 0},
	} {
		t.Run(tc.file, func(t *testing.T) {
			rs := loadRuleset(t, tc.file)
			if rs.Family != tc.family || rs.Backend != BackendIptables {
				t.Errorf("family %s backend %s", rs.Family, rs.Backend)
			}
			var tables []string
			chains := 0
			for _, tb := range rs.Tables {
				tables = append(tables, tb.Name)
				chains += len(tb.Chains)
			}
			if !reflect.DeepEqual(tables, tc.tables) {
				t.Errorf("tables %v, want %v", tables, tc.tables)
			}
			rules := len(rs.Rules(nil))
			if tc.chains > 0 && (chains != tc.chains || rules != tc.rules) {
				t.Errorf("%d chains %d rules, want %d %d", chains, rules, tc.chains, tc.rules)
			}
			for _, r := range rs.Rules(nil) {
				if !strings.HasPrefix(r.Text, "-A "+r.Chain().Name+" ") || r.Position < 1 || r.Line < 1 {
					t.Errorf("rule %d %q", r.Position, r.Text)
				}
			}
		})
	}
}

func TestParseIptablesRuleFields(t *testing.T) {
	rs := loadRuleset(t, "kubeproxy-like-iptables-nft.save")
	nat := rs.Table("", "nat")
	svc := nat.Chain("KUBE-SVC-ULMVA6XWQY7KOHRG")
	if svc == nil || len(svc.Rules) != 4 || svc.Builtin || svc.Policy != "" {
		t.Fatalf("KUBE-SVC chain %+v", svc)
	}
	r := svc.Rules[0]
	want := []Option{{Name: "s", Negated: true, n: 1, Arg: "198.18.0.0/16"}, {Name: "d", n: 1, Arg: "198.19.0.20/32"}, {Name: "p", n: 1, Arg: "tcp"}}
	if !reflect.DeepEqual(r.Basic, want) {
		t.Errorf("basic %+v", r.Basic)
	}
	if r.Comment != "default/web:http cluster IP" || r.Target != "KUBE-MARK-MASQ" || r.Goto || r.Position != 1 {
		t.Errorf("rule %+v", r)
	}
	if o, ok := r.MatchOption("tcp", "dport"); !ok || o.Arg != "80" {
		t.Errorf("dport %+v", o)
	}
	if o, ok := svc.Rules[1].MatchOption("statistic", "probability"); !ok || o.Arg != "0.33333333349" {
		t.Errorf("probability %+v", o)
	}
	sep := nat.Chain("KUBE-SEP-3WZ2UQZKLTDOGBTF").Rules[1]
	if o, ok := sep.TargetOption("to-destination"); !ok || o.Arg != "198.18.1.10:8080" || sep.Target != "DNAT" {
		t.Errorf("DNAT %+v", sep)
	}
	if got := len(rs.RulesByTarget("KUBE-SVC-*")); got != 4 {
		t.Errorf("RulesByTarget KUBE-SVC-*: %d", got)
	}
	if got := len(rs.RulesByComment("default/web:http")); got != 13 {
		t.Errorf("RulesByComment: %d", got)
	}
	if got := len(rs.Chains("KUBE-SEP-*")); got != 6 {
		t.Errorf("Chains KUBE-SEP-*: %d", got)
	}
	pre := nat.Chain("PREROUTING")
	if !pre.Builtin || pre.Policy != "ACCEPT" || pre.Hook != "prerouting" || pre.Priority != -100 || pre.Type != "nat" {
		t.Errorf("PREROUTING %+v", pre)
	}
	if p := nat.Chain("POSTROUTING").Priority; p != 100 {
		t.Errorf("nat POSTROUTING priority %d", p)
	}
	if loc := sep.Location(); loc != "nat/KUBE-SEP-3WZ2UQZKLTDOGBTF#2" {
		t.Errorf("location %s", loc)
	}
	goto1 := loadRuleset(t, "firewall-iptables-nft.save").Table("", "filter").Chain("CALLER").Rules[0]
	if !goto1.Goto || goto1.Target != "GOTO-TARGET" || goto1.JumpTarget().Name != "GOTO-TARGET" {
		t.Errorf("goto rule %+v", goto1)
	}
}

func TestParseIptablesSyntax(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		check    func(*Ruleset) string
	}{
		{"quoted comment with escapes", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"a \\\"quoted\\\" -j word\" -j ACCEPT\nCOMMIT\n",
			func(rs *Ruleset) string {
				r := rs.Rules(nil)[0]
				if r.Comment != `a "quoted" -j word` || r.Target != "ACCEPT" {
					return r.Comment + " / " + r.Target
				}
				return ""
			}},
		{"counters and CRLF", "*filter\r\n:INPUT DROP [12:3400]\r\n[5:300] -A INPUT -j ACCEPT\r\nCOMMIT\r\n",
			func(rs *Ruleset) string {
				c := rs.Table("", "filter").Chain("INPUT")
				if c.Packets != 12 || c.Bytes != 3400 || c.Policy != "DROP" || len(c.Rules) != 1 {
					return "chain " + c.Name
				}
				return ""
			}},
		{"implicit protocol match", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n",
			func(rs *Ruleset) string {
				if o, ok := rs.Rules(nil)[0].MatchOption("tcp", "dport"); !ok || o.Arg != "22" {
					return "no implicit tcp match"
				}
				return ""
			}},
		{"long options", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT --source 10.0.0.0/255.0.0.0 --protocol udp -j DROP\nCOMMIT\n",
			func(rs *Ruleset) string {
				if o, _ := rs.Rules(nil)[0].MatchOption("", "s"); o.Arg != "10.0.0.0/255.0.0.0" {
					return "source " + o.Arg
				}
				return ""
			}},
		{"ip6 from the ip6tables-nft-save header", "# Generated by ip6tables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 19:38:07 2026\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -j DROP\nCOMMIT\n",
			func(rs *Ruleset) string {
				if rs.Family != "ip6" || rs.Tables[0].Family != "ip6" {
					return rs.Family
				}
				return ""
			}},
		{"ip6 guessed from addresses", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s fd00::/8 -j DROP\nCOMMIT\n",
			func(rs *Ruleset) string {
				if rs.Family != "ip6" {
					return rs.Family
				}
				return ""
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ParseIptablesSave([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if msg := tc.check(rs); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func TestParseIptablesSaveErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"rule outside table", "-A INPUT -j ACCEPT\n", "line 1: rule outside a table"},
		{"undeclared chain", "*filter\n:INPUT ACCEPT [0:0]\n-A FOO -j ACCEPT\nCOMMIT\n", `line 3: rule appends to undeclared chain "FOO"`},
		{"missing commit", "*filter\n:INPUT ACCEPT [0:0]\n", "table filter not terminated by COMMIT"},
		{"bad policy", "*filter\n:INPUT MAYBE [0:0]\nCOMMIT\n", `line 2: chain INPUT: unknown policy "MAYBE"`},
		{"bad counters", "*filter\n:INPUT ACCEPT [x:0]\nCOMMIT\n", "line 2: chain INPUT: bad counters"},
		{"unterminated quote", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"oops -j ACCEPT\nCOMMIT\n", "line 3: unterminated quote"},
		{"bad address", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.300 -j ACCEPT\nCOMMIT\n", `line 3: -s "10.0.0.300"`},
		{"jump to missing chain", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j my-chain\nCOMMIT\n", `line 3: -j my-chain: jump to undeclared chain "my-chain"`},
		{"option without match", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT --dport 22 -j ACCEPT\nCOMMIT\n", "line 3: option --dport outside a match"},
		{"two targets", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT -j DROP\nCOMMIT\n", "line 3: two targets"},
		{"duplicate chain", "*filter\n:INPUT ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "line 3: chain INPUT declared twice"},
		{"bad DNAT", "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DNAT --to-destination nowhere:80\nCOMMIT\n", "line 3: -j DNAT: --to-destination"},
		{"bad statistic", "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m statistic --mode random --probability 2 -j ACCEPT\nCOMMIT\n", "line 3: -m statistic: --probability"},
		{"table inside table", "*filter\n*nat\n", `line 2: table "nat" starts before COMMIT`},
		{"not a rule", "*filter\n:INPUT ACCEPT [0:0]\nhello\nCOMMIT\n", `line 3: want "-A CHAIN ...", got "hello"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseIptablesSave([]byte(tc.in))
			var pe *ParseError
			if err == nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a ParseError containing %q", err, tc.want)
			}
		})
	}
}

func TestParseNftJSONFixtures(t *testing.T) {
	rs := loadRuleset(t, "firewall-nftables.json")
	fw := rs.Table("inet", "fw")
	if fw == nil {
		t.Fatal("no table inet fw")
	}
	in := fw.Chain("input")
	if !in.Builtin || in.Hook != "input" || in.Priority != 0 || in.Type != "filter" || in.Policy != "accept" || len(in.Rules) != 9 {
		t.Errorf("input chain %+v", in)
	}
	if fwd := fw.Chain("forward"); fwd.Policy != "drop" {
		t.Errorf("forward policy %s", fwd.Policy)
	}
	if pre := fw.Chain("prerouting"); pre.Type != "nat" || pre.Priority != -100 {
		t.Errorf("prerouting %+v", pre)
	}
	r := in.Rules[4]
	if r.Text != `udp dport 8472 counter drop comment "block vxlan"` || r.Comment != "block vxlan" || r.Target != "drop" || r.Handle == 0 {
		t.Errorf("rule text %q comment %q target %q", r.Text, r.Comment, r.Target)
	}
	blocked := fw.Sets["blocked"]
	if got := blocked.SortedElements(); !reflect.DeepEqual(got, []string{"198.18.50.0/24", "198.18.60.1-198.18.60.9"}) {
		t.Errorf("blocked elements %v", got)
	}
	if got := fw.Sets["trusted"].SortedElements(); !reflect.DeepEqual(got, []string{"6 . 22", "6 . 6443"}) {
		t.Errorf("trusted elements %v", got)
	}

	kp := loadRuleset(t, "kubeproxy-like-nftables.json").Table("ip", "kube-proxy")
	m := kp.Sets["service-ips"]
	if m.Map != "verdict" || !reflect.DeepEqual(m.Type, []string{"ipv4_addr", "inet_proto", "inet_service"}) || len(m.Elements) != 3 {
		t.Fatalf("service-ips %+v", m)
	}
	for _, e := range m.Elements {
		if !strings.HasPrefix(e.Data, "goto service-") {
			t.Errorf("element data %q", e.Data)
		}
	}
	if ne := kp.Sets["no-endpoint-services"].Elements[0]; ne.Comment != "default/empty:http" {
		t.Errorf("element comment %q", ne.Comment)
	}

	real := loadRuleset(t, "kube-proxy-nftables.json")
	if real.Table("ip", "kube-proxy") == nil || real.Table("ip6", "kube-proxy") == nil {
		t.Error("real dump: want kube-proxy tables of both families")
	}
}

func TestParseNftJSONErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"not json", "table ip filter {", "line 1: invalid JSON"},
		{"truncated", "{\"nftables\": [\n{\"table\": {\"family\": \"ip\", \"name\": \"t\"}},\n", "line 3:"},
		{"no nftables key", `{"foo": []}`, `no "nftables" array`},
		{"not an array", `{"nftables": {}}`, `"nftables" must be an array`},
		{"two keys", `{"nftables": [{"table": {}, "chain": {}}]}`, "object 1: want exactly one key"},
		{"chain in unknown table", `{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c"}}]}`, "chain c in unknown table ip t"},
		{"rule in unknown chain", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": []}}]}`, "object 2 (rule): unknown chain c"},
		{"jump to unknown chain", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": "ip", "table": "t", "name": "c"}}, {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"jump": {"target": "x"}}]}}]}`, `jump to unknown chain "x"`},
		{"unknown set", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": "ip", "table": "t", "name": "c"}}, {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@nope"}}]}}]}`, "unknown set @nope"},
		{"bad address", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"set": {"family": "ip", "table": "t", "name": "s", "type": "ipv4_addr", "elem": ["10.0.0.300"]}}]}`, `set s: element "10.0.0.300": bad address`},
		{"bad priority", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": "ip", "table": "t", "name": "c", "hook": "input", "prio": "later"}}]}`, `unknown priority "later"`},
		{"expression not an object", `{"nftables": [{"table": {"family": "ip", "name": "t"}}, {"chain": {"family": "ip", "table": "t", "name": "c"}}, {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [42]}}]}`, "want an object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseNftJSON([]byte(tc.in))
			var pe *ParseError
			if err == nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a ParseError containing %q", err, tc.want)
			}
		})
	}
}

func TestParseIpsetSave(t *testing.T) {
	sets, err := ParseIpsetSave(readFixture(t, "ipsets.save"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 4 {
		t.Fatalf("%d sets", len(sets))
	}
	if s := sets["svc-ports"]; s.Type != "hash:ip,port" || s.Family != "inet" || len(s.Entries) != 2 {
		t.Errorf("svc-ports %+v", s)
	}
	for _, tc := range []struct {
		set   string
		pkt   Packet
		flags string
		want  bool
	}{
		{"allowed-src", Packet{Src: addr("198.18.200.77"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "src", true},
		{"allowed-src", Packet{Src: addr("198.18.201.7"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "src", true},
		{"allowed-src", Packet{Src: addr("198.18.201.8"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "src", false},
		{"allowed-src", Packet{Src: addr("198.18.200.77"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "dst", false},
		{"svc-ports", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "tcp", DstPort: 9400}, "dst,dst", true},
		{"svc-ports", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", DstPort: 9400}, "dst,dst", false},
		{"svc-ports", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", DstPort: 9401}, "dst,dst", true},
		{"web-ports", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "udp", DstPort: 443}, "dst", true},
		{"web-ports", Packet{Src: addr("198.19.255.2"), Dst: addr("198.19.255.1"), Proto: "tcp", DstPort: 8443}, "dst", false},
		{"all-allowed", Packet{Src: addr("198.18.200.1"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "src", true},
		{"all-allowed", Packet{Src: addr("198.18.202.1"), Dst: addr("198.19.255.1"), Proto: "tcp"}, "src", false},
	} {
		got, err := sets[tc.set].Contains(tc.pkt, strings.Split(tc.flags, ","), sets)
		if err != nil || got != tc.want {
			t.Errorf("%s %s %v: got %v %v, want %v", tc.set, tc.flags, tc.pkt, got, err, tc.want)
		}
	}
}

func TestParseIpsetErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"add before create", "add s 10.0.0.1\n", `line 1: add to set "s" that was not created`},
		{"unknown type", "create s tree:ip\n", `line 1: set s: unknown type "tree:ip"`},
		{"bad entry", "create s hash:ip\nadd s 10.0.0.x\n", `line 2: set s entry "10.0.0.x"`},
		{"wrong arity", "create s hash:ip,port\nadd s 10.0.0.1\n", "want 2 parts"},
		{"unknown command", "flush s\n", `line 1: unknown command "flush"`},
		{"duplicate", "create s hash:ip\ncreate s hash:ip\n", `line 2: set "s" created twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseIpsetSave([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestKubeProxyServicesLikeFixtures(t *testing.T) {
	var fps []map[string]string
	for _, f := range kubeProxyLike {
		svcs, err := KubeProxyServices(loadRuleset(t, f))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, s := range svcs {
			m[s.Key()] = s.Name + " " + s.Fingerprint()
		}
		fps = append(fps, m)
		if len(svcs) != 4 {
			t.Fatalf("%s: %d services: %+v", f, len(svcs), svcs)
		}
		web := svcs[2]
		if web.Name != "default/web:http" || web.NodePort != 30080 || len(web.Endpoints) != 3 || web.Endpoints[2].Addr.String() != "198.18.2.10:8080" {
			t.Errorf("%s: web %+v", f, web)
		}
		if empty := svcs[3]; !empty.NoEndpoints || empty.Name != "default/empty:http" {
			t.Errorf("%s: empty %+v", f, empty)
		}
	}
	for i := 1; i < len(fps); i++ {
		if !reflect.DeepEqual(fps[0], fps[i]) {
			t.Errorf("fingerprints of %s differ from %s:\n%v\n%v", kubeProxyLike[i], kubeProxyLike[0], fps[i], fps[0])
		}
	}
}

func TestWithoutIptablesCompat(t *testing.T) {
	data := []byte(`{"nftables": [
{"table": {"family": "ip", "name": "filter"}},
{"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
{"table": {"family": "inet", "name": "fw"}}]}`)
	rs, err := ParseNftJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	out := rs.WithoutIptablesCompat()
	if len(out.Tables) != 1 || out.Tables[0].Name != "fw" || len(rs.Tables) != 2 {
		t.Fatalf("tables %v", out.Tables)
	}
}

// TestKubeProxyServicesAffinity: kube-proxy's ClientIP affinity rules
// (-m recent --rcheck) precede the statistic rules and are not endpoints
// of their own.
func TestKubeProxyServicesAffinity(t *testing.T) {
	rs := loadRuleset(t, "affinity-iptables-nft.save")
	svcs, err := KubeProxyServices(rs)
	if err != nil || len(svcs) != 1 || len(svcs[0].Endpoints) != 2 || svcs[0].Endpoints[0].Probability != 0.5 || svcs[0].Endpoints[1].Probability != 0.5 {
		t.Fatalf("services %+v %v", svcs, err)
	}
	pkt := Packet{Src: addr("198.18.2.9"), Dst: addr("198.19.0.5"), Proto: "tcp", SrcPort: 1, DstPort: 80}
	outs, _ := Trace([]*Ruleset{rs}, pkt, FlowInput, Env{})
	if len(outs) != 1 || outs[0].Verdict != VerdictUnknown || !strings.Contains(outs[0].Reason, "recent --rcheck") {
		t.Fatalf("without NoHistory: %+v", outs)
	}
	outs, _ = Trace([]*Ruleset{rs}, pkt, FlowInput, Env{NoHistory: true})
	if got := destinations(outs); !reflect.DeepEqual(got, []string{"accept 198.18.1.1:80", "accept 198.18.1.2:80"}) {
		t.Fatalf("with NoHistory: %v", got)
	}
}
