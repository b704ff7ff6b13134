package lab

import (
	"path/filepath"
	"sort"
)

// Status is what `lab status` reports (its JSON form is a public interface: kubeconfig,
// nodes with name and namespace, processes with their log files).
type Status struct {
	Name        string          `json:"name"`
	Phase       string          `json:"phase"`
	StateDir    string          `json:"stateDir"`
	Kubeconfig  string          `json:"kubeconfig"`
	ProxyMode   string          `json:"proxyMode"`
	ClusterCIDR string          `json:"clusterCIDR"`
	ServiceCIDR string          `json:"serviceCIDR"`
	ClusterDNS  string          `json:"clusterDNS"`
	RootLink    string          `json:"rootLink"`
	RootIP      string          `json:"rootIP"`
	APIServer   string          `json:"apiServer"`
	Nodes       []NodeStatus    `json:"nodes"`
	Namespaces  []string        `json:"namespaces"`
	Processes   []ProcessStatus `json:"processes"`
}

// NodeStatus is one node of Status.
type NodeStatus struct {
	Name        string `json:"name"`
	Netns       string `json:"netns"`
	IP          string `json:"ip"`
	PodCIDR     string `json:"podCIDR"`
	CRIEndpoint string `json:"criEndpoint"`
}

// ProcessStatus is one lab process.
type ProcessStatus struct {
	Name    string `json:"name"`
	PID     int    `json:"pid"`
	Alive   bool   `json:"alive"`
	Netns   string `json:"netns,omitempty"`
	LogFile string `json:"logFile"`
}

// GetStatus reads a lab's status from its state directory and the live system.
func GetStatus(name, stateRoot string) (*Status, error) {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot()
	}
	dir := filepath.Join(stateRoot, name)
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	c := st.Config
	s := &Status{
		Name: c.Name, Phase: st.Phase, StateDir: dir, Kubeconfig: st.Kubeconfig, ProxyMode: c.ProxyMode,
		ClusterCIDR: c.ClusterCIDR.String(), ServiceCIDR: c.ServiceCIDR.String(), ClusterDNS: c.ClusterDNSIP().String(),
		RootLink: st.RootLink, RootIP: c.RootIP().String(), APIServer: "https://" + c.CPIP().String() + ":6443",
		Nodes: []NodeStatus{}, Processes: []ProcessStatus{},
	}
	for _, n := range st.Nodes {
		s.Nodes = append(s.Nodes, NodeStatus{Name: n.Name, Netns: n.Netns, IP: n.IP, PodCIDR: n.PodCIDR,
			CRIEndpoint: "unix://" + filepath.Join(NodeDir(dir, n.Name), "cri.sock")})
	}
	s.Namespaces, _ = ListOwnedNetns(name)
	for _, in := range AllProcs(dir) {
		s.Processes = append(s.Processes, ProcessStatus{Name: in.Name, PID: in.PID, Alive: aliveInfo(in), Netns: in.Netns, LogFile: in.LogFile})
	}
	sort.Slice(s.Processes, func(i, j int) bool { return s.Processes[i].Name < s.Processes[j].Name })
	return s, nil
}
