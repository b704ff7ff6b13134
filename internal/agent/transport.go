package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/cluster"
)

// Labels and keys of the transport objects.
const (
	LabelRequest = "netdoctor.io/request" // on a request: its ID
	LabelResult  = "netdoctor.io/result"  // on a result: the request ID
	LabelNode    = "netdoctor.io/node"    // on a result: the node (or its hash when longer than a label value may be)
	keyJSON      = "json"                 // data key of plain JSON
	keyGzip      = "json.gz"              // binaryData key of gzipped JSON (base64 on the wire)
	// RequestVersion is the version of the Request layout.
	RequestVersion = "netdoctor.request/v1"
	// gzipAbove is the JSON size above which objects are gzipped.
	gzipAbove = 32 << 10
	// MaxObjectBytes bounds one request or result (ConfigMaps hold 1 MiB).
	MaxObjectBytes = 900 << 10
)

// Checks a request can ask for.
const (
	CheckNode     = "node"     // node facts and node rules
	CheckServices = "services" // service-rule fingerprints
	CheckProbes   = "probes"   // the probe plan
)

// Request is what the CLI asks the agents.
type Request struct {
	Version string `json:"version"`
	ID      string `json:"id"`
	// Nodes the request is for; empty means every node.
	Nodes []string `json:"nodes,omitempty"`
	// Checks to run (node, services, probes); empty means all.
	Checks []string `json:"checks,omitempty"`
	// Deadline is when the CLI stops waiting: an agent that cannot finish by
	// then sends what it has.
	Deadline time.Time `json:"deadline"`
	// Hints are cluster facts the node rules use (pod CIDRs, Service CIDRs,
	// the node's and its peers' addresses).
	Hints Hints `json:"hints"`
	// Probe is the probe plan's input (nil: no probes).
	Probe *cluster.ProbeSpec `json:"probe,omitempty"`
	// Tool, when set, asks for one tool run instead of the analysis
	// (tools.go); Checks is then just CheckTool.
	Tool *ToolRequest `json:"tool,omitempty"`
}

// Hints are the cluster facts an agent's node rules need.
type Hints struct {
	PodCIDRs     map[string][]string `json:"podCIDRs,omitempty"` // by node
	ClusterCIDRs []string            `json:"clusterCIDRs,omitempty"`
	ServiceCIDRs []string            `json:"serviceCIDRs,omitempty"`
	NodeIPs      map[string][]string `json:"nodeIPs,omitempty"` // by node: InternalIP and flannel public-ip
}

// For says whether the request names node.
func (r *Request) For(node string) bool {
	if len(r.Nodes) == 0 {
		return true
	}
	for _, n := range r.Nodes {
		if n == node {
			return true
		}
	}
	return false
}

// Wants says whether the request asks for a check.
func (r *Request) Wants(check string) bool {
	if len(r.Checks) == 0 {
		return true
	}
	for _, c := range r.Checks {
		if c == check {
			return true
		}
	}
	return false
}

// NewID returns a fresh request ID (DNS-label safe).
func NewID() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// requestName and resultName are the ConfigMap names.
func requestName(id string) string { return "netdoctor-req-" + id }

func resultName(id, node string) string {
	n := "netdoctor-res-" + id + "-" + node
	if len(n) > 253 {
		n = "netdoctor-res-" + id + "-" + nodeLabel(node)
	}
	return n
}

// nodeLabel is node, or a hash when node is not a valid label value.
func nodeLabel(node string) string {
	if len(node) <= 63 {
		return node
	}
	h := sha256.Sum256([]byte(node))
	return "h-" + hex.EncodeToString(h[:12])
}

// encode puts v into a ConfigMap's data (gzipped when large), refusing
// objects larger than MaxObjectBytes.
func encode(cm *corev1.ConfigMap, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", cm.Name, err)
	}
	if len(b) <= gzipAbove {
		cm.Data = map[string]string{keyJSON: string(b)}
		return nil
	}
	var z bytes.Buffer
	w, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	_, _ = w.Write(b)
	_ = w.Close()
	if z.Len() > MaxObjectBytes {
		return fmt.Errorf("encode %s: %d bytes gzipped, more than the %d a ConfigMap may hold", cm.Name, z.Len(), MaxObjectBytes)
	}
	cm.BinaryData = map[string][]byte{keyGzip: z.Bytes()}
	return nil
}

func decode(cm *corev1.ConfigMap, v any) error {
	var b []byte
	if s, ok := cm.Data[keyJSON]; ok {
		b = []byte(s)
	} else if z, ok := cm.BinaryData[keyGzip]; ok {
		r, err := gzip.NewReader(bytes.NewReader(z))
		if err != nil {
			return fmt.Errorf("decode %s: %w", cm.Name, err)
		}
		b, err = io.ReadAll(io.LimitReader(r, 64<<20))
		if err != nil {
			return fmt.Errorf("decode %s: %w", cm.Name, err)
		}
	} else {
		return fmt.Errorf("decode %s: no %q or %q key", cm.Name, keyJSON, keyGzip)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", cm.Name, err)
	}
	return nil
}

// WriteRequest creates the request ConfigMap.
func WriteRequest(ctx context.Context, cs kubernetes.Interface, ns string, r *Request) error {
	r.Version = RequestVersion
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: requestName(r.ID), Namespace: ns, Labels: map[string]string{LabelRequest: r.ID}}}
	if err := encode(cm, r); err != nil {
		return err
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{FieldManager: "netdoctor"}); err != nil {
		return fmt.Errorf("create request %s/%s: %w", ns, cm.Name, err)
	}
	return nil
}

// DecodeRequest reads a request ConfigMap.
func DecodeRequest(cm *corev1.ConfigMap) (*Request, error) {
	var r Request
	if err := decode(cm, &r); err != nil {
		return nil, err
	}
	if r.Version != RequestVersion {
		return nil, fmt.Errorf("request %s: version %q, this agent speaks %s", cm.Name, r.Version, RequestVersion)
	}
	return &r, nil
}

// WriteResult creates (or replaces) the result of node for a request. A
// result too large for a ConfigMap loses its endpoint lists, then its
// service fingerprints, saying so in Errors.
func WriteResult(ctx context.Context, cs kubernetes.Interface, ns string, res *cluster.AgentResult) error {
	res.Version = cluster.AgentResultVersion
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: resultName(res.Request, res.Node), Namespace: ns,
		Labels: map[string]string{LabelResult: res.Request, LabelNode: nodeLabel(res.Node)}}}
	err := encode(cm, res)
	if err != nil {
		for i := range res.ServiceRules {
			res.ServiceRules[i].Targets = nil
		}
		addErr(res, "size", "result too large: endpoint lists dropped")
		if err = encode(cm, res); err != nil {
			res.ServiceRules = nil
			res.ServiceRulesError = "result too large for a ConfigMap: service fingerprints dropped"
			err = encode(cm, res)
		}
	}
	if err != nil {
		return err
	}
	if err := putConfigMap(ctx, cs, ns, cm); err != nil {
		return fmt.Errorf("write result %s/%s: %w", ns, cm.Name, err)
	}
	return nil
}

// putConfigMap creates cm in ns, or replaces the one of that name (a result written again).
func putConfigMap(ctx context.Context, cs kubernetes.Interface, ns string, cm *corev1.ConfigMap) error {
	_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{FieldManager: "netdoctor"})
	if apierrors.IsAlreadyExists(err) {
		var cur *corev1.ConfigMap
		if cur, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{}); err == nil {
			cm.ResourceVersion = cur.ResourceVersion
			_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{FieldManager: "netdoctor"})
		}
	}
	return err
}

func addErr(res *cluster.AgentResult, k, v string) {
	if res.Errors == nil {
		res.Errors = map[string]string{}
	}
	res.Errors[k] = v
}

// Progress is called while waiting, with the nodes answered so far.
type Progress func(answered, total int)

// WaitResults waits until every node in nodes has a result for request id,
// or ctx ends (the deadline). It returns the results by node and, for each
// node without one, why. It watches the results and re-lists on watch
// errors, so it costs one list plus the results' own events.
func WaitResults(ctx context.Context, cs kubernetes.Interface, ns, id string, nodes []string, progress Progress) (map[string]*cluster.AgentResult, map[string]string) {
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	got := map[string]*cluster.AgentResult{}
	bad := map[string]string{}
	sel := LabelResult + "=" + id
	take := func(cm *corev1.ConfigMap) {
		var r cluster.AgentResult
		if err := decode(cm, &r); err != nil {
			bad[cm.Labels[LabelNode]] = err.Error()
			return
		}
		if want[r.Node] && r.Request == id {
			got[r.Node] = &r
			delete(bad, r.Node)
		}
	}
	done := func() bool {
		if progress != nil {
			progress(len(got), len(want))
		}
		return len(got) == len(want)
	}
	for !done() {
		l, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		for i := range l.Items {
			take(&l.Items[i])
		}
		if done() {
			break
		}
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			continue
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
					take(cm)
				}
			}
			if done() {
				break
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	missing := map[string]string{}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if got[n] != nil {
			continue
		}
		why := "no result from the agent before the deadline"
		if b, ok := bad[nodeLabel(n)]; ok {
			why = "unreadable result: " + b
		}
		missing[n] = why
	}
	return got, missing
}

// Cleanup deletes a request and its results. Use a fresh short context: it
// runs after the check's own context may have been cancelled (Ctrl-C).
func Cleanup(ctx context.Context, cs kubernetes.Interface, ns, id string) error {
	var errs []string
	if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, requestName(id), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err.Error())
	}
	if err := cs.CoreV1().ConfigMaps(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: LabelResult + "=" + id}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete request %s and its results in %s: %s", id, ns, strings.Join(errs, "; "))
	}
	return nil
}
