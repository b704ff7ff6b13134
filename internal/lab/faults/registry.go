// Package faults is the lab's catalog of injectable faults: each entry carries a finding ID of
// FAULTS.md, what it does to a node, how to undo it, and the traffic it must break (and the
// traffic it must leave alone) as probe checks, so that tests and `lab demo` prove every
// injection really breaks what the catalog says and every heal really restores it.
//
// Faults live one file per group (datapath.go, ...); a group registers its faults from init:
//
//	func init() { Register(Fault{ID: "my-fault", ...}) }
package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/netdoctor/netdoctor/internal/lab"
)

// Role names a node relative to the faulted one in a check.
type Role string

// Roles: the faulted node, its peer (the next node) and another node (neither).
const (
	Faulted Role = "faulted"
	Peer    Role = "peer"
	Other   Role = "other"
)

// ProbeKind is a kind of traffic a check sends.
type ProbeKind string

// Probe kinds, each from a sample web pod on From (or the node itself for Node*).
const (
	// PodPing: ICMP echo from a pod on From to the web pod on To.
	PodPing ProbeKind = "pod-ping"
	// PodTCP: HTTP over TCP from a pod on From to the web pod on To, port 80.
	PodTCP ProbeKind = "pod-tcp"
	// PodLargePing: DF ICMP echo with 1422 bytes of payload (a full 1450-byte overlay packet).
	PodLargePing ProbeKind = "pod-large-ping"
	// PodServiceLocal: TCP from a pod on From to a ClusterIP whose only endpoint is the web
	// pod on To (a selector-less Service with a hand-made EndpointSlice).
	PodServiceLocal ProbeKind = "pod-service"
	// PodDNSCluster: a DNS query from a pod on From to the cluster DNS Service for
	// web.default.svc.cluster.local.
	PodDNSCluster ProbeKind = "pod-dns-cluster"
	// PodDNSExternal: the same for the upstream zone's www.ext.ndlab.test.
	PodDNSExternal ProbeKind = "pod-dns-external"
)

// Check is one probe with its expected outcome while the fault is injected.
type Check struct {
	Kind   ProbeKind `json:"kind"`
	From   Role      `json:"from"`
	To     Role      `json:"to,omitempty"`
	Broken bool      `json:"broken"` // must fail while injected (and pass after heal)
}

// String is "pod-ping faulted->peer: broken".
func (c Check) String() string {
	s := string(c.Kind) + " " + string(c.From)
	if c.To != "" {
		s += "->" + string(c.To)
	}
	if c.Broken {
		return s + ": broken"
	}
	return s + ": works"
}

// Target is where a fault is injected.
type Target struct {
	Lab  *lab.Lab
	Node string // Kubernetes node name, e.g. node2
	// Peer is the node the faulted node's peer-specific faults are about (the next node).
	Peer string
}

// Netns is the faulted node's namespace name.
func (t Target) Netns() string { return lab.NetnsPrefix(t.Lab.State.Config.Name) + t.Node }

// NetnsPath is the faulted node's namespace path.
func (t Target) NetnsPath() string { return lab.NetnsPath(t.Netns()) }

// Fault is one injectable fault.
type Fault struct {
	// ID is the finding ID of FAULTS.md the fault makes netdoctor report.
	ID string
	// Group is the catalog group (datapath, kube-proxy, dns...): the file it lives in.
	Group string
	// Summary says what is broken, in one line.
	Summary string
	// Injection says what Inject does, as a person would type it.
	Injection string
	// Checks are the traffic the fault must break and the traffic it must leave alone.
	Checks []Check
	// Inject breaks the target; the returned data is kept and given to Heal.
	Inject func(ctx context.Context, t Target) (map[string]string, error)
	// Heal undoes Inject.
	Heal func(ctx context.Context, t Target, data map[string]string) error
}

var (
	regMu    sync.Mutex
	registry = map[string]Fault{}
)

// Register adds a fault to the catalog; a duplicate or incomplete entry panics (a
// programming error caught by any test).
func Register(f Fault) {
	regMu.Lock()
	defer regMu.Unlock()
	if f.ID == "" || f.Inject == nil || f.Heal == nil || f.Summary == "" {
		panic("faults: incomplete fault " + f.ID)
	}
	if _, dup := registry[f.ID]; dup {
		panic("faults: duplicate fault " + f.ID)
	}
	registry[f.ID] = f
}

// All returns the catalog sorted by group, then ID.
func All() []Fault {
	regMu.Lock()
	defer regMu.Unlock()
	out := make([]Fault, 0, len(registry))
	for _, f := range registry {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group != out[j].Group {
			return out[i].Group < out[j].Group
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Get returns a fault by ID.
func Get(id string) (Fault, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	f, ok := registry[id]
	return f, ok
}

// Injected is a fault currently injected in a lab, as recorded in its state directory.
type Injected struct {
	ID   string            `json:"id"`
	Node string            `json:"node"`
	Peer string            `json:"peer,omitempty"`
	Data map[string]string `json:"data,omitempty"`
	At   time.Time         `json:"at"`
}

func recordFile(l *lab.Lab) string { return filepath.Join(l.State.Config.StateDir(), "faults.json") }

// Active lists the faults injected in the lab.
func Active(l *lab.Lab) ([]Injected, error) {
	b, err := os.ReadFile(recordFile(l))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read injected faults: %w", err)
	}
	var out []Injected
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("parse %s: %w", recordFile(l), err)
	}
	return out, nil
}

func saveActive(l *lab.Lab, in []Injected) error {
	b, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(recordFile(l), b, 0o644); err != nil {
		return fmt.Errorf("record injected faults: %w", err)
	}
	return nil
}

// DefaultNode is where faults go without --node: the second node (or the only one).
func DefaultNode(l *lab.Lab) string {
	if len(l.State.Nodes) >= 2 {
		return l.State.Nodes[1].Name
	}
	return l.State.Nodes[0].Name
}

// PeerOf is the node after node (wrapping), the peer of peer-specific faults.
func PeerOf(l *lab.Lab, node string) string {
	for i, n := range l.State.Nodes {
		if n.Name == node {
			return l.State.Nodes[(i+1)%len(l.State.Nodes)].Name
		}
	}
	return ""
}

// NewTarget checks node and returns the target on it.
func NewTarget(l *lab.Lab, node string) (Target, error) {
	if node == "" {
		node = DefaultNode(l)
	}
	if _, err := l.State.Node(node); err != nil {
		return Target{}, err
	}
	return Target{Lab: l, Node: node, Peer: PeerOf(l, node)}, nil
}

// Inject injects fault id on node ("" = DefaultNode) and records it. When the injection
// fails it is undone (the fault's Heal, with what Inject returned) and nothing is recorded.
func Inject(ctx context.Context, l *lab.Lab, id, node string) (*Injected, error) {
	f, ok := Get(id)
	if !ok {
		return nil, fmt.Errorf("unknown fault %q: see `netdoctor lab faults`", id)
	}
	t, err := NewTarget(l, node)
	if err != nil {
		return nil, err
	}
	active, err := Active(l)
	if err != nil {
		return nil, err
	}
	for _, a := range active {
		if a.ID == id && a.Node == t.Node {
			return nil, fmt.Errorf("fault %s is already injected on %s: heal it first", id, t.Node)
		}
	}
	_ = flushPendingNeighbours(l)
	data, err := f.Inject(ctx, t)
	// Routes or addresses the injection removed must not leave packets
	// waiting on ARP (see flushPendingNeighbours).
	if ferr := flushPendingNeighbours(l); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if err != nil {
		// Undo what the injection did before it failed: it is not recorded as injected, so
		// no later heal would (a half-made fault left a Service's target port changed).
		if herr := f.Heal(ctx, t, data); herr != nil {
			err = errors.Join(err, fmt.Errorf("undo the partial injection: %w", herr))
		}
		_ = flushPendingNeighbours(l)
		return nil, fmt.Errorf("inject %s on %s: %w", id, t.Node, err)
	}
	in := Injected{ID: id, Node: t.Node, Peer: t.Peer, Data: data, At: time.Now().UTC()}
	if err := saveActive(l, append(active, in)); err != nil {
		return nil, err
	}
	return &in, nil
}

// Heal heals the injected faults with that id ("" = all), most recent first, and returns
// what it healed.
func Heal(ctx context.Context, l *lab.Lab, id string) ([]Injected, error) {
	active, err := Active(l)
	if err != nil {
		return nil, err
	}
	var keep, healed []Injected
	var errs []error
	for i := len(active) - 1; i >= 0; i-- {
		a := active[i]
		if id != "" && a.ID != id {
			keep = append([]Injected{a}, keep...)
			continue
		}
		f, ok := Get(a.ID)
		if !ok {
			errs = append(errs, fmt.Errorf("heal %s: not in this build's catalog", a.ID))
			keep = append([]Injected{a}, keep...)
			continue
		}
		t := Target{Lab: l, Node: a.Node, Peer: a.Peer}
		// Flushed before too: fewer packets queued when routes go away.
		_ = flushPendingNeighbours(l)
		err := f.Heal(ctx, t, a.Data)
		if ferr := flushPendingNeighbours(l); ferr != nil {
			err = errors.Join(err, ferr)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("heal %s on %s: %w", a.ID, a.Node, err))
			keep = append([]Injected{a}, keep...)
			continue
		}
		healed = append(healed, a)
	}
	if id != "" && len(healed) == 0 && len(errs) == 0 {
		if _, ok := Get(id); !ok {
			return nil, fmt.Errorf("unknown fault %q: see `netdoctor lab faults`", id)
		}
	}
	if err := saveActive(l, keep); err != nil {
		errs = append(errs, err)
	}
	return healed, errors.Join(errs...)
}
