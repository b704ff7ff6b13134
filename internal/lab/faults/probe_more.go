package faults

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
)

// More probe kinds, for the host, kube-proxy, service and DNS groups.
const (
	// NodeService: TCP from the node From itself (as a hostNetwork pod would) to a ClusterIP
	// whose only endpoint is the web pod on To.
	NodeService ProbeKind = "node-service"
	// NodeServiceMasq: NodeService, and kube-proxy must have masqueraded the connection (the
	// node's conntrack entry shows the reply going to another address than the node's): what
	// kube-proxy's clusterCIDR decides for off-cluster sources.
	NodeServiceMasq ProbeKind = "node-service-masq"
	// PodServiceNoSNAT: PodServiceLocal, and the backend must see the client pod's own
	// address (no masquerade, read from the conntrack entry of the From node).
	PodServiceNoSNAT ProbeKind = "pod-service-nosnat"
	// PodSampleService: TCP from a pod on From to the ClusterIP of the sample Service web in
	// namespace shop (endpoints on every node).
	PodSampleService ProbeKind = "pod-sample-service"
	// PodResolve: the short name "web" resolved from the web pod on From the way its libc
	// would: with the resolv.conf its process sees (nameservers, search list, ndots).
	PodResolve ProbeKind = "pod-resolve"
	// UpstreamDirect: a query for the upstream zone's name sent from the pod on From straight
	// to the lab's upstream DNS server (not through the cluster DNS).
	UpstreamDirect ProbeKind = "upstream-direct"
	// KubeProxyCritical: the kube-proxy pod on From runs with priority class
	// system-node-critical (a state check: what kube-proxy-not-critical takes away is the
	// protection against eviction, not traffic).
	KubeProxyCritical ProbeKind = "kube-proxy-critical"
	// NodeGetsPodCIDR: a Node newly registered while the fault is in place gets a pod CIDR
	// from the controller-manager's node IPAM.
	NodeGetsPodCIDR ProbeKind = "node-gets-pod-cidr"
)

// ServiceNamespace is the namespace of the sample Service the service faults break.
const ServiceNamespace = "shop"

func (p *Prober) probeMore(ctx context.Context, kind ProbeKind, src, dst PodRef, fromNode, toNode string) error {
	cfg := p.L.State.Config
	nodeNS := lab.NetnsPath(lab.NetnsPrefix(cfg.Name) + fromNode)
	switch kind {
	case NodeService:
		ip, err := p.programmedService(ctx, dst, fromNode)
		if err != nil {
			return err
		}
		return HTTPGet(ctx, nodeNS, net.JoinHostPort(ip, "80"), "pod "+dst.Name)
	case NodeServiceMasq:
		ip, err := p.programmedService(ctx, dst, fromNode)
		if err != nil {
			return err
		}
		node, err := p.L.State.Node(fromNode)
		if err != nil {
			return err
		}
		replyDst, err := connectAndReadReplyDst(ctx, nodeNS, nodeNS, ip, "pod "+dst.Name)
		if err != nil {
			return err
		}
		if replyDst == node.IP {
			return fmt.Errorf("connection from node %s (%s) to ClusterIP %s was not masqueraded: the backend %s answers the node address itself", fromNode, node.IP, ip, dst.IP)
		}
		return nil
	case PodServiceNoSNAT:
		ip, err := p.programmedService(ctx, dst, fromNode)
		if err != nil {
			return err
		}
		replyDst, err := connectAndReadReplyDst(ctx, src.Netns, nodeNS, ip, "pod "+dst.Name)
		if err != nil {
			return err
		}
		if replyDst != src.IP {
			return fmt.Errorf("connection from pod %s (%s) to ClusterIP %s was masqueraded to %s: the backend does not see the client's address", src.Name, src.IP, ip, replyDst)
		}
		return nil
	case PodSampleService:
		svc, err := p.L.Client.CoreV1().Services(ServiceNamespace).Get(ctx, lab.SampleName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get service %s/%s: %w", ServiceNamespace, lab.SampleName, err)
		}
		return HTTPGet(ctx, src.Netns, net.JoinHostPort(svc.Spec.ClusterIP, "80"), "pod "+lab.SampleName+"-")
	case PodResolve:
		conf, err := podResolvConf(ctx, p.L, src)
		if err != nil {
			return err
		}
		_, err = Resolve(ctx, src.Netns, conf, lab.SampleName)
		return err
	case UpstreamDirect:
		_, err := LookupA(ctx, src.Netns, cfg.DNSIP().String(), lab.ExtHostName)
		return err
	case KubeProxyCritical:
		pod, err := kubeProxyPod(ctx, p.L, fromNode)
		if err != nil {
			return err
		}
		if pod.Spec.PriorityClassName != "system-node-critical" {
			prio := "none"
			if pod.Spec.Priority != nil {
				prio = strconv.Itoa(int(*pod.Spec.Priority))
			}
			return fmt.Errorf("kube-proxy pod %s on %s has priority class %q (priority %s), not system-node-critical", pod.Name, fromNode, pod.Spec.PriorityClassName, prio)
		}
		return nil
	case ExtPingNode:
		node, err := p.L.State.Node(fromNode)
		if err != nil {
			return err
		}
		return Ping(ctx, lab.NetnsPath(cfg.ExtNetns()), node.IP, 0)
	case BackendPodTCP, BackendLoopback:
		return p.backendProbe(ctx, kind, src)
	case NodeGetsPodCIDR:
		return probeNewNodeCIDR(ctx, p.L)
	}
	return p.probeExtra(ctx, kind, src, dst) // more kinds: dns_more.go
}

// programmedService is LocalService, waiting further until kube-proxy on fromNode sends the
// ClusterIP to a service chain with endpoints (nftables lists a Service without endpoints in
// its reject map first, which LocalService's wait takes for programmed).
func (p *Prober) programmedService(ctx context.Context, dst PodRef, fromNode string) (string, error) {
	ip, err := p.LocalService(ctx, dst, fromNode)
	if err != nil {
		return "", err
	}
	cfg := p.L.State.Config
	ns := lab.NetnsPrefix(cfg.Name) + fromNode
	err = waitFor(ctx, 15*time.Second, "kube-proxy on "+fromNode+" to send "+ip+" to its endpoints", func() (bool, string) {
		rules, err := lab.ProxyRules(ctx, ns, cfg.ProxyMode)
		if err != nil {
			return false, err.Error()
		}
		return serviceDispatched(rules, cfg.ProxyMode, ip), "no KUBE-SERVICES jump or service-ips element yet"
	})
	return ip, err
}

// connectAndReadReplyDst connects from the namespace at fromNS to ip:80 with an HTTP GET
// and returns where the connection's replies go, read from the conntrack table of the
// namespace at ctNS: the address the backend answers to (the client's own unless SNAT).
func connectAndReadReplyDst(ctx context.Context, fromNS, ctNS, ip, want string) (string, error) {
	conn, err := Dial(ctx, fromNS, "tcp", net.JoinHostPort(ip, "80"), 1500*time.Millisecond)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", ip, err)
	}
	defer func() { _ = conn.Close() }()
	local := conn.LocalAddr().(*net.TCPAddr)
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", ip); err != nil {
		return "", fmt.Errorf("send to %s: %w", ip, err)
	}
	buf := make([]byte, 512)
	n, _ := conn.Read(buf)
	if !strings.Contains(string(buf[:n]), want) {
		return "", fmt.Errorf("answer from %s lacks %q: %q", ip, want, buf[:n])
	}
	out, err := command.Output(ctx, ctNS, "conntrack", "-L", "-p", "tcp", "--orig-dst", ip, "--orig-port-src", strconv.Itoa(local.Port))
	if err != nil {
		return "", fmt.Errorf("read conntrack entry of %s -> %s: %w", local, ip, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// tcp 6 117 TIME_WAIT src=A dst=CIP sport=P dport=80 src=POD dst=REPLYDST sport=80 dport=P ...
		var dsts []string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "dst="); ok {
				dsts = append(dsts, v)
			}
		}
		if len(dsts) == 2 {
			return dsts[1], nil
		}
	}
	return "", fmt.Errorf("no conntrack entry for %s -> %s:80 in %s: %q", local, ip, ctNS, out)
}

// podResolvConf returns the resolv.conf the pod's process sees (/proc/PID/root/etc/resolv.conf,
// the PID found through the node's CRI endpoint).
func podResolvConf(ctx context.Context, l *lab.Lab, pod PodRef) (*dns.ClientConfig, error) {
	c, err := cri.Dial(ctx, kubelet.CRISocket(l.State.Config.StateDir(), pod.Node))
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	found, err := c.FindPod(ctx, pod.Namespace, pod.Name)
	if err != nil {
		return nil, err
	}
	if found.PID == 0 {
		return nil, fmt.Errorf("pod %s/%s has no running process", pod.Namespace, pod.Name)
	}
	path := filepath.Join("/proc", strconv.Itoa(found.PID), "root", "etc", "resolv.conf")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read resolv.conf of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	defer func() { _ = f.Close() }()
	conf, err := dns.ClientConfigFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("parse resolv.conf of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return conf, nil
}

// Resolve looks name up from the namespace at netnsPath as a stub resolver configured by
// conf would: each candidate of the search list (ndots rule) at each nameserver in turn,
// the first A answer wins.
func Resolve(ctx context.Context, netnsPath string, conf *dns.ClientConfig, name string) ([]string, error) {
	if len(conf.Servers) == 0 {
		return nil, fmt.Errorf("resolve %s: no nameserver in resolv.conf", name)
	}
	var errs []string
	for _, cand := range conf.NameList(name) {
		for _, srv := range conf.Servers {
			ips, err := LookupA(ctx, netnsPath, srv, cand)
			if err == nil {
				return ips, nil
			}
			errs = append(errs, err.Error())
		}
	}
	return nil, fmt.Errorf("resolve %s (search %v, nameservers %v): %s", name, conf.Search, conf.Servers, strings.Join(errs, "; "))
}

// podNetns finds a pod's network namespace through its node's CRI endpoint.
func podNetns(ctx context.Context, l *lab.Lab, pod PodRef) (string, error) {
	c, err := cri.Dial(ctx, kubelet.CRISocket(l.State.Config.StateDir(), pod.Node))
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	found, err := c.FindPod(ctx, pod.Namespace, pod.Name)
	if err != nil {
		return "", err
	}
	return found.Netns, nil
}

// kubeProxyPod returns the kube-proxy pod bound to node.
func kubeProxyPod(ctx context.Context, l *lab.Lab, node string) (*corev1.Pod, error) {
	pods, err := l.Client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		LabelSelector: "k8s-app=kube-proxy", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("list kube-proxy pods on %s: %w", node, err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no kube-proxy pod on %s", node)
}

// sameNetns reports whether two namespace files (a /run/netns name, /proc/PID/ns/net) are
// the same network namespace.
func sameNetns(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}
