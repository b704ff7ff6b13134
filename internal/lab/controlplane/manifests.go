package controlplane

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Images of the add-ons; the lab maps them to programs of netdoctor-k8s.
const (
	KubeProxyImage = "registry.k8s.io/kube-proxy:v1.37.2"
	CoreDNSImage   = "registry.k8s.io/coredns/coredns:v1.15.0"
)

// Add-on defaults of the lab's address plan.
const (
	// DefaultDNSServiceIP is the kube-dns Service's cluster IP (the 10th of the service CIDR).
	DefaultDNSServiceIP = "198.19.0.10"
	// DefaultUpstreamDNS is the lab's upstream DNS server (never the host's resolver).
	DefaultUpstreamDNS = "198.18.0.53"
	// KubeProxyConfigDir is where the kube-proxy ConfigMap is mounted in its pod, as kubeadm does.
	KubeProxyConfigDir = "/var/lib/kube-proxy"
	// ServiceAccountDir is where a pod's service account token and CA are mounted.
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

const kubeSystem = "kube-system"

// KubeProxyConfig returns a KubeProxyConfiguration (config.conf of the kube-proxy ConfigMap)
// shaped like kubeadm's, with the given cluster CIDR, proxy mode ("iptables" or "nftables")
// and kubeconfig path. Unlike kubeadm's defaults, conntrack limits and timeouts are left as
// the kernel has them (maxPerCore 0, timeouts 0s): nf_conntrack's hash size is a module
// parameter shared with the host, which the lab must never change.
func KubeProxyConfig(clusterCIDR, mode, kubeconfig string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: %s
  qps: 0
clusterCIDR: %s
configSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 0s
  tcpEstablishedTimeout: 0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
metricsBindAddress: ""
mode: %s
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
`, kubeconfig, clusterCIDR, mode)
}

// KubeProxyKubeconfig returns the kubeconfig.conf of the kube-proxy ConfigMap: the API server
// at server, authenticated with the pod's service account token, as kubeadm writes it.
func KubeProxyKubeconfig(server string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: %[2]s/ca.crt
    server: %[1]s
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: %[2]s/token
`, server, ServiceAccountDir)
}

// KubeProxyManifests returns the kube-proxy add-on as kubeadm makes it, for the lab's default
// API server address: the kube-proxy ServiceAccount, its ClusterRoleBinding to
// system:node-proxier, the kube-proxy ConfigMap (config.conf with clusterCIDR and mode,
// kubeconfig.conf) and the kube-proxy DaemonSet (hostNetwork, system-node-critical).
func KubeProxyManifests(clusterCIDR, mode string) []runtime.Object {
	return KubeProxyManifestsFor("https://"+DefaultAdvertiseIP+":6443", clusterCIDR, mode)
}

// KubeProxyManifests returns the kube-proxy add-on for this control plane.
func (cp *ControlPlane) KubeProxyManifests(mode string) []runtime.Object {
	return KubeProxyManifestsFor(cp.Server, cp.Config.ClusterCIDR, mode)
}

// KubeProxyManifestsFor is KubeProxyManifests for the API server at server.
func KubeProxyManifestsFor(server, clusterCIDR, mode string) []runtime.Object {
	labels := map[string]string{"k8s-app": "kube-proxy"}
	privileged := true
	fileOrCreate := corev1.HostPathFileOrCreate
	return []runtime.Object{
		&corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: kubeSystem},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:node-proxier"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-proxier"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kube-proxy", Namespace: kubeSystem}},
		},
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: kubeSystem, Labels: map[string]string{"app": "kube-proxy"}},
			Data: map[string]string{
				"config.conf":     KubeProxyConfig(clusterCIDR, mode, KubeProxyConfigDir+"/kubeconfig.conf"),
				"kubeconfig.conf": KubeProxyKubeconfig(server),
			},
		},
		&appsv1.DaemonSet{
			TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
			ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: kubeSystem, Labels: labels},
			Spec: appsv1.DaemonSetSpec{
				Selector:       &metav1.LabelSelector{MatchLabels: labels},
				UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						Containers: []corev1.Container{{
							Name:  "kube-proxy",
							Image: KubeProxyImage,
							Command: []string{
								"/usr/local/bin/kube-proxy",
								"--config=" + KubeProxyConfigDir + "/config.conf",
								"--hostname-override=$(NODE_NAME)",
							},
							Env: []corev1.EnvVar{{
								Name:      "NODE_NAME",
								ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "spec.nodeName"}},
							}},
							SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
							VolumeMounts: []corev1.VolumeMount{
								{Name: "kube-proxy", MountPath: KubeProxyConfigDir},
								{Name: "xtables-lock", MountPath: "/run/xtables.lock"},
								{Name: "lib-modules", MountPath: "/lib/modules", ReadOnly: true},
							},
						}},
						HostNetwork:        true,
						NodeSelector:       map[string]string{"kubernetes.io/os": "linux"},
						PriorityClassName:  "system-node-critical",
						ServiceAccountName: "kube-proxy",
						Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
						Volumes: []corev1.Volume{
							{Name: "kube-proxy", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
								LocalObjectReference: corev1.LocalObjectReference{Name: "kube-proxy"}}}},
							{Name: "xtables-lock", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
								Path: "/run/xtables.lock", Type: &fileOrCreate}}},
							{Name: "lib-modules", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
								Path: "/lib/modules"}}},
						},
					},
				},
			},
		},
	}
}

// Corefile returns CoreDNS's configuration as kubeadm writes it, for clusterDomain, forwarding
// everything else to upstream (the lab's DNS server, never the host's /etc/resolv.conf).
func Corefile(clusterDomain, upstream string) string {
	return fmt.Sprintf(`.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes %[1]s in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . %[2]s {
       max_concurrent 1000
    }
    cache 30 {
       disable success %[1]s
       disable denial %[1]s
    }
    loop
    reload
    loadbalance
}
`, clusterDomain, upstream)
}

// CoreDNSManifests returns the CoreDNS add-on as kubeadm makes it: the coredns ServiceAccount,
// ClusterRole system:coredns and its binding, the coredns ConfigMap (Corefile forwarding to
// upstreamDNS), the coredns Deployment (2 replicas, system-cluster-critical) and the kube-dns
// Service at serviceIP (53/UDP, 53/TCP, 9153/TCP). Empty arguments take the lab defaults.
func CoreDNSManifests(serviceIP, upstreamDNS string) []runtime.Object {
	if serviceIP == "" {
		serviceIP = DefaultDNSServiceIP
	}
	if upstreamDNS == "" {
		upstreamDNS = DefaultUpstreamDNS
	}
	labels := map[string]string{"k8s-app": "kube-dns"}
	replicas := int32(2)
	maxUnavailable := intstr.FromInt32(1)
	noEscalation, readOnlyRoot := false, true
	return []runtime.Object{
		&corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: kubeSystem},
		},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:coredns"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "coredns", Namespace: kubeSystem}},
		},
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: kubeSystem},
			Data:       map[string]string{"Corefile": Corefile(DefaultClusterDomain, upstreamDNS)},
		},
		&appsv1.Deployment{
			TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: kubeSystem, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Strategy: appsv1.DeploymentStrategy{
					Type:          appsv1.RollingUpdateDeploymentStrategyType,
					RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &maxUnavailable},
				},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						PriorityClassName:  "system-cluster-critical",
						ServiceAccountName: "coredns",
						Tolerations: []corev1.Toleration{
							{Key: "CriticalAddonsOnly", Operator: corev1.TolerationOpExists},
							{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
						},
						NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
						Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
							PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
								Weight: 100,
								PodAffinityTerm: corev1.PodAffinityTerm{
									LabelSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
										Key: "k8s-app", Operator: metav1.LabelSelectorOpIn, Values: []string{"kube-dns"}}}},
									TopologyKey: "kubernetes.io/hostname",
								},
							}},
						}},
						Containers: []corev1.Container{{
							Name:  "coredns",
							Image: CoreDNSImage,
							Args:  []string{"-conf", "/etc/coredns/Corefile"},
							Ports: []corev1.ContainerPort{
								{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
								{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
								{Name: "metrics", ContainerPort: 9153, Protocol: corev1.ProtocolTCP},
							},
							VolumeMounts: []corev1.VolumeMount{{Name: "config-volume", MountPath: "/etc/coredns", ReadOnly: true}},
							LivenessProbe: &corev1.Probe{
								ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTP}},
								InitialDelaySeconds: 60, TimeoutSeconds: 5, SuccessThreshold: 1, FailureThreshold: 5,
							},
							ReadinessProbe: &corev1.Probe{
								ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181), Scheme: corev1.URISchemeHTTP}},
							},
							SecurityContext: &corev1.SecurityContext{
								AllowPrivilegeEscalation: &noEscalation,
								Capabilities:             &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}, Drop: []corev1.Capability{"ALL"}},
								ReadOnlyRootFilesystem:   &readOnlyRoot,
							},
						}},
						DNSPolicy: corev1.DNSDefault,
						Volumes: []corev1.Volume{{Name: "config-volume", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"},
							Items:                []corev1.KeyToPath{{Key: "Corefile", Path: "Corefile"}},
						}}}},
					},
				},
			},
		},
		&corev1.Service{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{
				Name: "kube-dns", Namespace: kubeSystem,
				Labels:      map[string]string{"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
				Annotations: map[string]string{"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
			},
			Spec: corev1.ServiceSpec{
				ClusterIP: serviceIP,
				Selector:  labels,
				Ports: []corev1.ServicePort{
					{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
					{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
					{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9153)},
				},
			},
		},
	}
}

// Apply creates each object, or updates it if it exists (for a Service, keeping its cluster
// IP and resource version). It handles the kinds the manifests of this package contain:
// ServiceAccount, ConfigMap, Service, ClusterRole, ClusterRoleBinding, DaemonSet, Deployment.
func Apply(ctx context.Context, cs kubernetes.Interface, objs []runtime.Object) error {
	for _, o := range objs {
		if err := applyOne(ctx, cs, o); err != nil {
			return err
		}
	}
	return nil
}

func applyOne(ctx context.Context, cs kubernetes.Interface, o runtime.Object) error {
	c, u := metav1.CreateOptions{}, metav1.UpdateOptions{}
	g := metav1.GetOptions{}
	var kind, name string
	var err error
	switch v := o.(type) {
	case *corev1.ServiceAccount:
		kind, name = "ServiceAccount", v.Namespace+"/"+v.Name
		api := cs.CoreV1().ServiceAccounts(v.Namespace)
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *corev1.ServiceAccount
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	case *corev1.ConfigMap:
		kind, name = "ConfigMap", v.Namespace+"/"+v.Name
		api := cs.CoreV1().ConfigMaps(v.Namespace)
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *corev1.ConfigMap
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	case *corev1.Service:
		kind, name = "Service", v.Namespace+"/"+v.Name
		api := cs.CoreV1().Services(v.Namespace)
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *corev1.Service
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				n.Spec.ClusterIP, n.Spec.ClusterIPs = cur.Spec.ClusterIP, cur.Spec.ClusterIPs
				_, err = api.Update(ctx, n, u)
			}
		}
	case *rbacv1.ClusterRole:
		kind, name = "ClusterRole", v.Name
		api := cs.RbacV1().ClusterRoles()
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *rbacv1.ClusterRole
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	case *rbacv1.ClusterRoleBinding:
		kind, name = "ClusterRoleBinding", v.Name
		api := cs.RbacV1().ClusterRoleBindings()
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *rbacv1.ClusterRoleBinding
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	case *appsv1.DaemonSet:
		kind, name = "DaemonSet", v.Namespace+"/"+v.Name
		api := cs.AppsV1().DaemonSets(v.Namespace)
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *appsv1.DaemonSet
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	case *appsv1.Deployment:
		kind, name = "Deployment", v.Namespace+"/"+v.Name
		api := cs.AppsV1().Deployments(v.Namespace)
		if _, err = api.Create(ctx, v, c); apierrors.IsAlreadyExists(err) {
			var cur *appsv1.Deployment
			if cur, err = api.Get(ctx, v.Name, g); err == nil {
				n := v.DeepCopy()
				n.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, n, u)
			}
		}
	default:
		return fmt.Errorf("apply: unsupported object type %T", o)
	}
	if err != nil {
		return fmt.Errorf("apply %s %s: %w", kind, strings.TrimPrefix(name, "/"), err)
	}
	return nil
}

// CorefileWithKubeconfig returns corefile with a `kubeconfig PATH CONTEXT` line added to its
// kubernetes block, so that CoreDNS run as a plain process (no service account volume)
// reaches the API server with that kubeconfig instead of the in-cluster configuration.
func CorefileWithKubeconfig(corefile, kubeconfig, context string) string {
	lines := strings.Split(corefile, "\n")
	out := make([]string, 0, len(lines)+1)
	for _, l := range lines {
		out = append(out, l)
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "kubernetes ") && strings.HasSuffix(t, "{") {
			indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
			out = append(out, indent+"   kubeconfig "+kubeconfig+" "+context)
		}
	}
	return strings.Join(out, "\n")
}
