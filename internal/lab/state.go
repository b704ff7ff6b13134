package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// State is what a lab records about itself in its state directory (lab.json), written before
// and after each step so that `lab down` finds everything even after a crash.
type State struct {
	Config     Config    `json:"config"`
	Created    time.Time `json:"created"`
	Phase      string    `json:"phase"` // building, running
	Namespaces []string  `json:"namespaces"`
	RootLink   string    `json:"rootLink"`
	Kubeconfig string    `json:"kubeconfig,omitempty"`
	// FlannelKubeconfig is the identity the nodes' flannel reconcilers watch Nodes with
	// (the Node authorizer lets a kubelet read only its own Node).
	FlannelKubeconfig string      `json:"flannelKubeconfig,omitempty"`
	Nodes             []NodeState `json:"nodes"`
	// Mountpoints are empty directories created on the host file system as bind-mount targets
	// for pod processes (each inside its own mount namespace); `lab down` removes them if empty.
	Mountpoints []string `json:"mountpoints,omitempty"`
}

// NodeState describes one lab node.
type NodeState struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR,omitempty"`
	// Kubeconfig is the kubelet's kubeconfig (system:node:NAME).
	Kubeconfig string `json:"kubeconfig,omitempty"`
}

// StateFile is the path of a lab's state file.
func StateFile(stateDir string) string { return filepath.Join(stateDir, "lab.json") }

// ProcDir is where proc state files of a lab's processes live.
func ProcDir(stateDir string) string { return filepath.Join(stateDir, "procs") }

// LogDir is where lab processes write their logs.
func LogDir(stateDir string) string { return filepath.Join(stateDir, "logs") }

// NodeDir is a node's state directory (kubelet state, IPAM, CRI socket, subnet.env).
func NodeDir(stateDir, node string) string { return filepath.Join(stateDir, "nodes", node) }

// MountpointRegistry lists (one a line, in creation order) the empty directories and files
// lab kubelets created on the host as bind-mount targets for pod processes (e.g.
// /var/lib/kube-proxy, /run/secrets/kubernetes.io/serviceaccount). It is machine-wide because
// the targets are shared by every lab on the machine: the last lab to go down removes them.
var MountpointRegistry = "/run/netdoctor-lab/mountpoints"

// RecordMountpoints appends created paths to MountpointRegistry.
func RecordMountpoints(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(MountpointRegistry), 0o755); err != nil {
		return fmt.Errorf("record mountpoints: %w", err)
	}
	f, err := os.OpenFile(MountpointRegistry, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("record mountpoints: %w", err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.WriteString(strings.Join(paths, "\n") + "\n"); err != nil {
		return fmt.Errorf("record mountpoints: %w", err)
	}
	return nil
}

// ErrNoLab is returned (wrapped) when a lab has no state file.
var ErrNoLab = errors.New("no such lab")

// LoadState reads a lab's state file.
func LoadState(stateDir string) (*State, error) {
	b, err := os.ReadFile(StateFile(stateDir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read lab state %s: %w", StateFile(stateDir), ErrNoLab)
		}
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse lab state %s: %w", StateFile(stateDir), err)
	}
	return &s, nil
}

// Save writes the state file atomically.
func (s *State) Save() error {
	dir := s.Config.StateDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create lab state directory: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := StateFile(dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, StateFile(dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Node returns the node state by name.
func (s *State) Node(name string) (*NodeState, error) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("lab %s has no node %q", s.Config.Name, name)
}

func (s *State) addNetns(name string) {
	for _, n := range s.Namespaces {
		if n == name {
			return
		}
	}
	s.Namespaces = append(s.Namespaces, name)
}
