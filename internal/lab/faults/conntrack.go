package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netdoctor/netdoctor/internal/collect"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// conntrack-insert-failed: a DNS client on the node races two UDP packets through the
// node's conntrack, and the loser's insertion fails (insert_failed and drop rise).
//
// What this kernel (6.18) still lets fail, tried in namespaces of our own (docs/lab-faults-notes.md):
// the classic race of seed 003 (A and AAAA sent at once from one socket to one Service, DNAT
// to different backends) no longer fails: the kernel merges the clash or inserts the loser as
// a reply-only entry (clash_resolve rose for ~70% of 20 000 racing sockets, insert_failed
// stayed 0). A clash is still fatal when the two packets have different original tuples but
// the same reply tuple: one socket sending at once to two ClusterIPs that DNAT to the same
// backend (insert_failed rose for 65-85% of the racing pairs with one shared backend, 35%
// with two), or two flows masqueraded to the same source port (only with MASQUERADE without
// --random-fully, which kube-proxy and flannel always use). The lab injects the first: a
// second Service in front of the CoreDNS pods (what NodeLocal DNSCache's kube-dns-upstream
// is) and a pod whose resolver queries both nameservers at once from one socket, as musl
// does, from two threads on two CPUs.

// NodeConntrackQuiet: the conntrack insert_failed and drop counters of node From (its
// namespace's /proc/net/stat/nf_conntrack) do not rise over a few seconds (a state check:
// what the fault's racing client breaks, one query in three, is its own).
const NodeConntrackQuiet ProbeKind = "node-conntrack-quiet"

const (
	// raceServiceName is the second Service in front of CoreDNS.
	raceServiceName = "kube-dns-upstream"
	// racePodPrefix names the racing client's pod: racePodPrefix + node.
	racePodPrefix = "ndlab-dns-race-"
	// raceLabel marks the objects of the fault.
	raceLabel = "netdoctor.io/lab-fault"
	// raceMinFailures is how far insert_failed must rise for the injection to count.
	raceMinFailures = 5
	// quietWindow is how long NodeConntrackQuiet watches the counters.
	quietWindow = 3 * time.Second
)

func init() {
	Register(Fault{
		ID: "conntrack-insert-failed", Group: "host",
		Summary: "a pod on the node sends each DNS query at once to two ClusterIPs that share the CoreDNS backends (kube-dns and a kube-dns-upstream Service), " +
			"from one UDP socket and two threads on two CPUs: when both packets are DNATed to the same CoreDNS pod their reply tuples clash and the node's conntrack " +
			"drops the loser (insert_failed and drop rise; that client's lost query is a 5 s resolver timeout); other pods resolve",
		Injection: "kubectl -n kube-system create service kube-dns-upstream (selector k8s-app=kube-dns, 53/UDP); " +
			"a pod on NODE running `netdoctor lab dnsrace --server KUBE_DNS_IP:53 --server UPSTREAM_SVC_IP:53` (100 racing pairs a second) until insert_failed rises",
		Checks: []Check{
			{Kind: NodeConntrackQuiet, From: Faulted, Broken: true},
			{Kind: NodeConntrackQuiet, From: Peer},
			{Kind: PodDNSCluster, From: Faulted},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: injectConntrackRace,
		Heal:   healConntrackRace,
	})
}

// ctCounters are the conntrack counters the fault is about, summed over CPUs.
type ctCounters struct{ InsertFailed, Drop, ClashResolve uint64 }

func (c ctCounters) String() string {
	return fmt.Sprintf("insert_failed %d, drop %d, clash_resolve %d", c.InsertFailed, c.Drop, c.ClashResolve)
}

// readCTCounters reads /proc/net/stat/nf_conntrack of the namespace at netnsPath.
func readCTCounters(netnsPath string) (ctCounters, error) {
	var b []byte
	err := namespace.Do(netnsPath, func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/stat/nf_conntrack")
		return err
	})
	if err != nil {
		return ctCounters{}, fmt.Errorf("read conntrack statistics in %s: %w", netnsPath, err)
	}
	per, err := collect.ParseConntrackStat(bytes.NewReader(b))
	if err != nil {
		return ctCounters{}, fmt.Errorf("conntrack statistics in %s: %w", netnsPath, err)
	}
	var c ctCounters
	for _, p := range per {
		c.InsertFailed += p.InsertFailed
		c.Drop += p.Drop
		c.ClashResolve += p.ClashResolve
	}
	return c, nil
}

// conntrackQuiet fails if insert_failed or drop rise in the namespace at netnsPath within window.
func conntrackQuiet(ctx context.Context, netnsPath string, window time.Duration) error {
	was, now, err := readTwice(ctx, window, func() (ctCounters, error) { return readCTCounters(netnsPath) })
	if err != nil {
		return err
	}
	if now.InsertFailed > was.InsertFailed || now.Drop > was.Drop {
		return fmt.Errorf("conntrack insert_failed rose by %d and drop by %d in %s (%s)",
			now.InsertFailed-was.InsertFailed, now.Drop-was.Drop, window, now)
	}
	return nil
}

// udpDispatched reports whether a kube-proxy dump sends ClusterIP ip, UDP port 53, to its
// service chain.
func udpDispatched(rules, mode, ip string) bool {
	for _, line := range strings.Split(rules, "\n") {
		if mode == "nftables" {
			// An element of the service-ips map: "198.19.0.10 . udp . 53 : goto service-...",
			// the first one after "elements = { ".
			el := strings.TrimPrefix(strings.TrimSpace(line), "elements = { ")
			if strings.HasPrefix(el, ip+" . udp . 53 : goto service-") {
				return true
			}
			continue
		}
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") && strings.Contains(line, "-d "+ip+"/32") &&
			strings.Contains(line, "-p udp") && strings.Contains(line, "--dport 53") && strings.Contains(line, "-j KUBE-SVC-") {
			return true
		}
	}
	return false
}

// ensureRaceService creates (or finds) the second Service in front of CoreDNS and returns its ClusterIP.
func ensureRaceService(ctx context.Context, l *lab.Lab) (string, error) {
	svcs := l.Client.CoreV1().Services(metav1.NamespaceSystem)
	svc, err := svcs.Get(ctx, raceServiceName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		svc, err = svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: raceServiceName, Namespace: metav1.NamespaceSystem,
				Labels: map[string]string{raceLabel: "conntrack-insert-failed"}},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"k8s-app": "kube-dns"},
				Ports:    []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)}},
			},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("service %s/%s: %w", metav1.NamespaceSystem, raceServiceName, err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return "", fmt.Errorf("service %s/%s has no ClusterIP", metav1.NamespaceSystem, raceServiceName)
	}
	return svc.Spec.ClusterIP, nil
}

func racePod(node string, servers []string) *corev1.Pod {
	args := []string{"lab", "dnsrace", "--name", lab.SampleName + ".default.svc.cluster.local."}
	for _, s := range servers {
		args = append(args, "--server", s)
	}
	grace := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: racePodPrefix + node, Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{raceLabel: "conntrack-insert-failed"}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{{Name: "dnsrace", Image: "netdoctor:lab", Args: args}},
		},
	}
}

func injectConntrackRace(ctx context.Context, t Target) (map[string]string, error) {
	cfg := t.Lab.State.Config
	upstreamIP, err := ensureRaceService(ctx, t.Lab)
	data := map[string]string{"service": raceServiceName, "pod": racePodPrefix + t.Node}
	if err != nil {
		return data, err
	}
	data["serviceIP"] = upstreamIP
	dnsIP := cfg.ClusterDNSIP().String()
	if err := waitFor(ctx, 60*time.Second, "kube-proxy on "+t.Node+" to send "+upstreamIP+" udp/53 to CoreDNS", func() (bool, string) {
		rules, err := lab.ProxyRules(ctx, t.Netns(), cfg.ProxyMode)
		if err != nil {
			return false, err.Error()
		}
		return udpDispatched(rules, cfg.ProxyMode, upstreamIP) && udpDispatched(rules, cfg.ProxyMode, dnsIP), "no udp/53 service rule for both ClusterIPs yet"
	}); err != nil {
		return data, err
	}
	before, err := readCTCounters(t.NetnsPath())
	if err != nil {
		return data, err
	}
	data["before"] = before.String()
	pod := racePod(t.Node, []string{dnsIP + ":53", upstreamIP + ":53"})
	if _, err := t.Lab.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return data, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var now ctCounters
	err = waitFor(ctx, 90*time.Second, "conntrack insert_failed on "+t.Node+" to rise by "+strconv.Itoa(raceMinFailures), func() (bool, string) {
		var rerr error
		if now, rerr = readCTCounters(t.NetnsPath()); rerr != nil {
			return false, rerr.Error()
		}
		return now.InsertFailed >= before.InsertFailed+raceMinFailures, "before: " + before.String() + "; now: " + now.String()
	})
	data["after"] = now.String()
	return data, err
}

func healConntrackRace(ctx context.Context, t Target, d map[string]string) error {
	name := d["pod"]
	if name == "" {
		name = racePodPrefix + t.Node
	}
	cs := t.Lab.Client.CoreV1()
	zero := int64(0)
	var errs []error
	if err := cs.Pods(metav1.NamespaceSystem).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete pod %s/%s: %w", metav1.NamespaceSystem, name, err))
	}
	if err := cs.Services(metav1.NamespaceSystem).Delete(ctx, raceServiceName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete service %s/%s: %w", metav1.NamespaceSystem, raceServiceName, err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The kubelet stops the client once it sees the deletion: wait until the pod is gone and
	// the counters have settled (no rise over one quiet window).
	return waitFor(ctx, 60*time.Second, "the racing client on "+t.Node+" to stop", func() (bool, string) {
		if _, err := cs.Pods(metav1.NamespaceSystem).Get(ctx, name, metav1.GetOptions{}); err == nil {
			return false, "pod " + name + " still exists"
		}
		if err := conntrackQuiet(ctx, t.NetnsPath(), quietWindow); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// probeConntrack runs the probe kinds of conntrack.go.
func (p *Prober) probeConntrack(ctx context.Context, kind ProbeKind, fromNode string) error {
	if kind != NodeConntrackQuiet {
		return fmt.Errorf("unknown probe kind %q", kind)
	}
	return conntrackQuiet(ctx, lab.NetnsPath(lab.NetnsPrefix(p.L.State.Config.Name)+fromNode), quietWindow)
}

// DNSRaceOptions configures RunDNSRace.
type DNSRaceOptions struct {
	// Servers are the two nameservers, each queried with the same question at once.
	Servers []netip.AddrPort
	// Name is the name asked (type A).
	Name string
	// Rate is the number of racing pairs per second.
	Rate int
	// Log receives a line of statistics every ten seconds (nil: none).
	Log io.Writer
}

// RunDNSRace is the racing DNS client of conntrack-insert-failed, run in a lab pod by
// `netdoctor lab dnsrace`: Rate times a second it opens one UDP socket and sends the same A
// query to both servers at the same moment from two threads pinned to two CPUs (what a
// resolver that asks every nameserver in parallel from one socket does on a busy node), then
// counts the answers. It runs until ctx ends.
func RunDNSRace(ctx context.Context, o DNSRaceOptions) error {
	if len(o.Servers) != 2 {
		return fmt.Errorf("dns race: need exactly two servers, got %d", len(o.Servers))
	}
	if o.Rate <= 0 {
		return fmt.Errorf("dns race: rate %d: must be positive", o.Rate)
	}
	var sas [2]*unix.SockaddrInet4
	for i, s := range o.Servers {
		if !s.Addr().Is4() {
			return fmt.Errorf("dns race: server %s: IPv4 only", s)
		}
		sas[i] = &unix.SockaddrInet4{Port: int(s.Port()), Addr: s.Addr().As4()}
	}
	// Worker 0 is this goroutine, on this thread from now on: the sockets are made here, in
	// this thread's network namespace (a socket keeps the namespace it was made in, whichever
	// thread sends on it).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var saved unix.CPUSet
	if err := unix.SchedGetaffinity(0, &saved); err != nil {
		return fmt.Errorf("dns race: read CPU affinity: %w", err)
	}
	defer func() { _ = unix.SchedSetaffinity(0, &saved) }() // the thread goes back to the pool
	cpus, err := twoCPUs(saved)
	if err != nil {
		return err
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(o.Name), dns.TypeA)
	query, err := m.Pack()
	if err != nil {
		return fmt.Errorf("dns race: pack query for %s: %w", o.Name, err)
	}

	var arrived [2]atomic.Uint64
	start := make(chan int)
	sent := make(chan error)
	pinErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the pinned thread ends with this goroutine
		if err := pinThread(cpus[1]); err != nil {
			pinErr <- err
			return
		}
		pinErr <- nil
		for fd := range start {
			round := arrived[1].Add(1)
			for arrived[0].Load() < round {
			}
			sent <- unix.Sendto(fd, query, 0, sas[1])
		}
	}()
	if err := <-pinErr; err != nil {
		return err
	}
	defer close(start)
	if err := pinThread(cpus[0]); err != nil {
		return err
	}

	var rounds, answers, sendErrs atomic.Uint64
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-report.C:
			if o.Log != nil {
				r, a := rounds.Load(), answers.Load()
				_, _ = fmt.Fprintf(o.Log, "dnsrace: %d racing pairs to %s and %s, %d of %d queries answered within 1s, %d send errors\n",
					r, o.Servers[0], o.Servers[1], a, 2*r, sendErrs.Load())
			}
			continue
		case <-tick.C:
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("dns race: socket: %w", err)
		}
		// Bound before the race: both threads must send from the same port.
		if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
			_ = unix.Close(fd)
			return fmt.Errorf("dns race: bind: %w", err)
		}
		start <- fd
		round := arrived[0].Add(1)
		for arrived[1].Load() < round {
		}
		e0 := unix.Sendto(fd, query, 0, sas[0])
		e1 := <-sent
		rounds.Add(1)
		for _, e := range []error{e0, e1} {
			if e != nil {
				sendErrs.Add(1)
			}
		}
		go func() {
			answers.Add(uint64(readAnswers(fd, 2, time.Second)))
			_ = unix.Close(fd)
		}()
	}
}

// readAnswers reads up to n datagrams from fd within timeout and returns how many arrived.
func readAnswers(fd, n int, timeout time.Duration) int {
	got := 0
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for got < n {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		k, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			break
		}
		if _, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT); err == nil {
			got++
		}
	}
	return got
}

// twoCPUs returns the first two CPUs of set.
func twoCPUs(set unix.CPUSet) ([2]int, error) {
	var out []int
	for c := 0; c < 1024 && len(out) < 2; c++ {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	if len(out) < 2 {
		return [2]int{}, errors.New("dns race: needs two CPUs (the race is two packets processed at once on two CPUs), this process may use one")
	}
	return [2]int{out[0], out[1]}, nil
}

// pinThread binds the calling (locked) thread to cpu.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("dns race: pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}
