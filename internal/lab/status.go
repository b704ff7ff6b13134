package lab

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
	// Memory sums the live processes' resident (RSS) and proportional (PSS: shared pages
	// divided among their users) set sizes, from /proc.
	Memory Memory `json:"memory"`
}

// Memory is the lab's memory use in KiB.
type Memory struct {
	Processes int   `json:"processes"`
	RSSKiB    int64 `json:"rssKiB"`
	PSSKiB    int64 `json:"pssKiB"`
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
	RSSKiB  int64  `json:"rssKiB,omitempty"`
	PSSKiB  int64  `json:"pssKiB,omitempty"`
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
		ps := ProcessStatus{Name: in.Name, PID: in.PID, Alive: aliveInfo(in), Netns: in.Netns, LogFile: in.LogFile}
		if ps.Alive {
			ps.RSSKiB = procKiB(filepath.Join("/proc", strconv.Itoa(in.PID), "status"), "VmRSS:")
			ps.PSSKiB = procKiB(filepath.Join("/proc", strconv.Itoa(in.PID), "smaps_rollup"), "Pss:")
			s.Memory.Processes++
			s.Memory.RSSKiB += ps.RSSKiB
			s.Memory.PSSKiB += ps.PSSKiB
		}
		s.Processes = append(s.Processes, ps)
	}
	sort.Slice(s.Processes, func(i, j int) bool { return s.Processes[i].Name < s.Processes[j].Name })
	return s, nil
}

// procKiB reads a "Key:   123 kB" line of a /proc file.
func procKiB(path, key string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key) {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}
