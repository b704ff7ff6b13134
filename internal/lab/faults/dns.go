package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
)

// The DNS group: the cluster DNS Deployment, its upstream, and pods' resolver configuration.

const (
	coreDNSName     = "coredns"
	coreDNSSelector = "k8s-app=kube-dns"
)

func init() {
	Register(Fault{
		ID: "dns-pods-unavailable", Group: "dns",
		Summary:   "CoreDNS scaled to zero: the kube-dns Service has no endpoints and every name fails from every pod",
		Injection: "kubectl -n kube-system scale deployment coredns --replicas=0",
		Checks: []Check{
			{Kind: PodDNSCluster, From: Faulted, Broken: true},
			{Kind: PodDNSCluster, From: Peer, Broken: true},
			{Kind: PodDNSExternal, From: Faulted, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer},
			{Kind: PodSampleService, From: Faulted},
			{Kind: UpstreamDirect, From: Faulted},
		},
		Inject: injectDNSScale,
		Heal:   healDNSScale,
	})
	Register(Fault{
		ID: "pod-resolv-conf-wrong", Group: "dns",
		Summary:   "the web pod on the node has a resolv.conf pointing at the upstream server instead of the cluster DNS, without the search list: names fail in that pod only",
		Injection: "echo 'nameserver UPSTREAM_DNS' > /etc/resolv.conf (in the pod default/web-... on NODE)",
		Checks: []Check{
			{Kind: PodResolve, From: Faulted, Broken: true},
			{Kind: PodResolve, From: Peer},
			{Kind: PodDNSCluster, From: Faulted},
		},
		Inject: injectResolvConf,
		Heal:   healResolvConf,
	})
	Register(Fault{
		ID: "dns-upstream-failed", Group: "dns",
		Summary:   "CoreDNS forwards to a dead address: cluster names resolve, external names fail, though the upstream server answers when asked directly",
		Injection: "kubectl -n kube-system edit configmap coredns (forward . DEAD_LAB_IP); kubectl -n kube-system rollout restart deployment coredns",
		Checks: []Check{
			{Kind: PodDNSExternal, From: Faulted, Broken: true},
			{Kind: PodDNSExternal, From: Peer, Broken: true},
			{Kind: PodDNSCluster, From: Faulted},
			{Kind: UpstreamDirect, From: Faulted},
		},
		Inject: injectUpstream,
		Heal:   healUpstream,
	})
}

// waitFor polls cond every 300 ms until it is true or timeout passes; the error names what
// was awaited and the last reason cond gave.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %s", what, why)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// serviceReadyEndpoints counts the ready endpoint addresses of a Service's EndpointSlices.
func serviceReadyEndpoints(ctx context.Context, l *lab.Lab, ns, svc string) (int, error) {
	slices, err := l.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return 0, fmt.Errorf("list endpointslices of %s/%s: %w", ns, svc, err)
	}
	n := 0
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n += len(e.Addresses)
			}
		}
	}
	return n, nil
}

func scaleDeployment(ctx context.Context, l *lab.Lab, ns, name string, replicas int32) error {
	patch := []byte(`{"spec":{"replicas":` + strconv.Itoa(int(replicas)) + `}}`)
	if _, err := l.Client.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("scale deployment %s/%s to %d: %w", ns, name, replicas, err)
	}
	return nil
}

// waitDNSPods waits until exactly want CoreDNS pods exist, none terminating, all running and
// ready and created after since (the zero time: any), and the kube-dns Service has as many
// ready endpoints.
func waitDNSPods(ctx context.Context, l *lab.Lab, want int, since time.Time) error {
	return waitFor(ctx, 90*time.Second, fmt.Sprintf("%d CoreDNS pods ready", want), func() (bool, string) {
		pods, err := l.Client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: coreDNSSelector})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.CreationTimestamp.Time.Before(since.Truncate(time.Second)) {
				return false, "pod " + p.Name + " of the old set still exists"
			}
			if p.Status.Phase == corev1.PodRunning && podIsReady(&p) {
				ready++
			}
		}
		if len(pods.Items) != want || ready != want {
			return false, fmt.Sprintf("%d pods, %d ready", len(pods.Items), ready)
		}
		n, err := serviceReadyEndpoints(ctx, l, metav1.NamespaceSystem, "kube-dns")
		if err != nil {
			return false, err.Error()
		}
		// Each pod is one address in the slice of each port family (one slice per address type).
		if (want == 0 && n != 0) || (want > 0 && n < want) {
			return false, fmt.Sprintf("kube-dns has %d ready endpoint addresses", n)
		}
		return true, ""
	})
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func injectDNSScale(ctx context.Context, t Target) (map[string]string, error) {
	d, err := t.Lab.Client.AppsV1().Deployments(metav1.NamespaceSystem).Get(ctx, coreDNSName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get deployment kube-system/coredns: %w", err)
	}
	old := int32(2)
	if d.Spec.Replicas != nil && *d.Spec.Replicas > 0 {
		old = *d.Spec.Replicas
	}
	if err := scaleDeployment(ctx, t.Lab, metav1.NamespaceSystem, coreDNSName, 0); err != nil {
		return nil, err
	}
	data := map[string]string{"replicas": strconv.Itoa(int(old))}
	return data, waitDNSPods(ctx, t.Lab, 0, time.Time{})
}

func healDNSScale(ctx context.Context, t Target, d map[string]string) error {
	n, err := strconv.Atoi(d["replicas"])
	if err != nil || n <= 0 {
		n = 2
	}
	if err := scaleDeployment(ctx, t.Lab, metav1.NamespaceSystem, coreDNSName, int32(n)); err != nil {
		return err
	}
	return waitDNSPods(ctx, t.Lab, n, time.Time{})
}

// restartCoreDNS deletes the CoreDNS pods (their ReplicaSet replaces them, reading the
// ConfigMap afresh) and waits for the new ones.
func restartCoreDNS(ctx context.Context, l *lab.Lab) error {
	d, err := l.Client.AppsV1().Deployments(metav1.NamespaceSystem).Get(ctx, coreDNSName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get deployment kube-system/coredns: %w", err)
	}
	want := 1
	if d.Spec.Replicas != nil {
		want = int(*d.Spec.Replicas)
	}
	since := time.Now()
	if err := l.Client.CoreV1().Pods(metav1.NamespaceSystem).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: coreDNSSelector}); err != nil {
		return fmt.Errorf("restart CoreDNS pods: %w", err)
	}
	return waitDNSPods(ctx, l, want, since)
}

// deadUpstream is an underlay address no lab member uses: queries to it go unanswered.
func deadUpstream(c lab.Config) netip.Addr {
	a := c.UnderlayCIDR.Addr().As4()
	a[3] = 199
	return netip.AddrFrom4(a)
}

func setCorefileForward(ctx context.Context, l *lab.Lab, from, to string) error {
	cms := l.Client.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, coreDNSName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get configmap kube-system/coredns: %w", err)
	}
	cf := cm.Data["Corefile"]
	if !strings.Contains(cf, "forward . "+from) {
		return fmt.Errorf("configmap kube-system/coredns does not forward to %s:\n%s", from, cf)
	}
	cm.Data["Corefile"] = strings.Replace(cf, "forward . "+from, "forward . "+to, 1)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update configmap kube-system/coredns: %w", err)
	}
	return nil
}

func injectUpstream(ctx context.Context, t Target) (map[string]string, error) {
	c := t.Lab.State.Config
	if err := setCorefileForward(ctx, t.Lab, c.DNSIP().String(), deadUpstream(c).String()); err != nil {
		return nil, err
	}
	return map[string]string{"upstream": c.DNSIP().String(), "dead": deadUpstream(c).String()}, restartCoreDNS(ctx, t.Lab)
}

func healUpstream(ctx context.Context, t Target, d map[string]string) error {
	c := t.Lab.State.Config
	dead, up := d["dead"], d["upstream"]
	if dead == "" {
		dead = deadUpstream(c).String()
	}
	if up == "" {
		up = c.DNSIP().String()
	}
	if err := setCorefileForward(ctx, t.Lab, dead, up); err != nil {
		return err
	}
	return restartCoreDNS(ctx, t.Lab)
}

// webPodObject returns the sample web pod of namespace default on node.
func webPodObject(ctx context.Context, t Target) (*corev1.Pod, error) {
	ref, err := NewProber(t.Lab).WebPod(ctx, t.Node)
	if err != nil {
		return nil, err
	}
	p, err := t.Lab.Client.CoreV1().Pods(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return p, nil
}

// injectResolvConf rewrites, in place, the resolv.conf the kubelet bind-mounts on the pod's
// /etc/resolv.conf (the same inode, so the running process sees the change).
func injectResolvConf(ctx context.Context, t Target) (map[string]string, error) {
	p, err := webPodObject(ctx, t)
	if err != nil {
		return nil, err
	}
	path := kubelet.ResolvConfPath(t.Lab.State.Config.StateDir(), t.Node, p.UID)
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resolv.conf of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	wrong := "nameserver " + t.Lab.State.Config.DNSIP().String() + "\n"
	if err := writeInPlace(path, []byte(wrong)); err != nil {
		return nil, fmt.Errorf("write resolv.conf of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	b, _ := json.Marshal(string(old))
	return map[string]string{"pod": p.Namespace + "/" + p.Name, "path": path, "old": string(b)}, nil
}

func healResolvConf(_ context.Context, _ Target, d map[string]string) error {
	var old string
	if err := json.Unmarshal([]byte(d["old"]), &old); err != nil || old == "" {
		return fmt.Errorf("no recorded resolv.conf of pod %s to restore", d["pod"])
	}
	if err := writeInPlace(d["path"], []byte(old)); err != nil {
		return fmt.Errorf("restore resolv.conf of pod %s: %w", d["pod"], err)
	}
	return nil
}

// writeInPlace truncates and rewrites an existing file (keeping its inode, which a bind mount
// refers to).
func writeInPlace(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
