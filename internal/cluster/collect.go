package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// Namespaces read in full by Collect.
const (
	KubeSystem = "kube-system"
	// AgentNamespace is where netdoctor's agent, requests and results live.
	AgentNamespace = "netdoctor"
)

// listPage is the page size of list calls: bounded memory on big clusters.
const listPage = 500

// Collect reads the cluster facts through the API. A section that cannot be
// read is recorded in Snapshot.Errors and collection goes on; the error
// returned is non-nil only when not even the nodes could be listed (the API
// is unreachable or refuses us), which means the check cannot run.
func Collect(ctx context.Context, cs kubernetes.Interface) (*Snapshot, error) {
	s := &Snapshot{Version: SnapshotVersion, CollectedAt: time.Now().UTC(), Errors: map[string]string{}}
	if v, err := cs.Discovery().ServerVersion(); err == nil {
		s.ServerVersion = v.GitVersion
	}
	nodes, err := listNodes(ctx, cs)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	s.Nodes = nodes

	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		s.Errors["services"] = err.Error()
	} else {
		for i := range svcs.Items {
			s.Services = append(s.Services, convertService(&svcs.Items[i]))
		}
	}
	if err := collectSlices(ctx, cs, s); err != nil {
		s.Errors["endpointslices"] = err.Error()
	}
	if err := collectPods(ctx, cs, s); err != nil {
		s.Errors["pods"] = err.Error()
	}
	for _, ns := range []string{KubeSystem, AgentNamespace} {
		dss, err := cs.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			s.Errors["daemonsets "+ns] = err.Error()
			continue
		}
		for i := range dss.Items {
			d := &dss.Items[i]
			w := Workload{Kind: "DaemonSet", Namespace: d.Namespace, Name: d.Name, Labels: d.Labels,
				PriorityClassName: d.Spec.Template.Spec.PriorityClassName,
				Containers:        convertContainers(d.Spec.Template.Spec.Containers),
				HostNetwork:       d.Spec.Template.Spec.HostNetwork,
				Desired:           d.Status.DesiredNumberScheduled, Ready: d.Status.NumberReady, Available: d.Status.NumberAvailable}
			if d.Spec.Selector != nil {
				w.Selector = d.Spec.Selector.MatchLabels
			}
			s.DaemonSets = append(s.DaemonSets, w)
		}
	}
	deps, err := cs.AppsV1().Deployments(KubeSystem).List(ctx, metav1.ListOptions{})
	if err != nil {
		s.Errors["deployments kube-system"] = err.Error()
	} else {
		for i := range deps.Items {
			d := &deps.Items[i]
			var desired int32 = 1
			if d.Spec.Replicas != nil {
				desired = *d.Spec.Replicas
			}
			w := Workload{Kind: "Deployment", Namespace: d.Namespace, Name: d.Name, Labels: d.Labels,
				PriorityClassName: d.Spec.Template.Spec.PriorityClassName,
				Containers:        convertContainers(d.Spec.Template.Spec.Containers),
				Desired:           desired, Ready: d.Status.ReadyReplicas, Available: d.Status.AvailableReplicas}
			if d.Spec.Selector != nil {
				w.Selector = d.Spec.Selector.MatchLabels
			}
			s.Deployments = append(s.Deployments, w)
		}
	}
	s.ConfigMaps = map[string]map[string]string{}
	for _, name := range []string{"kube-proxy", "coredns"} {
		cm, err := cs.CoreV1().ConfigMaps(KubeSystem).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // absent is a fact, not an error: rules say what they lack
		}
		if err != nil {
			s.Errors["configmap "+KubeSystem+"/"+name] = err.Error()
			continue
		}
		s.ConfigMaps[KubeSystem+"/"+name] = cm.Data
	}
	pcs, err := cs.SchedulingV1().PriorityClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		s.Errors["priorityclasses"] = err.Error()
	} else {
		for _, pc := range pcs.Items {
			s.PriorityClasses = append(s.PriorityClasses, pc.Name)
		}
		sort.Strings(s.PriorityClasses)
	}
	collectServiceCIDRs(ctx, cs, s)
	if len(s.Errors) == 0 {
		s.Errors = nil
	}
	return s, nil
}

func listNodes(ctx context.Context, cs kubernetes.Interface) ([]Node, error) {
	var out []Node
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := cs.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			out = append(out, convertNode(&l.Items[i]))
		}
		if l.Continue == "" {
			return out, nil
		}
		opts.Continue = l.Continue
	}
}

func convertNode(n *corev1.Node) Node {
	out := Node{Name: n.Name, Unschedulable: n.Spec.Unschedulable}
	if len(n.Spec.PodCIDRs) > 0 {
		out.PodCIDRs = append(out.PodCIDRs, n.Spec.PodCIDRs...)
	} else if n.Spec.PodCIDR != "" {
		out.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && out.InternalIP == "" {
			out.InternalIP = a.Address
		}
	}
	for k, v := range n.Annotations {
		if strings.Contains(k, "flannel") || strings.Contains(k, "network") || strings.Contains(k, "cni") {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	for _, c := range n.Status.Conditions {
		out.Conditions = append(out.Conditions, Condition{Type: string(c.Type), Status: string(c.Status), Reason: c.Reason, Message: c.Message})
	}
	return out
}

func convertService(s *corev1.Service) Service {
	out := Service{Namespace: s.Namespace, Name: s.Name, Type: string(s.Spec.Type), Selector: s.Spec.Selector, ExternalName: s.Spec.ExternalName,
		Created: s.CreationTimestamp.UTC()}
	if len(s.Spec.ClusterIPs) > 0 {
		out.ClusterIPs = append(out.ClusterIPs, s.Spec.ClusterIPs...)
	} else if s.Spec.ClusterIP != "" {
		out.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, ServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port, TargetPort: p.TargetPort.String(), NodePort: p.NodePort})
	}
	return out
}

func collectSlices(ctx context.Context, cs kubernetes.Interface, s *Snapshot) error {
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := cs.DiscoveryV1().EndpointSlices("").List(ctx, opts)
		if err != nil {
			return err
		}
		for i := range l.Items {
			s.EndpointSlices = append(s.EndpointSlices, convertSlice(&l.Items[i]))
		}
		if l.Continue == "" {
			return nil
		}
		opts.Continue = l.Continue
	}
}

func convertSlice(e *discoveryv1.EndpointSlice) EndpointSlice {
	out := EndpointSlice{Namespace: e.Namespace, Name: e.Name, Service: e.Labels[discoveryv1.LabelServiceName], AddressType: string(e.AddressType),
		Created: e.CreationTimestamp.UTC()}
	for _, p := range e.Ports {
		ep := EndpointPort{}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Port != nil {
			ep.Port = *p.Port
		}
		if p.Protocol != nil {
			ep.Protocol = string(*p.Protocol)
		}
		out.Ports = append(out.Ports, ep)
	}
	for _, ep := range e.Endpoints {
		o := Endpoint{Addresses: ep.Addresses, Ready: true, Serving: true}
		if ep.Conditions.Ready != nil {
			o.Ready = *ep.Conditions.Ready
		}
		if ep.Conditions.Serving != nil {
			o.Serving = *ep.Conditions.Serving
		} else {
			o.Serving = o.Ready
		}
		if ep.Conditions.Terminating != nil {
			o.Terminating = *ep.Conditions.Terminating
		}
		if ep.NodeName != nil {
			o.Node = *ep.NodeName
		}
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			o.Pod = ep.TargetRef.Namespace + "/" + ep.TargetRef.Name
		}
		out.Endpoints = append(out.Endpoints, o)
	}
	return out
}

// collectPods keeps kube-system and netdoctor pods and the pods a Service
// selects, listing every namespace page by page.
func collectPods(ctx context.Context, cs kubernetes.Interface, s *Snapshot) error {
	selectors := map[string][]labels.Selector{}
	for _, svc := range s.Services {
		if len(svc.Selector) > 0 {
			selectors[svc.Namespace] = append(selectors[svc.Namespace], labels.SelectorFromSet(svc.Selector))
		}
	}
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := cs.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return err
		}
		for i := range l.Items {
			p := &l.Items[i]
			keep := p.Namespace == KubeSystem || p.Namespace == AgentNamespace || declaresTCPPort(p)
			for _, sel := range selectors[p.Namespace] {
				if keep {
					break
				}
				keep = sel.Matches(labels.Set(p.Labels))
			}
			if keep {
				s.Pods = append(s.Pods, convertPod(p))
			}
		}
		if l.Continue == "" {
			return nil
		}
		opts.Continue = l.Continue
	}
}

func convertPod(p *corev1.Pod) Pod {
	out := Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Labels: p.Labels,
		Phase: string(p.Status.Phase), Reason: p.Status.Reason, HostNetwork: p.Spec.HostNetwork,
		PriorityClassName: p.Spec.PriorityClassName, Containers: convertContainers(p.Spec.Containers),
		Deleting: p.DeletionTimestamp != nil, UID: string(p.UID), DNSPolicy: string(p.Spec.DNSPolicy)}
	if p.Spec.DNSConfig != nil {
		for _, o := range p.Spec.DNSConfig.Options {
			if o.Name == "ndots" && o.Value != nil {
				out.NDots = *o.Value
			}
		}
	}
	for _, ip := range p.Status.PodIPs {
		out.PodIPs = append(out.PodIPs, ip.IP)
	}
	if len(out.PodIPs) == 0 && p.Status.PodIP != "" {
		out.PodIPs = []string{p.Status.PodIP}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			out.OwnerKind, out.OwnerName = o.Kind, o.Name
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Waiting != nil && cs.State.Waiting.Reason != "" {
			out.Waiting = append(out.Waiting, cs.Name+": "+cs.State.Waiting.Reason)
		}
	}
	return out
}

func convertContainers(cs []corev1.Container) []Container {
	out := make([]Container, 0, len(cs))
	for _, c := range cs {
		oc := Container{Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args}
		for _, p := range c.Ports {
			oc.Ports = append(oc.Ports, ContainerPort{Name: p.Name, Port: p.ContainerPort, Protocol: string(p.Protocol)})
		}
		out = append(out, oc)
	}
	return out
}

// collectServiceCIDRs reads networking.k8s.io/v1 ServiceCIDRs; when the API
// has none (older clusters) it falls back to the kubernetes Service's
// ClusterIP, which is the first address of the primary range (its prefix is
// not known then: recorded as a /32 with the source saying so).
func collectServiceCIDRs(ctx context.Context, cs kubernetes.Interface, s *Snapshot) {
	l, err := cs.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, sc := range l.Items {
			s.ServiceCIDRs = append(s.ServiceCIDRs, sc.Spec.CIDRs...)
		}
		if len(s.ServiceCIDRs) > 0 {
			s.ServiceCIDRSource = "networking.k8s.io/v1 ServiceCIDR"
			return
		}
	}
	for _, svc := range s.Services {
		if svc.Namespace == "default" && svc.Name == "kubernetes" && !svc.Headless() {
			ip := svc.ClusterIPs[0]
			if strings.Contains(ip, ":") {
				s.ServiceCIDRs = []string{ip + "/128"}
			} else {
				s.ServiceCIDRs = []string{ip + "/32"}
			}
			s.ServiceCIDRSource = "default/kubernetes ClusterIP (first address of the range; prefix unknown)"
			return
		}
	}
	if err != nil {
		s.Errors["servicecidrs"] = err.Error()
	}
}

// FromLists converts listed Services and EndpointSlices (what an agent
// reads) into a Snapshot holding just those.
func FromLists(svcs *corev1.ServiceList, slices *discoveryv1.EndpointSliceList) *Snapshot {
	s := &Snapshot{Version: SnapshotVersion}
	for i := range svcs.Items {
		s.Services = append(s.Services, convertService(&svcs.Items[i]))
	}
	for i := range slices.Items {
		s.EndpointSlices = append(s.EndpointSlices, convertSlice(&slices.Items[i]))
	}
	return s
}

// declaresTCPPort is true for a pod-network pod that declares a TCP
// container port: what endpoint-not-listening checks for a listener.
func declaresTCPPort(p *corev1.Pod) bool {
	if p.Spec.HostNetwork {
		return false
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP {
				return true
			}
		}
	}
	return false
}
