package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/netdoctor/netdoctor/internal/command"
	"github.com/netdoctor/netdoctor/internal/lab"
)

// The kube-proxy group: the kube-proxy DaemonSet, its configuration and its process.

const (
	kubeProxyName = "kube-proxy"
	// noKubeProxyLabel marks a node the kube-proxy DaemonSet must leave (kube-proxy-not-running).
	noKubeProxyLabel = "netdoctor.io/lab-no-kube-proxy"
	criticalClass    = "system-node-critical"
)

func init() {
	Register(Fault{
		ID: "kube-proxy-not-running", Group: "kube-proxy",
		Summary:   "no kube-proxy on the node (the DaemonSet keeps off it, as after an eviction) and its rules flushed: every Service, DNS included, is unreachable from the node's pods",
		Injection: "kubectl label node NODE " + noKubeProxyLabel + "=true; kubectl -n kube-system patch ds kube-proxy (nodeAffinity: " + noKubeProxyLabel + " DoesNotExist); kube-proxy --cleanup (in NODE)",
		Checks: []Check{
			{Kind: PodSampleService, From: Faulted, Broken: true},
			{Kind: PodDNSCluster, From: Faulted, Broken: true},
			{Kind: PodSampleService, From: Peer},
			{Kind: PodDNSCluster, From: Peer},
			{Kind: PodTCP, From: Faulted, To: Peer},
		},
		Inject: injectNoKubeProxy,
		Heal:   healNoKubeProxy,
	})
	Register(Fault{
		ID: "kube-proxy-not-critical", Group: "kube-proxy",
		Summary:   "the kube-proxy DaemonSet lost priorityClassName system-node-critical: its pods may be evicted or preempted when a node is full (traffic still works)",
		Injection: "kubectl -n kube-system patch ds kube-proxy --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/template/spec/priorityClassName\"}]'",
		Checks: []Check{
			{Kind: KubeProxyCritical, From: Faulted, Broken: true},
			{Kind: KubeProxyCritical, From: Peer, Broken: true},
			{Kind: PodSampleService, From: Faulted},
			{Kind: PodDNSCluster, From: Faulted},
		},
		Inject: func(ctx context.Context, t Target) (map[string]string, error) {
			return nil, setKubeProxyPriority(ctx, t.Lab, "")
		},
		Heal: func(ctx context.Context, t Target, _ map[string]string) error {
			return setKubeProxyPriority(ctx, t.Lab, criticalClass)
		},
	})
	Register(Fault{
		ID: "kube-proxy-cluster-cidr-missing", Group: "kube-proxy",
		Summary: "kube-proxy restarted without clusterCIDR: it no longer masquerades traffic from outside the pod network to ClusterIPs " +
			"(node and hostNetwork clients reach a local endpoint with the node's own address); in this lab flannel's own masquerade still carries node traffic to remote endpoints",
		Injection: "kubectl -n kube-system edit configmap kube-proxy (clusterCIDR: \"\"); kubectl -n kube-system delete pod -l k8s-app=kube-proxy",
		Checks: []Check{
			{Kind: NodeServiceMasq, From: Faulted, To: Faulted, Broken: true},
			{Kind: NodeServiceMasq, From: Peer, To: Peer, Broken: true},
			{Kind: NodeService, From: Faulted, To: Peer},
			{Kind: PodServiceNoSNAT, From: Faulted, To: Peer},
			{Kind: PodSampleService, From: Faulted},
		},
		Inject: func(ctx context.Context, t Target) (map[string]string, error) {
			return setKubeProxyClusterCIDR(ctx, t.Lab, `""`)
		},
		Heal: healClusterCIDR,
	})
	Register(Fault{
		ID: "kube-proxy-cluster-cidr-wrong", Group: "kube-proxy",
		Summary: "kube-proxy restarted with clusterCIDR set to the service CIDR: every pod's connection to a ClusterIP is masqueraded " +
			"(the backend sees the node's address, not the client pod's)",
		Injection: "kubectl -n kube-system edit configmap kube-proxy (clusterCIDR: SERVICE_CIDR); kubectl -n kube-system delete pod -l k8s-app=kube-proxy",
		Checks: []Check{
			{Kind: PodServiceNoSNAT, From: Faulted, To: Peer, Broken: true},
			{Kind: PodServiceNoSNAT, From: Peer, To: Faulted, Broken: true},
			{Kind: NodeServiceMasq, From: Faulted, To: Faulted},
			{Kind: PodSampleService, From: Faulted},
		},
		Inject: func(ctx context.Context, t Target) (map[string]string, error) {
			return setKubeProxyClusterCIDR(ctx, t.Lab, t.Lab.State.Config.ServiceCIDR.String())
		},
		Heal: healClusterCIDR,
	})
}

func kubeProxyDS(ctx context.Context, l *lab.Lab) (*appsv1.DaemonSet, error) {
	ds, err := l.Client.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, kubeProxyName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get daemonset kube-system/kube-proxy: %w", err)
	}
	return ds, nil
}

// waitKubeProxyRolled waits until the DaemonSet's current template runs, ready, on every
// node it should run on, with no old or terminating pod left.
func waitKubeProxyRolled(ctx context.Context, l *lab.Lab) error {
	return waitFor(ctx, 120*time.Second, "the kube-proxy DaemonSet rollout", func() (bool, string) {
		ds, err := kubeProxyDS(ctx, l)
		if err != nil {
			return false, err.Error()
		}
		st := ds.Status
		if st.ObservedGeneration < ds.Generation || st.UpdatedNumberScheduled != st.DesiredNumberScheduled ||
			st.NumberReady != st.DesiredNumberScheduled || st.NumberAvailable != st.DesiredNumberScheduled {
			return false, fmt.Sprintf("generation %d observed %d, desired %d updated %d ready %d", ds.Generation,
				st.ObservedGeneration, st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady)
		}
		pods, err := l.Client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
		if err != nil {
			return false, err.Error()
		}
		if int32(len(pods.Items)) != st.DesiredNumberScheduled {
			return false, fmt.Sprintf("%d kube-proxy pods, want %d", len(pods.Items), st.DesiredNumberScheduled)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
				return false, "pod " + p.Name + " terminating or not running"
			}
		}
		return true, ""
	})
}

func setKubeProxyPriority(ctx context.Context, l *lab.Lab, class string) error {
	var patch []byte
	if class == "" {
		patch = []byte(`[{"op":"remove","path":"/spec/template/spec/priorityClassName"}]`)
	} else {
		patch = []byte(`[{"op":"add","path":"/spec/template/spec/priorityClassName","value":"` + class + `"}]`)
	}
	if _, err := l.Client.AppsV1().DaemonSets(metav1.NamespaceSystem).Patch(ctx, kubeProxyName, types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch daemonset kube-system/kube-proxy priority class %q: %w", class, err)
	}
	return waitKubeProxyRolled(ctx, l)
}

func injectNoKubeProxy(ctx context.Context, t Target) (map[string]string, error) {
	l := t.Lab
	ds, err := kubeProxyDS(ctx, l)
	if err != nil {
		return nil, err
	}
	if ds.Spec.Template.Spec.Affinity != nil {
		return nil, fmt.Errorf("daemonset kube-system/kube-proxy already has an affinity: refusing to replace it")
	}
	label := []byte(`{"metadata":{"labels":{"` + noKubeProxyLabel + `":"true"}}}`)
	if _, err := l.Client.CoreV1().Nodes().Patch(ctx, t.Node, types.MergePatchType, label, metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("label node %s: %w", t.Node, err)
	}
	aff := corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
			Key: noKubeProxyLabel, Operator: corev1.NodeSelectorOpDoesNotExist}}}}}}}
	b, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{"affinity": aff}}}})
	if err != nil {
		return nil, err
	}
	if _, err := l.Client.AppsV1().DaemonSets(metav1.NamespaceSystem).Patch(ctx, kubeProxyName, types.StrategicMergePatchType, b, metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("patch daemonset kube-system/kube-proxy affinity: %w", err)
	}
	if err := waitKubeProxyRolled(ctx, l); err != nil {
		return nil, err
	}
	// The kubelet stopped the pod's process when the DaemonSet controller deleted it; a
	// stopped kube-proxy leaves its rules behind, so clean them as `kube-proxy --cleanup` does.
	if err := waitFor(ctx, 30*time.Second, "kube-proxy gone from "+t.Node, func() (bool, string) {
		_, err := kubeProxyPod(ctx, l, t.Node)
		return err != nil, "its pod still exists"
	}); err != nil {
		return nil, err
	}
	if _, err := command.Run(ctx, command.Cmd{Name: l.State.Config.K8sBin, Args: []string{"kube-proxy", "--cleanup", "--proxy-mode=" + l.State.Config.ProxyMode}, Netns: t.NetnsPath()}); err != nil {
		return nil, fmt.Errorf("kube-proxy --cleanup on %s: %w", t.Node, err)
	}
	rules, err := lab.ProxyRules(ctx, t.Netns(), l.State.Config.ProxyMode)
	if err != nil {
		return nil, err
	}
	if strings.Contains(rules, "KUBE-SVC-") || lab.HasEndpointRules(rules, l.State.Config.ProxyMode) {
		return nil, fmt.Errorf("kube-proxy rules still on %s after --cleanup", t.Node)
	}
	return nil, nil
}

func healNoKubeProxy(ctx context.Context, t Target, _ map[string]string) error {
	l := t.Lab
	if _, err := l.Client.AppsV1().DaemonSets(metav1.NamespaceSystem).Patch(ctx, kubeProxyName, types.JSONPatchType,
		[]byte(`[{"op":"remove","path":"/spec/template/spec/affinity"}]`), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("remove the affinity of daemonset kube-system/kube-proxy: %w", err)
	}
	unlabel := []byte(`{"metadata":{"labels":{"` + noKubeProxyLabel + `":null}}}`)
	if _, err := l.Client.CoreV1().Nodes().Patch(ctx, t.Node, types.MergePatchType, unlabel, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("unlabel node %s: %w", t.Node, err)
	}
	if err := waitKubeProxyRolled(ctx, l); err != nil {
		return err
	}
	return waitSampleRules(ctx, l, t.Node)
}

// waitSampleRules waits until kube-proxy on node has rules for both sample Services and
// their endpoints.
func waitSampleRules(ctx context.Context, l *lab.Lab, node string) error {
	ns, err := l.State.Node(node)
	if err != nil {
		return err
	}
	var ips []string
	for _, n := range lab.SampleNamespaces {
		s, err := l.Client.CoreV1().Services(n).Get(ctx, lab.SampleName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get service %s/%s: %w", n, lab.SampleName, err)
		}
		ips = append(ips, s.Spec.ClusterIP)
	}
	ips = append(ips, l.State.Config.ClusterDNSIP().String())
	return waitFor(ctx, 60*time.Second, "kube-proxy rules on "+node, func() (bool, string) {
		rules, err := lab.ProxyRules(ctx, ns.Netns, l.State.Config.ProxyMode)
		if err != nil {
			return false, err.Error()
		}
		for _, ip := range ips {
			if !strings.Contains(rules, ip) {
				return false, "no rule for " + ip
			}
		}
		return lab.HasEndpointRules(rules, l.State.Config.ProxyMode), "no endpoint rules"
	})
}

var clusterCIDRLine = regexp.MustCompile(`(?m)^clusterCIDR: .*$`)

// setKubeProxyClusterCIDR writes value (YAML) as clusterCIDR in the kube-proxy ConfigMap,
// restarts every kube-proxy pod and waits until each node's rules show it. It returns the
// old value.
func setKubeProxyClusterCIDR(ctx context.Context, l *lab.Lab, value string) (map[string]string, error) {
	cms := l.Client.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, kubeProxyName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get configmap kube-system/kube-proxy: %w", err)
	}
	conf := cm.Data["config.conf"]
	old := clusterCIDRLine.FindString(conf)
	if old == "" {
		return nil, fmt.Errorf("configmap kube-system/kube-proxy has no clusterCIDR line")
	}
	cm.Data["config.conf"] = clusterCIDRLine.ReplaceAllString(conf, "clusterCIDR: "+value)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("update configmap kube-system/kube-proxy: %w", err)
	}
	data := map[string]string{"clusterCIDR": strings.TrimSpace(strings.TrimPrefix(old, "clusterCIDR:"))}
	if err := restartKubeProxy(ctx, l); err != nil {
		return data, err
	}
	return data, waitMasqRule(ctx, l, strings.Trim(value, `"`))
}

// waitMasqRule waits until every node's kube-proxy rules masquerade ClusterIP traffic from
// outside cidr ("" = no such rule at all, clusterCIDR unset).
func waitMasqRule(ctx context.Context, l *lab.Lab, cidr string) error {
	mode := l.State.Config.ProxyMode
	has := func(rules, c string) bool {
		if mode == "nftables" {
			return strings.Contains(rules, "ip saddr != "+c)
		}
		for _, line := range strings.Split(rules, "\n") {
			if strings.HasPrefix(line, "-A KUBE-SVC-") && strings.Contains(line, "! -s "+c) && strings.Contains(line, "KUBE-MARK-MASQ") {
				return true
			}
		}
		return false
	}
	all := []string{l.State.Config.ClusterCIDR.String(), l.State.Config.ServiceCIDR.String()}
	return waitAllRules(ctx, l, "kube-proxy masquerade rules for clusterCIDR "+fmt.Sprintf("%q", cidr), func(rules string) bool {
		for _, c := range all {
			if has(rules, c) != (c == cidr) {
				return false
			}
		}
		return lab.HasEndpointRules(rules, mode)
	})
}

func healClusterCIDR(ctx context.Context, t Target, d map[string]string) error {
	v := d["clusterCIDR"]
	if v == "" || v == `""` {
		v = t.Lab.State.Config.ClusterCIDR.String()
	}
	_, err := setKubeProxyClusterCIDR(ctx, t.Lab, v)
	return err
}
