package faults

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// PodRef is a pod found for probing: where it runs and its network namespace (found through
// its node's CRI endpoint, as a tool would on containerd).
type PodRef struct {
	Namespace, Name, Node, IP, Netns string
}

// Prober runs checks from inside pod namespaces of a lab.
type Prober struct {
	L        *lab.Lab
	mu       sync.Mutex
	localSvc map[string]string // namespace/node -> ClusterIP of its probe Service
}

// NewProber returns a prober for l.
func NewProber(l *lab.Lab) *Prober { return &Prober{L: l, localSvc: map[string]string{}} }

// WebPod returns the sample web pod in namespace default on node, with its network namespace
// from the node's CRI endpoint.
func (p *Prober) WebPod(ctx context.Context, node string) (PodRef, error) {
	return p.WebPodIn(ctx, metav1.NamespaceDefault, node)
}

// WebPodIn is WebPod for another namespace of the samples.
func (p *Prober) WebPodIn(ctx context.Context, ns, node string) (PodRef, error) {
	pods, err := p.L.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: "app=" + lab.SampleName, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return PodRef{}, fmt.Errorf("list web pods on %s: %w", node, err)
	}
	for _, pod := range pods.Items {
		if pod.Status.PodIP == "" || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
			continue
		}
		ep := kubelet.CRISocket(p.L.State.Config.StateDir(), node)
		c, err := cri.Dial(ctx, ep)
		if err != nil {
			return PodRef{}, err
		}
		found, err := c.FindPod(ctx, pod.Namespace, pod.Name)
		_ = c.Close()
		if err != nil {
			return PodRef{}, err
		}
		return PodRef{Namespace: pod.Namespace, Name: pod.Name, Node: node, IP: pod.Status.PodIP, Netns: found.Netns}, nil
	}
	return PodRef{}, fmt.Errorf("no running web pod of namespace %s on %s", ns, node)
}

func (t Target) node(r Role) string {
	switch r {
	case Faulted:
		return t.Node
	case Peer:
		return t.Peer
	case Other:
		for _, n := range t.Lab.State.Nodes {
			if n.Name != t.Node && n.Name != t.Peer {
				return n.Name
			}
		}
	}
	return ""
}

// Result is the outcome of one check.
type Result struct {
	Check Check  `json:"check"`
	From  string `json:"from"` // pod namespace/name (node)
	To    string `json:"to,omitempty"`
	OK    bool   `json:"ok"` // the traffic went through
	Err   string `json:"error,omitempty"`
	// Pass says whether the outcome is the expected one (broken while injected).
	Pass bool `json:"pass"`
}

// Run runs check c against target t; injected says whether the fault is in place (then
// Broken checks must fail). Working traffic is retried for a few seconds; traffic expected to
// fail gets one attempt.
func (p *Prober) Run(ctx context.Context, t Target, c Check, injected bool) Result {
	res := Result{Check: c}
	expectBroken := injected && c.Broken
	fromNode, toNode := t.node(c.From), t.node(c.To)
	if fromNode == "" || (c.To != "" && toNode == "") {
		res.Err = "the lab has too few nodes for this check"
		return res
	}
	src, err := p.WebPod(ctx, fromNode)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	res.From = src.Namespace + "/" + src.Name + " (" + fromNode + ")"
	var dst PodRef
	if c.To != "" {
		dstNS := metav1.NamespaceDefault
		if toNode == fromNode {
			dstNS = lab.SampleNamespaces[1] // another pod on the same bridge, not the source itself
		}
		if dst, err = p.WebPodIn(ctx, dstNS, toNode); err != nil {
			res.Err = err.Error()
			return res
		}
		res.To = dst.Namespace + "/" + dst.Name + " (" + toNode + ")"
	}
	attempts := 5
	if expectBroken {
		attempts = 1
	}
	for i := 0; i < attempts; i++ {
		err = p.probe(ctx, c.Kind, src, dst, fromNode, toNode)
		if err == nil {
			break
		}
		if i+1 < attempts {
			time.Sleep(time.Second)
		}
	}
	res.OK = err == nil
	if err != nil {
		res.Err = err.Error()
	}
	res.Pass = res.OK != expectBroken
	return res
}

func (p *Prober) probe(ctx context.Context, kind ProbeKind, src, dst PodRef, fromNode, toNode string) error {
	cfg := p.L.State.Config
	switch kind {
	case PodPing:
		return Ping(ctx, src.Netns, dst.IP, 0)
	case PodLargePing:
		return Ping(ctx, src.Netns, dst.IP, 1422)
	case PodTCP:
		return HTTPGet(ctx, src.Netns, net.JoinHostPort(dst.IP, "80"), "pod "+dst.Name)
	case PodServiceLocal:
		ip, err := p.LocalService(ctx, dst, fromNode)
		if err != nil {
			return err
		}
		return HTTPGet(ctx, src.Netns, net.JoinHostPort(ip, "80"), "pod "+dst.Name)
	case PodDNSCluster:
		_, err := LookupA(ctx, src.Netns, cfg.ClusterDNSIP().String(), lab.SampleName+".default.svc.cluster.local.")
		return err
	case PodDNSExternal:
		_, err := LookupA(ctx, src.Netns, cfg.ClusterDNSIP().String(), lab.ExtHostName)
		return err
	}
	return p.probeMore(ctx, kind, src, dst, fromNode, toNode) // more kinds: probe_more.go
}

// LocalService returns the ClusterIP of a selector-less Service "ndlab-probe-NS-NODE" (in default) whose only
// endpoint is pod dst (kept across calls), waiting until kube-proxy on fromNode has its rule.
func (p *Prober) LocalService(ctx context.Context, dst PodRef, fromNode string) (string, error) {
	p.mu.Lock()
	ip, ok := p.localSvc[dst.Namespace+"/"+dst.Node]
	p.mu.Unlock()
	if !ok {
		var err error
		if ip, err = ensureProbeService(ctx, p.L, dst); err != nil {
			return "", err
		}
		p.mu.Lock()
		p.localSvc[dst.Namespace+"/"+dst.Node] = ip
		p.mu.Unlock()
	}
	cfg := p.L.State.Config
	ns := lab.NetnsPrefix(cfg.Name) + fromNode
	deadline := time.Now().Add(15 * time.Second)
	for {
		rules, err := lab.ProxyRules(ctx, ns, cfg.ProxyMode)
		if err == nil && lab.ServiceHasEndpoints(rules, cfg.ProxyMode, ip) {
			return ip, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("kube-proxy on %s never programmed probe service %s", fromNode, ip)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func ensureProbeService(ctx context.Context, l *lab.Lab, dst PodRef) (string, error) {
	name := "ndlab-probe-" + dst.Namespace + "-" + dst.Node
	cs := l.Client
	svc, err := cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		svc, err = cs.CoreV1().Services(metav1.NamespaceDefault).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"netdoctor.io/lab-probe": "true"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(80)}}},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("probe service %s: %w", name, err)
	}
	port, proto, portName := int32(80), corev1.ProtocolTCP, "http"
	ready := true
	node := dst.Node
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "netdoctor-lab"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{dst.IP}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
	esc := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	if old, err := esc.Get(ctx, name, metav1.GetOptions{}); err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = esc.Update(ctx, es, metav1.UpdateOptions{})
		if err != nil {
			return "", fmt.Errorf("update endpointslice %s: %w", name, err)
		}
	} else if _, err := esc.Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create endpointslice %s: %w", name, err)
	}
	return svc.Spec.ClusterIP, nil
}

// Ping sends one ICMP echo from the namespace at netnsPath (payload size bytes with DF set if
// size > 0) and waits a second for the reply.
func Ping(ctx context.Context, netnsPath, ip string, size int) error {
	args := []string{"-n", "-c1", "-W1"}
	if size > 0 {
		args = append(args, "-M", "do", "-s", fmt.Sprint(size))
	}
	args = append(args, ip)
	_, err := command.Run(ctx, command.Cmd{Name: "ping", Args: args, Netns: netnsPath})
	return err
}

// Dial opens a connection from inside the namespace at netnsPath.
func Dial(ctx context.Context, netnsPath, network, addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := namespace.Do(netnsPath, func() error {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// HTTPGet connects to addr from inside the namespace at netnsPath, sends GET / and checks that
// the body contains want.
func HTTPGet(ctx context.Context, netnsPath, addr, want string) error {
	conn, err := Dial(ctx, netnsPath, "tcp", addr, 1500*time.Millisecond)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	var body strings.Builder
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		body.WriteString(sc.Text() + "\n")
	}
	if !strings.Contains(body.String(), want) {
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read from %s: %w", addr, err)
		}
		return fmt.Errorf("answer from %s lacks %q: %q", addr, want, body.String())
	}
	return nil
}

// LookupA asks server (port 53, UDP) for name's A records from inside the namespace at
// netnsPath and returns them; an answer without A records is an error.
func LookupA(ctx context.Context, netnsPath, server, name string) ([]string, error) {
	conn, err := Dial(ctx, netnsPath, "udp", net.JoinHostPort(server, "53"), time.Second)
	if err != nil {
		return nil, fmt.Errorf("dns socket to %s: %w", server, err)
	}
	defer func() { _ = conn.Close() }()
	dc := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if err := dc.WriteMsg(m); err != nil {
		return nil, fmt.Errorf("query %s at %s: %w", name, server, err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("query %s at %s: %w", name, server, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("query %s at %s: %s", name, server, dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	if len(out) == 0 {
		return nil, errors.New("query " + name + " at " + server + ": no A record in the answer")
	}
	return out, nil
}

// Verify runs every check of f against t and returns the results.
func (p *Prober) Verify(ctx context.Context, f Fault, t Target, injected bool) []Result {
	out := make([]Result, 0, len(f.Checks))
	for _, c := range f.Checks {
		out = append(out, p.Run(ctx, t, c, injected))
	}
	return out
}
