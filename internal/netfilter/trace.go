package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
)

// Flow is the path a packet takes through the netfilter hooks.
type Flow int

const (
	// FlowInput is a packet received for this host: PREROUTING, INPUT.
	FlowInput Flow = iota + 1
	// FlowOutput is a locally generated packet routed out: OUTPUT, POSTROUTING.
	FlowOutput
	// FlowForward is a routed packet: PREROUTING, FORWARD, POSTROUTING.
	FlowForward
	// FlowInbound is a received packet whose route is decided after
	// PREROUTING, as the kernel does: if its (possibly DNATed) destination
	// is one of Env.LocalAddrs it goes to INPUT, otherwise to FORWARD and
	// POSTROUTING (through Packet.OutIface).
	FlowInbound
)

// String returns the hooks of the flow, e.g. "prerouting>forward>postrouting".
func (f Flow) String() string {
	switch f {
	case FlowInput:
		return "prerouting>input"
	case FlowOutput:
		return "output>postrouting"
	case FlowForward:
		return "prerouting>forward>postrouting"
	case FlowInbound:
		return "prerouting>(input|forward>postrouting)"
	}
	return fmt.Sprintf("flow(%d)", int(f))
}

// Conntrack states of a Packet.
const (
	CTNew         = "NEW"
	CTEstablished = "ESTABLISHED"
	CTRelated     = "RELATED"
	CTInvalid     = "INVALID"
	CTUntracked   = "UNTRACKED"
)

// TCP flag bits for Packet.TCPFlags.
const (
	TCPFin uint8 = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

// Packet is the packet to trace. Zero values mean: CTState NEW, TCPFlags
// SYN for a NEW tcp packet and ACK otherwise; Length 0 means unknown.
type Packet struct {
	Src, Dst netip.Addr
	// Proto is "tcp", "udp", "icmp", "icmpv6" or "sctp".
	Proto            string
	SrcPort, DstPort uint16
	// ICMPType and ICMPCode for icmp/icmpv6 packets (8/0 = echo request).
	ICMPType, ICMPCode uint8
	TCPFlags           uint8
	// InIface and OutIface are the interfaces; PhysInIface and
	// PhysOutIface the bridge ports when the packet crosses a bridge
	// (physdev match).
	InIface, OutIface         string
	PhysInIface, PhysOutIface string
	Mark, CTMark              uint32
	// CTState is NEW (default), ESTABLISHED, RELATED, INVALID or UNTRACKED.
	CTState string
	// Length is the IP packet length in bytes, 0 if unknown.
	Length uint16
}

// String renders the packet like "tcp 10.0.0.1:1234 -> 10.96.0.1:80".
func (p Packet) String() string {
	var b strings.Builder
	b.WriteString(p.Proto)
	b.WriteByte(' ')
	if p.SrcPort != 0 || p.DstPort != 0 {
		b.WriteString(netip.AddrPortFrom(p.Src, p.SrcPort).String())
		b.WriteString(" -> ")
		b.WriteString(netip.AddrPortFrom(p.Dst, p.DstPort).String())
	} else {
		b.WriteString(p.Src.String() + " -> " + p.Dst.String())
	}
	if p.Mark != 0 {
		fmt.Fprintf(&b, " mark 0x%x", p.Mark)
	}
	return b.String()
}

// Env is what the tracer knows about the node.
type Env struct {
	// LocalAddrs are the node's own addresses (addrtype LOCAL, fib daddr
	// type local). Loopback addresses are always local.
	LocalAddrs []netip.Addr
	// IfaceAddrs are the addresses of each interface, primary first
	// (MASQUERADE source, REDIRECT destination, --limit-iface-in/out).
	IfaceAddrs map[string][]netip.Addr
	// Ipsets are the node's ipsets by name (-m set --match-set).
	Ipsets map[string]*Ipset
	// NoHistory says the traced packet comes from a client never seen
	// before: "-m recent --rcheck/--update" lists (kube-proxy's ClientIP
	// session affinity) do not hold its source. When false those matches
	// give an unknown verdict.
	NoHistory bool
}

// Verdict is the fate of a traced packet.
type Verdict string

// Verdicts of an Outcome.
const (
	VerdictAccept  Verdict = "accept"
	VerdictDrop    Verdict = "drop"
	VerdictReject  Verdict = "reject"
	VerdictUnknown Verdict = "unknown"
)

// Hit is one rule (or chain policy) that a traced packet matched: the
// evidence of a netfilter finding.
type Hit struct {
	// Backend is "iptables" or "nftables"; Source the Ruleset's label.
	Backend string `json:"backend"`
	Source  string `json:"source,omitempty"`
	Family  string `json:"family"`
	Hook    string `json:"hook"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	// Position is the 1-based rule position in the chain; 0 for the
	// chain's policy.
	Position int `json:"position"`
	// Text is the rule as printed ("-A KUBE-SERVICES -d ..."), or
	// "policy DROP" for a chain policy.
	Text string `json:"text"`
	// Action is what the rule did: "jump KUBE-SVC-X", "DNAT 10.1.0.5:80",
	// "ACCEPT", "MARK 0x4000", "match (probability 0.33)", "policy DROP".
	Action string `json:"action"`
}

// String renders the hit as "table/chain#position: action".
func (h Hit) String() string {
	return fmt.Sprintf("%s %s/%s#%d: %s", h.Backend, h.Table, h.Chain, h.Position, h.Action)
}

// Outcome is one possible fate of the packet. Probabilistic rules
// (statistic, numgen) make several outcomes whose probabilities sum to 1.
type Outcome struct {
	Verdict     Verdict `json:"verdict"`
	Probability float64 `json:"probability"`
	// Packet is the packet as it leaves the last hook (after NAT, marks).
	Packet Packet `json:"packet"`
	// Hooks are the hooks traversed, e.g. ["prerouting", "forward", "postrouting"].
	Hooks []string `json:"hooks"`
	// Hits are the rules and policies the packet matched, in order.
	Hits []Hit `json:"hits"`
	// Reason explains a drop, reject or unknown verdict, e.g.
	// "unsupported match -m foo" or "policy DROP of filter/FORWARD".
	Reason string `json:"reason,omitempty"`
}

// LastHit returns the last rule hit, or a zero Hit.
func (o Outcome) LastHit() Hit {
	if len(o.Hits) == 0 {
		return Hit{}
	}
	return o.Hits[len(o.Hits)-1]
}

// HitChain reports whether the outcome hit a rule in the named chain (any table).
func (o Outcome) HitChain(chain string) bool {
	for _, h := range o.Hits {
		if h.Chain == chain {
			return true
		}
	}
	return false
}

type endKind uint8

const (
	endReturn endKind = iota // fell off / RETURN: continue in the caller
	endAccept
	endDrop
	endReject
	endUnknown
)

type tstate struct {
	pkt  Packet
	orig *Packet // as it entered the trace (conntrack original tuple); shared by the branches, never changed
	prob float64
	// hits are the rules hit so far: a chain of records in the trace's
	// log, newest at last (-1: none). Branches share the records made
	// before they split, so a split copies nothing.
	log    *hitLog
	last   int32
	nhits  int32
	hooks  []string
	hook   string
	dnat   bool // conntrack virtual states
	snat   bool
	natted bool // a NAT binding was made at this hook
	reason string
}

func (s *tstate) clone() *tstate {
	c := *s
	c.hooks = s.hooks[:len(s.hooks):len(s.hooks)]
	return &c
}

type branch struct {
	st   *tstate
	kind endKind
}

// maxDepth bounds jumps (the kernel rejects loops at load time; a parsed
// dump may still contain one).
const maxDepth = 128

// Trace sends pkt along flow through every ruleset (all of them see the
// packet, base chains of each hook ordered by priority) and returns every
// possible outcome. Env supplies the node's addresses and ipsets.
//
// NAT chains are consulted only for a NEW packet (and only until one of
// them makes a binding, as the kernel does); for ESTABLISHED or RELATED
// packets the existing translation is not known, so pass the packet with
// the addresses it has at the hook where tracing starts. MASQUERADE uses
// the first address of the out interface's family in Env.IfaceAddrs (the
// kernel takes the route's preferred source). nftables tables of the
// bridge, arp and netdev families (and ingress hooks) are not traversed.
func Trace(rulesets []*Ruleset, pkt Packet, flow Flow, env Env) ([]Outcome, error) {
	if err := normalizePacket(&pkt); err != nil {
		return nil, err
	}
	var hooks []string
	switch flow {
	case FlowInput:
		hooks = []string{"prerouting", "input"}
	case FlowOutput:
		hooks = []string{"output", "postrouting"}
	case FlowForward:
		hooks = []string{"prerouting", "forward", "postrouting"}
	case FlowInbound:
		hooks = []string{"prerouting"}
	default:
		return nil, fmt.Errorf("trace %s: unknown flow %d", pkt, int(flow))
	}
	t := &tracer{rulesets: rulesets, env: &env}
	if n, ok := protoNum(pkt.Proto); ok {
		t.pn = uint32(n)
	}
	if len(env.LocalAddrs) > 16 {
		t.local = make(map[netip.Addr]bool, len(env.LocalAddrs))
		for _, a := range env.LocalAddrs {
			t.local[a.Unmap()] = true
		}
	}
	scratch := tracePool.Get().(*traceScratch)
	orig := pkt
	st := &tstate{pkt: pkt, orig: &orig, prob: 1, log: &scratch.log, last: -1, hooks: make([]string, 0, 3)}
	t.run(st, hooks, flow == FlowInbound, &scratch.out)
	merged := mergeOutcomes(scratch.out)
	outs := make([]Outcome, len(merged))
	copy(outs, merged)
	scratch.reset()
	tracePool.Put(scratch)
	return outs, nil
}

// traceScratch is what a Trace needs only while it runs: the hit log and
// the outcomes before merging. Traces reuse them (10,000 traces of a big
// ruleset would otherwise allocate them 10,000 times).
type traceScratch struct {
	log hitLog
	out []Outcome
}

// jumpText is the action text of a jump or goto rule, made once per trace
// (the branches of a trace share their first jumps).
func (l *hitLog) jumpText(r *Rule) string {
	if a, ok := l.jumps[r]; ok {
		return a
	}
	a := jumpAction(r)
	if l.jumps == nil {
		l.jumps = make(map[*Rule]string, 16)
	}
	l.jumps[r] = a
	return a
}

var tracePool = sync.Pool{New: func() any { return &traceScratch{log: hitLog{recs: make([]hitNode, 0, 64)}} }}

// reset drops the references the scratch holds (rulesets, hit lists) so
// a pooled scratch keeps nothing alive.
func (s *traceScratch) reset() {
	clear(s.log.recs)
	s.log.recs = s.log.recs[:0]
	clear(s.log.jumps)
	clear(s.out)
	s.out = s.out[:0]
}

func sameOutcome(a, b *Outcome) bool {
	if a.Verdict != b.Verdict || a.Packet != b.Packet || a.Reason != b.Reason || len(a.Hits) != len(b.Hits) || len(a.Hooks) != len(b.Hooks) {
		return false
	}
	for i := range a.Hooks {
		if a.Hooks[i] != b.Hooks[i] {
			return false
		}
	}
	for i := range a.Hits {
		x, y := &a.Hits[i], &b.Hits[i]
		if x.Chain != y.Chain || x.Position != y.Position || x.Action != y.Action || x.Table != y.Table || x.Source != y.Source || x.Family != y.Family {
			return false
		}
	}
	return true
}

// mergeOutcomes folds outcomes that are identical but for their
// probability (e.g. the numgen branches that did not match a rule).
func mergeOutcomes(outs []Outcome) []Outcome {
	if len(outs) < 2 {
		return outs
	}
	if len(outs) <= 32 {
		merged := outs[:0]
	next:
		for _, o := range outs {
			for i := range merged {
				if sameOutcome(&merged[i], &o) {
					merged[i].Probability += o.Probability
					continue next
				}
			}
			merged = append(merged, o)
		}
		return merged
	}
	seen := make(map[string]int, len(outs))
	merged := outs[:0]
	for _, o := range outs {
		var b strings.Builder
		fmt.Fprintf(&b, "%s|%v|%s|%s", o.Verdict, o.Packet, strings.Join(o.Hooks, ","), o.Reason)
		for _, h := range o.Hits {
			fmt.Fprintf(&b, "|%s/%s/%s#%d:%s", h.Source, h.Table, h.Chain, h.Position, h.Action)
		}
		k := b.String()
		if i, ok := seen[k]; ok {
			merged[i].Probability += o.Probability
			continue
		}
		seen[k] = len(merged)
		merged = append(merged, o)
	}
	return merged
}

func normalizePacket(p *Packet) error {
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return errors.New("trace: packet needs a source and a destination address")
	}
	p.Src, p.Dst = p.Src.Unmap(), p.Dst.Unmap()
	if p.Src.Is4() != p.Dst.Is4() {
		return fmt.Errorf("trace: source %s and destination %s are of different families", p.Src, p.Dst)
	}
	p.Proto = strings.ToLower(p.Proto)
	switch p.Proto {
	case "tcp", "udp", "sctp", "icmp", "udplite":
	case "icmpv6", "ipv6-icmp", "icmp6":
		p.Proto = "icmpv6"
	case "":
		return errors.New("trace: packet needs a protocol (tcp, udp, icmp, icmpv6, sctp)")
	default:
		return fmt.Errorf("trace: unknown protocol %q (want tcp, udp, icmp, icmpv6, sctp)", p.Proto)
	}
	p.CTState = strings.ToUpper(p.CTState)
	switch p.CTState {
	case "":
		p.CTState = CTNew
	case CTNew, CTEstablished, CTRelated, CTInvalid, CTUntracked:
	default:
		return fmt.Errorf("trace: unknown conntrack state %q", p.CTState)
	}
	if p.Proto == "tcp" && p.TCPFlags == 0 {
		if p.CTState == CTNew {
			p.TCPFlags = TCPSyn
		} else {
			p.TCPFlags = TCPAck
		}
	}
	return nil
}

// maxBranches bounds the number of probabilistic branches of one trace
// (each statistic/numgen rule multiplies them); beyond it the remaining
// branches end as unknown instead of exhausting memory.
const maxBranches = 1 << 14

type tracer struct {
	pn       uint32         // the packet's protocol number
	bcCache  [5][]baseChain // by hook (the packet's family is fixed)
	bcDone   [5]bool
	branches int
	rulesets []*Ruleset
	env      *Env
	local    map[netip.Addr]bool
}

func (t *tracer) isLocal(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() {
		return true
	}
	if t.local != nil {
		return t.local[a]
	}
	for _, l := range t.env.LocalAddrs {
		if l.Unmap() == a {
			return true
		}
	}
	return false
}

// baseChain is a chain attached to a hook.
type baseChain struct {
	rs    *Ruleset
	table *Table
	chain *Chain
	prio  int
	nat   bool
}

func familyOK(tableFamily string, v4 bool) bool {
	switch tableFamily {
	case "ip":
		return v4
	case "ip6":
		return !v4
	case "inet":
		return true
	}
	return false
}

func (t *tracer) baseChains(hook string, v4 bool) []baseChain {
	key := hookIndex(hook)
	if t.bcDone[key] {
		return t.bcCache[key]
	}
	var bcs []baseChain
	for _, rs := range t.rulesets {
		if rs == nil {
			continue
		}
		for _, c := range rs.builtinChains() {
			if c.Hook == hook && familyOK(c.table.Family, v4) {
				bcs = append(bcs, baseChain{rs: rs, table: c.table, chain: c, prio: c.Priority, nat: c.Type == "nat"})
			}
		}
	}
	sort.SliceStable(bcs, func(i, j int) bool { return bcs[i].prio < bcs[j].prio })
	t.bcCache[key], t.bcDone[key] = bcs, true
	return bcs
}

// builtinChains lists the ruleset's built-in/base chains (cached: a
// ruleset is not changed after parsing).
func (rs *Ruleset) builtinChains() []*Chain {
	rs.once.Do(func() {
		for _, tb := range rs.Tables {
			for _, c := range tb.Chains {
				if c.Builtin {
					if c.table == nil {
						c.table = tb
					}
					rs.builtins = append(rs.builtins, c)
				}
			}
		}
	})
	return rs.builtins
}

func (t *tracer) run(st *tstate, hooks []string, inbound bool, out *[]Outcome) {
	for hi, hook := range hooks {
		st.hook = hook
		st.natted = false
		st.hooks = append(st.hooks, hook)
		bcs := t.baseChains(hook, st.pkt.Dst.Is4())
		live := []*tstate{st}
		for _, bc := range bcs {
			var next []*tstate
			for _, s := range live {
				if bc.nat && (s.natted || s.pkt.CTState != CTNew) {
					next = append(next, s)
					continue
				}
				for _, b := range t.evalBase(s, bc) {
					if b.kind == endAccept {
						next = append(next, b.st)
						continue
					}
					*out = append(*out, b.st.outcome(b.kind))
				}
			}
			live = next
		}
		if len(live) != 1 || live[0] != st {
			rest := hooks[hi+1:]
			for _, s := range live {
				t.run(s, rest, inbound, out)
			}
			return
		}
	}
	if inbound {
		if t.isLocal(st.pkt.Dst) {
			t.run(st, []string{"input"}, false, out)
		} else {
			t.run(st, []string{"forward", "postrouting"}, false, out)
		}
		return
	}
	*out = append(*out, st.outcome(endAccept))
}

func (s *tstate) outcome(k endKind) Outcome {
	o := Outcome{Probability: s.prob, Packet: s.pkt, Hits: s.expandHits(), Hooks: s.hooks, Reason: s.reason}
	switch k {
	case endAccept:
		o.Verdict = VerdictAccept
	case endDrop:
		o.Verdict = VerdictDrop
	case endReject:
		o.Verdict = VerdictReject
	default:
		o.Verdict = VerdictUnknown
	}
	return o
}

func (t *tracer) evalBase(st *tstate, bc baseChain) []branch {
	if bc.rs.Backend == BackendNftables {
		return t.nftBase(st, bc)
	}
	return t.iptBase(st, bc)
}

// hitRec is a compact Hit recorded during the trace; Hits are made from
// them once per outcome.
type hitRec struct {
	rs     *Ruleset
	c      *Chain
	action string
	pos    int32
	hook   uint8
}

var hookNames = []string{"prerouting", "input", "forward", "output", "postrouting"}

func hookIndex(h string) uint8 {
	for i, n := range hookNames {
		if n == h {
			return uint8(i)
		}
	}
	return 0
}

// hit records that rule pos of chain c (0: its policy) did action. text
// is the rule text (or the policy text) and is not stored: it is derived
// from the chain when the outcome is made.
func (st *tstate) hit(rs *Ruleset, c *Chain, pos int, _ string, action string) {
	st.log.recs = append(st.log.recs, hitNode{hitRec: hitRec{rs: rs, c: c, pos: int32(pos), action: action, hook: hookIndex(st.hook)}, parent: st.last})
	st.last = int32(len(st.log.recs) - 1)
	st.nhits++
}

// hitLog holds the hit records of one trace; each names the record before
// it on its branch.
type hitLog struct {
	recs  []hitNode
	jumps map[*Rule]string // jumpText's cache
}

type hitNode struct {
	hitRec
	parent int32 // index of the previous hit of the branch, -1 for none
}

// expandHits makes the Hits of the branch, oldest first.
func (st *tstate) expandHits() []Hit {
	hits := make([]Hit, st.nhits)
	i := len(hits) - 1
	for j := st.last; j >= 0 && i >= 0; j = st.log.recs[j].parent {
		h := st.log.recs[j].hitRec
		text, action := policyText(h.c.Policy), h.action
		if h.pos > 0 && int(h.pos) <= len(h.c.Rules) {
			r := h.c.Rules[h.pos-1]
			text = r.Text
			if action == "" {
				action = st.log.jumpText(r)
			}
		}
		hits[i] = Hit{Backend: h.rs.Backend, Source: h.rs.Source, Family: h.c.table.Family, Hook: hookNames[h.hook],
			Table: h.c.table.Name, Chain: h.c.Name, Position: int(h.pos), Text: text, Action: action}
		i--
	}
	return hits
}

// policyText returns "policy X" without allocating for the usual policies.
func policyText(p string) string {
	switch p {
	case "ACCEPT":
		return "policy ACCEPT"
	case "DROP":
		return "policy DROP"
	case "accept":
		return "policy accept"
	case "drop":
		return "policy drop"
	}
	return "policy " + p
}

// split returns a copy of st for a new probabilistic branch, or nil when
// the trace has too many branches already.
func (t *tracer) split(st *tstate) *tstate {
	if t.branches >= maxBranches {
		return nil
	}
	t.branches++
	return st.clone()
}

const tooManyBranches = "too many probabilistic branches (more than 16384): outcomes not enumerated"

// unknownAt ends the branch with an unknown verdict naming the rule.
func (st *tstate) unknownAt(rs *Ruleset, r *Rule, reason string) branch {
	st.hit(rs, r.chain, r.Position, r.Text, "unknown: "+reason)
	st.reason = fmt.Sprintf("%s (rule %s/%s#%d: %s)", reason, r.chain.table.Name, r.chain.Name, r.Position, r.Text)
	return branch{st: st, kind: endUnknown}
}
