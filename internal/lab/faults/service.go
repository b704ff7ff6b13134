package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/kubelet"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
)

// The service group: Services, their endpoints and the per-node rules kube-proxy writes.

// Probe kinds of the loopback backend of endpoint-not-listening.
const (
	// BackendPodTCP: HTTP from the web pod on From to the pod IP (port 80) of the backend
	// Deployment ndlab-backend, which runs on the faulted node.
	BackendPodTCP ProbeKind = "backend-pod-tcp"
	// BackendLoopback: HTTP to 127.0.0.1:80 inside the backend pod's own namespace.
	BackendLoopback ProbeKind = "backend-loopback"
)

// backendName is the Deployment endpoint-not-listening runs (in namespace default).
const backendName = "ndlab-backend"

// wrongTargetPort is the port service-no-endpoints points the Service at: no container has it.
const wrongTargetPort = 8080

func init() {
	Register(Fault{
		ID: "service-no-endpoints", Group: "service",
		Summary:   "the Service shop/web targets port 8080, which no container has: connections to its ClusterIP are refused from every node, pod IPs still answer on 80",
		Injection: "kubectl -n shop patch service web -p '{\"spec\":{\"ports\":[{\"name\":\"http\",\"port\":80,\"targetPort\":8080}]}}'",
		Checks: []Check{
			{Kind: PodSampleService, From: Faulted, Broken: true},
			{Kind: PodSampleService, From: Peer, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer},
			{Kind: PodServiceLocal, From: Faulted, To: Peer},
		},
		Inject: injectWrongTargetPort,
		Heal:   healWrongTargetPort,
	})
	Register(Fault{
		ID: "endpoint-not-listening", Group: "service",
		Summary:   "the backend ndlab-backend on the node listens on 127.0.0.1 only: refused on its pod IP, from every pod",
		Injection: "kubectl create deployment ndlab-backend --image=nginx (pinned to NODE) with LAB_SERVE_BIND=127.0.0.1",
		Checks: []Check{
			{Kind: BackendPodTCP, From: Peer, Broken: true},
			{Kind: BackendPodTCP, From: Faulted, Broken: true},
			{Kind: BackendLoopback, From: Faulted},
			{Kind: PodTCP, From: Peer, To: Faulted},
		},
		Inject: func(ctx context.Context, t Target) (map[string]string, error) {
			return nil, applyBackend(ctx, t, "127.0.0.1")
		},
		Heal: func(ctx context.Context, t Target, _ map[string]string) error {
			return applyBackend(ctx, t, "")
		},
	})
	Register(Fault{
		ID: "service-rules-missing", Group: "service",
		Summary:   "the node lost kube-proxy's entry for Service shop/web (iptables: the KUBE-SERVICES jump; nftables: the service-ips map element) and its kube-proxy is paused (SIGSTOP), so nothing restores it",
		Injection: "kill -STOP KUBE_PROXY_PID; iptables -t nat -D KUBE-SERVICES -d CLUSTER_IP/32 ... -j KUBE-SVC-... (nftables: nft delete element ip kube-proxy service-ips { CLUSTER_IP . tcp . 80 })",
		Checks: []Check{
			{Kind: PodSampleService, From: Faulted, Broken: true},
			{Kind: PodSampleService, From: Peer},
			{Kind: PodDNSCluster, From: Faulted},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: injectRulesMissing,
		Heal:   healRulesMissing,
	})
}

func sampleService(ctx context.Context, l *lab.Lab) (*corev1.Service, error) {
	svc, err := l.Client.CoreV1().Services(ServiceNamespace).Get(ctx, lab.SampleName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get service %s/%s: %w", ServiceNamespace, lab.SampleName, err)
	}
	return svc, nil
}

// setTargetPort sets the target port of the sample Service's first port and waits until
// every node's kube-proxy rules DNAT to that port.
func setTargetPort(ctx context.Context, l *lab.Lab, tp intstr.IntOrString, port int) (intstr.IntOrString, error) {
	svc, err := sampleService(ctx, l)
	if err != nil {
		return intstr.IntOrString{}, err
	}
	old := svc.Spec.Ports[0].TargetPort
	svc.Spec.Ports[0].TargetPort = tp
	if _, err := l.Client.CoreV1().Services(ServiceNamespace).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		return old, fmt.Errorf("update service %s/%s: %w", ServiceNamespace, svc.Name, err)
	}
	return old, waitAllRules(ctx, l, fmt.Sprintf("kube-proxy rules of %s/%s with target port %s", ServiceNamespace, svc.Name, tp.String()),
		func(rules string) bool { return dnatsToPort(rules, port) })
}

// waitAllRules waits until ok holds for the kube-proxy rules of every node.
func waitAllRules(ctx context.Context, l *lab.Lab, what string, ok func(rules string) bool) error {
	c := l.State.Config
	return waitFor(ctx, 60*time.Second, what, func() (bool, string) {
		for _, n := range l.State.Nodes {
			rules, err := lab.ProxyRules(ctx, n.Netns, c.ProxyMode)
			if err != nil {
				return false, err.Error()
			}
			if !ok(rules) {
				return false, "not yet on " + n.Name
			}
		}
		return true, ""
	})
}

// dnatsToPort says whether a kube-proxy dump DNATs to port on some endpoint: iptables
// `--to-destination 198.18.65.3:8080`, nftables `dnat to 198.18.65.3:8080` (one endpoint) or
// `dnat ip to numgen random mod 3 map { 0 : 198.18.65.3 . 8080, ... }` (several).
func dnatsToPort(rules string, port int) bool {
	return regexp.MustCompile(fmt.Sprintf(`(:| \. )%d\b`, port)).MatchString(rules)
}

func injectWrongTargetPort(ctx context.Context, t Target) (map[string]string, error) {
	old, err := setTargetPort(ctx, t.Lab, intstr.FromInt32(wrongTargetPort), wrongTargetPort)
	b, _ := json.Marshal(old)
	return map[string]string{"targetPort": string(b)}, err
}

func healWrongTargetPort(ctx context.Context, t Target, d map[string]string) error {
	tp := intstr.FromString("http")
	if s := d["targetPort"]; s != "" {
		if err := json.Unmarshal([]byte(s), &tp); err != nil {
			return fmt.Errorf("recorded target port %q: %w", s, err)
		}
	}
	_, err := setTargetPort(ctx, t.Lab, tp, lab.SamplePort)
	if err != nil {
		return err
	}
	return waitAllRules(ctx, t.Lab, "no kube-proxy rule left with the wrong target port", func(rules string) bool {
		return !dnatsToPort(rules, wrongTargetPort)
	})
}

// applyBackend creates or updates the Deployment ndlab-backend (one test server pinned to
// the target node) listening on bind ("" = every address), and waits until its one pod of
// that configuration runs (and, bound to every address, is ready).
func applyBackend(ctx context.Context, t Target, bind string) error {
	labels := map[string]string{"app": backendName}
	one := int32(1)
	// The new pod is created while the old one still holds its address (surge), and the old
	// one goes at once (a loopback-bound pod never gets ready): the new pod has a fresh IP, so
	// no neighbour cache still maps a reused address to the old pod's MAC.
	one32, surge := intstr.FromInt32(1), intstr.FromInt32(1)
	strategy := appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &one32, MaxSurge: &surge}}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: backendName, Namespace: metav1.NamespaceDefault, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: strategy,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"kubernetes.io/hostname": t.Node},
					Containers: []corev1.Container{{
						Name: "web", Image: lab.SampleImage,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: lab.SamplePort, Protocol: corev1.ProtocolTCP}},
						Env:   []corev1.EnvVar{{Name: "LAB_SERVE_BIND", Value: bind}},
					}},
				},
			},
		},
	}
	api := t.Lab.Client.AppsV1().Deployments(metav1.NamespaceDefault)
	cur, err := api.Get(ctx, backendName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, dep, metav1.CreateOptions{})
	case err == nil:
		cur.Spec = dep.Spec
		_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("apply deployment default/%s: %w", backendName, err)
	}
	if err := waitFor(ctx, 60*time.Second, "backend pod listening on "+bindName(bind), func() (bool, string) {
		p, err := backendPod(ctx, t.Lab)
		if err != nil {
			return false, err.Error()
		}
		env := ""
		if len(p.Spec.Containers[0].Env) > 0 {
			env = p.Spec.Containers[0].Env[0].Value
		}
		if env != bind || p.Spec.NodeName != t.Node || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return false, fmt.Sprintf("pod %s bind %q on %s phase %s", p.Name, env, p.Spec.NodeName, p.Status.Phase)
		}
		if bind == "" && !podIsReady(p) {
			return false, "pod " + p.Name + " not ready"
		}
		return true, ""
	}); err != nil {
		return err
	}
	// The lab's IPAM hands out the lowest free address: a pod on the node may still map a
	// reused one to a gone pod's MAC until its neighbour entry goes stale. Wait until the web
	// pod on the node reaches the backend as it now is (answers, or refuses on loopback-only).
	pr := NewProber(t.Lab)
	web, err := pr.WebPod(ctx, t.Node)
	if err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, "the web pod on "+t.Node+" to reach the backend", func() (bool, string) {
		b, err := pr.backendRef(ctx)
		if err != nil {
			return false, err.Error()
		}
		err = HTTPGet(ctx, web.Netns, net.JoinHostPort(b.IP, "80"), "pod "+b.Name)
		if bind == "" {
			return err == nil, fmt.Sprint(err)
		}
		return err != nil && errors.Is(err, syscall.ECONNREFUSED), fmt.Sprint(err)
	})
}

func bindName(bind string) string {
	if bind == "" {
		return "every address"
	}
	return bind
}

// backendPod returns the one pod of ndlab-backend (an error while old ones remain).
func backendPod(ctx context.Context, l *lab.Lab) (*corev1.Pod, error) {
	pods, err := l.Client.CoreV1().Pods(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: "app=" + backendName})
	if err != nil {
		return nil, fmt.Errorf("list pods of %s: %w", backendName, err)
	}
	if len(pods.Items) != 1 || pods.Items[0].DeletionTimestamp != nil {
		return nil, fmt.Errorf("%d pods of %s (want exactly one, not terminating)", len(pods.Items), backendName)
	}
	return &pods.Items[0], nil
}

func (p *Prober) backendRef(ctx context.Context) (PodRef, error) {
	pod, err := backendPod(ctx, p.L)
	if err != nil {
		return PodRef{}, err
	}
	ref := PodRef{Namespace: pod.Namespace, Name: pod.Name, Node: pod.Spec.NodeName, IP: pod.Status.PodIP}
	if ref.Netns, err = podNetns(ctx, p.L, ref); err != nil {
		return PodRef{}, err
	}
	return ref, nil
}

// kubeProxyProc returns the kube-proxy process the lab kubelet of node started (from its
// process record), checked to be alive and to run in node's network namespace.
func kubeProxyProc(ctx context.Context, t Target) (*proc.Info, error) {
	pod, err := kubeProxyPod(ctx, t.Lab, t.Node)
	if err != nil {
		return nil, err
	}
	id := kubelet.SandboxID(pod.UID)
	path := filepath.Join(lab.ProcDir(t.Lab.State.Config.StateDir()), "pod-"+id[:8]+"-kube-proxy.json")
	info, err := proc.Load(path)
	if err != nil {
		return nil, err
	}
	if !proc.Alive(info) {
		return nil, fmt.Errorf("kube-proxy process %d of pod %s is not running", info.PID, pod.Name)
	}
	same, err := sameNetns(fmt.Sprintf("/proc/%d/ns/net", info.PID), t.NetnsPath())
	if err != nil {
		return nil, err
	}
	if !same {
		return nil, fmt.Errorf("process %d of pod %s is not in %s's network namespace", info.PID, pod.Name, t.Node)
	}
	return info, nil
}

// splitRule splits an iptables-save rule into arguments (double quotes group words).
func splitRule(line string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range line {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case r == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func injectRulesMissing(ctx context.Context, t Target) (map[string]string, error) {
	svc, err := sampleService(ctx, t.Lab)
	if err != nil {
		return nil, err
	}
	info, err := kubeProxyProc(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := proc.Signal(info, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("pause kube-proxy %d on %s: %w", info.PID, t.Node, err)
	}
	data := map[string]string{"pid": fmt.Sprint(info.PID)}
	ip := svc.Spec.ClusterIP
	if t.Lab.State.Config.ProxyMode == "nftables" {
		elem := fmt.Sprintf("{ %s . tcp . %d }", ip, svc.Spec.Ports[0].Port)
		if _, err := command.Output(ctx, t.NetnsPath(), "nft", "delete", "element", "ip", "kube-proxy", "service-ips", elem); err != nil {
			return data, fmt.Errorf("delete service-ips element %s on %s: %w", elem, t.Node, err)
		}
		data["deleted"] = "service-ips " + elem
		return data, nil
	}
	out, err := command.Output(ctx, t.NetnsPath(), "iptables-save", "-t", "nat")
	if err != nil {
		return data, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") && strings.Contains(line, "-d "+ip+"/32") && strings.Contains(line, "-j KUBE-SVC-") {
			args := append([]string{"-t", "nat", "-D"}, splitRule(strings.TrimPrefix(line, "-A "))...)
			if err := iptables(ctx, t, args...); err != nil {
				return data, err
			}
			data["deleted"] = line
			return data, nil
		}
	}
	return data, fmt.Errorf("no KUBE-SERVICES jump for %s on %s", ip, t.Node)
}

// healRulesMissing resumes the paused kube-proxy and restarts its pod, as the field's reboot
// does: the new kube-proxy writes every rule afresh.
func healRulesMissing(ctx context.Context, t Target, _ map[string]string) error {
	if info, err := kubeProxyProc(ctx, t); err == nil {
		if err := proc.Signal(info, syscall.SIGCONT); err != nil {
			return fmt.Errorf("resume kube-proxy %d on %s: %w", info.PID, t.Node, err)
		}
	}
	if err := restartKubeProxy(ctx, t.Lab, t.Node); err != nil {
		return err
	}
	svc, err := sampleService(ctx, t.Lab)
	if err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, "kube-proxy on "+t.Node+" to restore "+svc.Spec.ClusterIP, func() (bool, string) {
		rules, err := lab.ProxyRules(ctx, t.Netns(), t.Lab.State.Config.ProxyMode)
		if err != nil {
			return false, err.Error()
		}
		return serviceDispatched(rules, t.Lab.State.Config.ProxyMode, svc.Spec.ClusterIP), "no KUBE-SERVICES jump or service-ips element yet"
	})
}

// serviceDispatched reports whether a kube-proxy dump sends ClusterIP ip (port 80, TCP) to its
// service chain: a KUBE-SERVICES jump (iptables) or a service-ips element (nftables).
func serviceDispatched(rules, mode, ip string) bool {
	if mode == "nftables" {
		return strings.Contains(rules, ip+" . tcp . 80 : goto service-")
	}
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") && strings.Contains(line, "-d "+ip+"/32") && strings.Contains(line, "-j KUBE-SVC-") {
			return true
		}
	}
	return false
}

// restartKubeProxy deletes the kube-proxy pods of the given nodes (every node if none) and
// waits until each node runs a new one.
func restartKubeProxy(ctx context.Context, l *lab.Lab, nodes ...string) error {
	if len(nodes) == 0 {
		for _, n := range l.State.Nodes {
			nodes = append(nodes, n.Name)
		}
	}
	old := map[types.UID]bool{}
	for _, n := range nodes {
		p, err := kubeProxyPod(ctx, l, n)
		if err != nil {
			return err
		}
		old[p.UID] = true
		zero := int64(0)
		if err := l.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return waitFor(ctx, 90*time.Second, "new kube-proxy pods on "+strings.Join(nodes, ", "), func() (bool, string) {
		for _, n := range nodes {
			p, err := kubeProxyPod(ctx, l, n)
			if err != nil {
				return false, err.Error()
			}
			if old[p.UID] || p.Status.Phase != corev1.PodRunning || !podIsReady(p) {
				return false, "kube-proxy on " + n + " not replaced and running yet"
			}
		}
		return true, ""
	})
}

// backendProbe runs the endpoint-not-listening probes.
func (p *Prober) backendProbe(ctx context.Context, kind ProbeKind, src PodRef) error {
	b, err := p.backendRef(ctx)
	if err != nil {
		return err
	}
	if kind == BackendLoopback {
		return HTTPGet(ctx, b.Netns, "127.0.0.1:80", "pod "+b.Name)
	}
	return HTTPGet(ctx, src.Netns, net.JoinHostPort(b.IP, "80"), "pod "+b.Name)
}
