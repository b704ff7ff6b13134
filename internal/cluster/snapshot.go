package cluster

import "time"

// SnapshotVersion is the version of the Snapshot layout.
const SnapshotVersion = "netdoctor.cluster/v1"

// Snapshot is what netdoctor knows about a cluster from its API: the objects
// the cluster rules need, reduced to the fields they read. Sections that could
// not be read are listed in Errors (key = section, e.g. "configmap
// kube-system/kube-proxy") and left empty; rules needing them report skipped.
type Snapshot struct {
	Version       string    `json:"version"`
	CollectedAt   time.Time `json:"collectedAt"`
	ServerVersion string    `json:"serverVersion,omitempty"`

	Nodes          []Node          `json:"nodes"`
	Pods           []Pod           `json:"pods"` // kube-system pods, netdoctor pods and pods selected by a Service
	Services       []Service       `json:"services"`
	EndpointSlices []EndpointSlice `json:"endpointSlices"`
	DaemonSets     []Workload      `json:"daemonSets"`  // kube-system and netdoctor DaemonSets
	Deployments    []Workload      `json:"deployments"` // kube-system Deployments
	// ConfigMaps holds the data of the ConfigMaps the rules read, keyed
	// "namespace/name" (kube-system/kube-proxy, kube-system/coredns).
	ConfigMaps map[string]map[string]string `json:"configMaps,omitempty"`
	// PriorityClasses are the names of the cluster's PriorityClasses.
	PriorityClasses []string `json:"priorityClasses,omitempty"`
	// ServiceCIDRs are the Service IP ranges: from networking.k8s.io/v1
	// ServiceCIDR objects when the API has them, else derived from the
	// kubernetes Service's ClusterIP (see ServiceCIDRSource).
	ServiceCIDRs      []string `json:"serviceCIDRs,omitempty"`
	ServiceCIDRSource string   `json:"serviceCIDRSource,omitempty"`

	Errors map[string]string `json:"errors,omitempty"`
}

// Node is a Kubernetes Node.
type Node struct {
	Name       string   `json:"name"`
	InternalIP string   `json:"internalIP,omitempty"`
	PodCIDRs   []string `json:"podCIDRs,omitempty"` // spec.podCIDRs (spec.podCIDR first)
	// Annotations keeps the networking annotations only (flannel.alpha.coreos.com/*, and
	// any key containing "network" or "cni").
	Annotations   map[string]string `json:"annotations,omitempty"`
	Conditions    []Condition       `json:"conditions,omitempty"`
	Unschedulable bool              `json:"unschedulable,omitempty"`
}

// Ready is the status of the node's Ready condition ("True", "False",
// "Unknown", or "" when absent).
func (n Node) Ready() string {
	for _, c := range n.Conditions {
		if c.Type == "Ready" {
			return c.Status
		}
	}
	return ""
}

// Condition is a node condition.
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Pod is a Pod with the fields the rules read.
type Pod struct {
	Namespace         string            `json:"namespace"`
	Name              string            `json:"name"`
	Node              string            `json:"node,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Phase             string            `json:"phase"`            // Pending, Running, Succeeded, Failed, Unknown
	Reason            string            `json:"reason,omitempty"` // status.reason, e.g. Evicted
	Ready             bool              `json:"ready"`
	PodIPs            []string          `json:"podIPs,omitempty"`
	HostNetwork       bool              `json:"hostNetwork,omitempty"`
	PriorityClassName string            `json:"priorityClassName,omitempty"`
	OwnerKind         string            `json:"ownerKind,omitempty"`
	OwnerName         string            `json:"ownerName,omitempty"`
	Containers        []Container       `json:"containers,omitempty"`
	// Waiting lists "container: reason" of containers not running
	// (CrashLoopBackOff, ImagePullBackOff...).
	Waiting []string `json:"waiting,omitempty"`
	// Deleting is true when the pod has a deletion timestamp.
	Deleting bool `json:"deleting,omitempty"`
	// UID is the pod's UID (to find its processes on the node).
	UID string `json:"uid,omitempty"`
	// DNSPolicy is spec.dnsPolicy ("" = ClusterFirst); NDots is the ndots
	// option of spec.dnsConfig ("" = not set, kubelet writes 5).
	DNSPolicy string `json:"dnsPolicy,omitempty"`
	NDots     string `json:"ndots,omitempty"`
}

// Container is a container spec.
type Container struct {
	Name    string          `json:"name"`
	Image   string          `json:"image,omitempty"`
	Command []string        `json:"command,omitempty"`
	Args    []string        `json:"args,omitempty"`
	Ports   []ContainerPort `json:"ports,omitempty"`
}

// ContainerPort is a declared container port.
type ContainerPort struct {
	Name     string `json:"name,omitempty"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
}

// Service is a Service.
type Service struct {
	Namespace    string            `json:"namespace"`
	Name         string            `json:"name"`
	Type         string            `json:"type"` // ClusterIP, NodePort, LoadBalancer, ExternalName
	ClusterIPs   []string          `json:"clusterIPs,omitempty"`
	Selector     map[string]string `json:"selector,omitempty"`
	Ports        []ServicePort     `json:"ports,omitempty"`
	ExternalName string            `json:"externalName,omitempty"`
	// Created is the Service's creation time: kube-proxy may not have synced
	// a Service this new.
	Created time.Time `json:"created,omitempty"`
}

// Key is "namespace/name".
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// Headless is true for a Service without a cluster IP.
func (s Service) Headless() bool {
	return len(s.ClusterIPs) == 0 || s.ClusterIPs[0] == "None" || s.ClusterIPs[0] == ""
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Protocol   string `json:"protocol"`
	Port       int32  `json:"port"`
	TargetPort string `json:"targetPort"` // number or port name, as written
	NodePort   int32  `json:"nodePort,omitempty"`
}

// EndpointSlice is a discovery.k8s.io/v1 EndpointSlice.
type EndpointSlice struct {
	Namespace   string         `json:"namespace"`
	Name        string         `json:"name"`
	Service     string         `json:"service"` // kubernetes.io/service-name label
	AddressType string         `json:"addressType"`
	Ports       []EndpointPort `json:"ports,omitempty"`
	Endpoints   []Endpoint     `json:"endpoints,omitempty"`
	// Created is the slice's creation time.
	Created time.Time `json:"created,omitempty"`
}

// EndpointPort is a port of an EndpointSlice.
type EndpointPort struct {
	Name     string `json:"name,omitempty"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
}

// Endpoint is one endpoint of an EndpointSlice. Ready, Serving and
// Terminating follow the API's conditions (a nil ready counts as ready).
type Endpoint struct {
	Addresses   []string `json:"addresses"`
	Ready       bool     `json:"ready"`
	Serving     bool     `json:"serving"`
	Terminating bool     `json:"terminating,omitempty"`
	Node        string   `json:"node,omitempty"`
	Pod         string   `json:"pod,omitempty"` // targetRef namespace/name when a Pod
}

// Workload is a DaemonSet or Deployment.
type Workload struct {
	Kind              string            `json:"kind"` // DaemonSet or Deployment
	Namespace         string            `json:"namespace"`
	Name              string            `json:"name"`
	Labels            map[string]string `json:"labels,omitempty"`
	Selector          map[string]string `json:"selector,omitempty"` // matchLabels
	PriorityClassName string            `json:"priorityClassName,omitempty"`
	Containers        []Container       `json:"containers,omitempty"`
	HostNetwork       bool              `json:"hostNetwork,omitempty"`
	Desired           int32             `json:"desired"`
	Ready             int32             `json:"ready"`
	Available         int32             `json:"available"`
}

// Key is "namespace/name".
func (w Workload) Key() string { return w.Namespace + "/" + w.Name }
