package install

import (
	"bytes"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/netdoctor/netdoctor/internal/cluster"
)

// Names of the installed objects.
const (
	Namespace   = cluster.AgentNamespace
	AgentName   = "netdoctor-agent"
	TargetName  = cluster.TargetName
	DefaultImg  = "netdoctor"
	LabelPartOf = "app.kubernetes.io/part-of"
	// LabelTemporary marks objects a check deployed for itself and removes afterwards.
	LabelTemporary = "netdoctor.io/temporary"
	// LabelRequest marks a request ConfigMap; it is agent.LabelRequest
	// (install cannot import agent, whose tests import install; a test
	// asserts the two are equal).
	LabelRequest = "netdoctor.io/request"
	// PolicyName names the ValidatingAdmissionPolicy, and its binding, that
	// keep the agent's ServiceAccount from writing requests.
	PolicyName = "netdoctor-agent-no-requests"
)

// AgentUser is the username the agent's ServiceAccount authenticates as.
const AgentUser = "system:serviceaccount:" + Namespace + ":" + AgentName

// PolicyMessage is the start of the message the API server gives when the
// admission policy refuses the agent a request.
const PolicyMessage = "netdoctor: the agent's ServiceAccount may write results, never requests"

// Options tune the manifests.
type Options struct {
	// Image is the netdoctor image (default "netdoctor", the lab's image name).
	Image string
	// PullPolicy is the image pull policy (default IfNotPresent).
	PullPolicy corev1.PullPolicy
	// Temporary labels every object netdoctor.io/temporary=true (a check's
	// own short-lived agent).
	Temporary bool
}

func (o Options) withDefaults() Options {
	if o.Image == "" {
		o.Image = DefaultImg
	}
	if o.PullPolicy == "" {
		o.PullPolicy = corev1.PullIfNotPresent
	}
	return o
}

func labels(o Options, name string) map[string]string {
	l := map[string]string{cluster.LabelAppName: name, LabelPartOf: "netdoctor"}
	if o.Temporary {
		l[LabelTemporary] = "true"
	}
	return l
}

// Objects returns the objects `netdoctor install` creates, in apply order.
func Objects(o Options) []runtime.Object {
	o = o.withDefaults()
	agentLabels := labels(o, AgentName)
	sel := map[string]string{cluster.LabelAppName: AgentName}
	targetSel := map[string]string{cluster.LabelAppName: TargetName}
	tr, fa := true, false
	root := int64(0)
	nobody := int64(65534)
	grace := int64(5)
	hostPathDir := corev1.HostPathDirectoryOrCreate
	objs := []runtime.Object{
		&corev1.Namespace{TypeMeta: tm("v1", "Namespace"), ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: labels(o, "netdoctor")}},
		// Before the ServiceAccount and its RBAC: the agent may create and
		// update ConfigMaps here (its results), and a request ConfigMap asks
		// every agent to run tools, exec as root included. Without this
		// policy one node's stolen agent token would command every node.
		noRequestsPolicy(o),
		noRequestsBinding(o),
		&corev1.ServiceAccount{TypeMeta: tm("v1", "ServiceAccount"), ObjectMeta: meta(AgentName, agentLabels), AutomountServiceAccountToken: &tr},
		// Cluster-wide, read only: what the agent needs to know which
		// Services its node must serve and where the probe targets are.
		&rbacv1.ClusterRole{TypeMeta: tm("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: metav1.ObjectMeta{Name: AgentName, Labels: agentLabels},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"nodes", "pods", "services", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			}},
		&rbacv1.ClusterRoleBinding{TypeMeta: tm("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), ObjectMeta: metav1.ObjectMeta{Name: AgentName, Labels: agentLabels},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: AgentName},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: AgentName, Namespace: Namespace}}},
		// In its own namespace only: read requests, write results. No delete:
		// the CLI that asked removes requests and results.
		&rbacv1.Role{TypeMeta: tm("rbac.authorization.k8s.io/v1", "Role"), ObjectMeta: meta(AgentName, agentLabels),
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}}}},
		&rbacv1.RoleBinding{TypeMeta: tm("rbac.authorization.k8s.io/v1", "RoleBinding"), ObjectMeta: meta(AgentName, agentLabels),
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: AgentName},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: AgentName, Namespace: Namespace}}},
		&appsv1.DaemonSet{TypeMeta: tm("apps/v1", "DaemonSet"), ObjectMeta: meta(AgentName, agentLabels),
			Spec: appsv1.DaemonSetSpec{
				Selector:       &metav1.LabelSelector{MatchLabels: sel},
				UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: agentLabels},
					Spec: corev1.PodSpec{
						ServiceAccountName: AgentName,
						// The node's own network namespace: its routes,
						// netfilter rules, sysctls and tunnel devices.
						HostNetwork: true,
						// The node's processes: kube-proxy's flags, and the
						// pods' network namespaces through /proc/PID/ns/net.
						HostPID:                       true,
						DNSPolicy:                     corev1.DNSClusterFirstWithHostNet,
						PriorityClassName:             "system-node-critical",
						Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
						TerminationGracePeriodSeconds: &grace,
						Containers: []corev1.Container{{
							Name:            "agent",
							Image:           o.Image,
							ImagePullPolicy: o.PullPolicy,
							Command:         []string{"netdoctor"},
							Args:            []string{"agent"},
							Env: []corev1.EnvVar{
								{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
								{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							},
							Resources: corev1.ResourceRequirements{
								Requests: corev1.ResourceList{corev1.ResourceCPU: mustQ("10m"), corev1.ResourceMemory: mustQ("32Mi")},
								Limits:   corev1.ResourceList{corev1.ResourceMemory: mustQ("128Mi")},
							},
							SecurityContext: &corev1.SecurityContext{
								Privileged:               &fa,
								AllowPrivilegeEscalation: &fa,
								ReadOnlyRootFilesystem:   &tr,
								RunAsUser:                &root,
								Capabilities: &corev1.Capabilities{
									Drop: []corev1.Capability{"ALL"},
									Add: []corev1.Capability{
										"NET_ADMIN",  // read netfilter (iptables-save, nft list) and netlink state
										"NET_RAW",    // ICMP and DF probes on raw sockets
										"SYS_ADMIN",  // setns() into pod network namespaces
										"SYS_PTRACE", // read other processes' /proc/PID/ns/net and cmdline
									},
								},
							},
							VolumeMounts: []corev1.VolumeMount{
								{Name: "run", MountPath: "/run", ReadOnly: true},
							},
						}},
						Volumes: []corev1.Volume{
							// CRI sockets (containerd, CRI-O), /run/netns, /run/flannel/subnet.env.
							{Name: "run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run", Type: &hostPathDir}}},
						},
					},
				},
			}},
		// A pod in the pod network on every node: the matrix's probe target,
		// and a pod network namespace each agent probes from. It only
		// accepts TCP connections and closes them; it serves no data.
		&appsv1.DaemonSet{TypeMeta: tm("apps/v1", "DaemonSet"), ObjectMeta: meta(TargetName, labels(o, TargetName)),
			Spec: appsv1.DaemonSetSpec{
				Selector: &metav1.LabelSelector{MatchLabels: targetSel},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels(o, TargetName)},
					Spec: corev1.PodSpec{
						AutomountServiceAccountToken:  &fa,
						PriorityClassName:             "system-node-critical",
						Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
						TerminationGracePeriodSeconds: &grace,
						Containers: []corev1.Container{{
							Name:            "target",
							Image:           o.Image,
							ImagePullPolicy: o.PullPolicy,
							Command:         []string{"netdoctor"},
							Args:            []string{"agent", "target", fmt.Sprintf("--listen=:%d", cluster.TargetPort)},
							Ports:           []corev1.ContainerPort{{Name: "probe", ContainerPort: cluster.TargetPort, Protocol: corev1.ProtocolTCP}},
							Resources: corev1.ResourceRequirements{
								Requests: corev1.ResourceList{corev1.ResourceCPU: mustQ("1m"), corev1.ResourceMemory: mustQ("8Mi")},
								Limits:   corev1.ResourceList{corev1.ResourceMemory: mustQ("32Mi")},
							},
							SecurityContext: &corev1.SecurityContext{
								Privileged:               &fa,
								AllowPrivilegeEscalation: &fa,
								ReadOnlyRootFilesystem:   &tr,
								RunAsUser:                &nobody,
								RunAsNonRoot:             &tr,
								Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							},
						}},
					},
				},
			}},
		&corev1.Service{TypeMeta: tm("v1", "Service"), ObjectMeta: meta(TargetName, labels(o, TargetName)),
			Spec: corev1.ServiceSpec{Selector: targetSel, Ports: []corev1.ServicePort{{Name: "probe", Port: 80, TargetPort: intstr.FromString("probe"), Protocol: corev1.ProtocolTCP}}}},
	}
	return objs
}

// noRequestsPolicy denies the agent's ServiceAccount every CREATE and
// UPDATE (patches included) of a ConfigMap in the netdoctor namespace that
// is a request or would become one: labelled netdoctor.io/request before or
// after. It matches only that user (matchConditions), so it costs nothing
// for anyone else, and fails closed.
func noRequestsPolicy(o Options) *admissionv1.ValidatingAdmissionPolicy {
	fail := admissionv1.Fail
	forbidden := metav1.StatusReasonForbidden
	hasLabel := func(obj string) string {
		return fmt.Sprintf("(%[1]s != null && has(%[1]s.metadata.labels) && %[2]q in %[1]s.metadata.labels)", obj, LabelRequest)
	}
	return &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   tm("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
		ObjectMeta: metav1.ObjectMeta{Name: PolicyName, Labels: labels(o, AgentName)},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: Namespace}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
				}}},
			},
			MatchConditions: []admissionv1.MatchCondition{{
				Name:       "agent-serviceaccount",
				Expression: fmt.Sprintf("request.userInfo.username == %q", AgentUser),
			}},
			Validations: []admissionv1.Validation{{
				Reason:     &forbidden,
				Expression: "!" + hasLabel("object") + " && !" + hasLabel("oldObject"),
				Message: PolicyMessage + " (ConfigMaps labelled " + LabelRequest + "): a request makes every agent run tools, " +
					"exec as root included; only the CLI's user may create or change one",
			}},
		},
	}
}

// noRequestsBinding puts noRequestsPolicy in force (deny, cluster-wide; the
// policy's own constraints narrow it to the netdoctor namespace).
func noRequestsBinding(o Options) *admissionv1.ValidatingAdmissionPolicyBinding {
	return &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   tm("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
		ObjectMeta: metav1.ObjectMeta{Name: PolicyName, Labels: labels(o, AgentName)},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        PolicyName,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
}

func tm(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

func meta(name string, l map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: l}
}

// YAML renders the objects as one multi-document YAML file, the content of
// deploy/netdoctor.yaml for the default options.
func YAML(o Options) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# netdoctor agent: generated by `go test ./internal/install -update` from internal/install/manifests.go.\n")
	b.WriteString("# Apply with: kubectl apply -f deploy/netdoctor.yaml (or `netdoctor install`).\n")
	for i, obj := range Objects(o) {
		y, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("render manifest %d: %w", i, err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}
