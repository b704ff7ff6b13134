// Package cri finds a pod's network namespace on this node through the
// container runtime's CRI API (containerd, CRI-O): ListPodSandbox by
// namespace and name, PodSandboxStatus with verbose info, and the netns path
// (or the sandbox PID) from that info. When the runtime cannot say, it falls
// back to scanning /proc for a process whose cgroup names the pod's UID.
// This automates the "pod -> container -> PID -> nsenter" walk of seed 002.
package cri

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultEndpoints are tried in order when no endpoint is given.
var DefaultEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///run/crio/crio.sock",
}

// ErrPodNotFound is returned (wrapped) when no ready sandbox matches.
var ErrPodNotFound = errors.New("pod not found")

// ErrNoRuntime is returned (wrapped) when no CRI endpoint answers.
var ErrNoRuntime = errors.New("no container runtime endpoint answered")

// Pod is what the runtime tells about one pod sandbox.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	SandboxID string `json:"sandboxID"`
	IP        string `json:"ip,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Netns     string `json:"netns"`  // path of the network namespace
	Source    string `json:"source"` // how Netns was found: runtimeSpec, pid or proc-cgroup
	Endpoint  string `json:"endpoint"`
}

// Client talks to one CRI endpoint.
type Client struct {
	endpoint string
	conn     *grpc.ClientConn
	rt       runtimeapi.RuntimeServiceClient
	// ProcRoot is where /proc is mounted (for the PID and cgroup fallback).
	ProcRoot string
}

// normalize turns a socket path into a grpc target.
func normalize(endpoint string) (target, path string) {
	path = strings.TrimPrefix(endpoint, "unix://")
	return "unix://" + path, path
}

// Dial connects to endpoint (a unix socket path or unix:// URL) and checks
// that it speaks CRI v1 (Version call, bounded by ctx).
func Dial(ctx context.Context, endpoint string) (*Client, error) {
	target, path := normalize(endpoint)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("CRI endpoint %s: %w", path, err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to CRI endpoint %s: %w", path, err)
	}
	c := &Client{endpoint: path, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), ProcRoot: "/proc"}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.rt.Version(vctx, &runtimeapi.VersionRequest{}); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("CRI endpoint %s does not answer Version: %w", path, err)
	}
	return c, nil
}

// DialAny dials endpoint if given, else the first default that answers.
func DialAny(ctx context.Context, endpoint string) (*Client, error) {
	if endpoint != "" {
		return Dial(ctx, endpoint)
	}
	var errs []error
	for _, ep := range DefaultEndpoints {
		c, err := Dial(ctx, ep)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w (tried %s; give one with --cri-endpoint): %w",
		ErrNoRuntime, strings.Join(DefaultEndpoints, ", "), errors.Join(errs...))
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// FindPod returns the ready sandbox of pod namespace/name and its network
// namespace.
func (c *Client) FindPod(ctx context.Context, namespace, name string) (*Pod, error) {
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{
			State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("list pod sandboxes at %s: %w", c.endpoint, err)
	}
	var match *runtimeapi.PodSandbox
	for _, sb := range resp.GetItems() {
		md := sb.GetMetadata()
		if md.GetNamespace() == namespace && md.GetName() == name {
			if match == nil || sb.GetCreatedAt() > match.GetCreatedAt() {
				match = sb
			}
		}
	}
	if match == nil {
		return nil, fmt.Errorf("%w: no ready sandbox for %s/%s at %s (%d sandboxes listed)",
			ErrPodNotFound, namespace, name, c.endpoint, len(resp.GetItems()))
	}
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: match.GetId(), Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("status of sandbox %s (%s/%s): %w", match.GetId(), namespace, name, err)
	}
	p := &Pod{
		Namespace: namespace, Name: name, UID: match.GetMetadata().GetUid(),
		SandboxID: match.GetId(), Endpoint: c.endpoint,
		IP: st.GetStatus().GetNetwork().GetIp(),
	}
	info := ParseVerboseInfo(st.GetInfo())
	p.PID = info.PID
	if st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		// hostNetwork: the node's namespace, as the sandbox process sees it
		// (a lab node is itself a namespace), else PID 1's.
		p.Netns, p.Source = filepath.Join(c.ProcRoot, "1", "ns", "net"), "hostNetwork"
		if pidNS := filepath.Join(c.ProcRoot, strconv.Itoa(info.PID), "ns", "net"); info.PID > 0 && exists(pidNS) {
			p.Netns = pidNS
		}
		return p, nil
	}
	switch {
	case info.NetnsPath != "" && exists(info.NetnsPath):
		p.Netns, p.Source = info.NetnsPath, "runtimeSpec"
	case info.PID > 0 && exists(filepath.Join(c.ProcRoot, strconv.Itoa(info.PID), "ns", "net")):
		p.Netns, p.Source = filepath.Join(c.ProcRoot, strconv.Itoa(info.PID), "ns", "net"), "pid"
	default:
		pid, err := FindPIDByPodUID(c.ProcRoot, p.UID)
		if err != nil {
			return nil, fmt.Errorf("network namespace of %s/%s: runtime info names none (netns %q, pid %d) and %w",
				namespace, name, info.NetnsPath, info.PID, err)
		}
		p.PID = pid
		p.Netns, p.Source = filepath.Join(c.ProcRoot, strconv.Itoa(pid), "ns", "net"), "proc-cgroup"
	}
	return p, nil
}

// VerboseInfo is what netdoctor reads from PodSandboxStatus's verbose info.
type VerboseInfo struct {
	PID       int
	NetnsPath string
}

// ParseVerboseInfo reads the "info" JSON that containerd and CRI-O put in a
// verbose PodSandboxStatus: the sandbox PID ("pid") and the OCI runtime
// spec's network namespace (runtimeSpec.linux.namespaces[type=network].path).
// Unknown or malformed content gives zero values, never an error: the caller
// falls back to other sources.
func ParseVerboseInfo(info map[string]string) VerboseInfo {
	var out VerboseInfo
	raw, ok := info["info"]
	if !ok {
		return out
	}
	var v struct {
		PID         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return out
	}
	out.PID = v.PID
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			out.NetnsPath = ns.Path
		}
	}
	return out
}

// FindPIDByPodUID scans procRoot for a process whose cgroup path names the
// pod UID, as kubelet's cgroup drivers write it: ".../pod<uid>/..." (cgroupfs)
// or "...-pod<uid_with_underscores>.slice/..." (systemd).
func FindPIDByPodUID(procRoot, uid string) (int, error) {
	if uid == "" {
		return 0, errors.New("no pod UID to look for in /proc")
	}
	want := []string{"pod" + uid, "pod" + strings.ReplaceAll(uid, "-", "_")}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", procRoot, err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cgroupMentions(filepath.Join(procRoot, e.Name(), "cgroup"), want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process in %s has pod UID %s in its cgroup", procRoot, uid)
}

func cgroupMentions(path string, want []string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		for _, w := range want {
			if strings.Contains(sc.Text(), w) {
				return true
			}
		}
	}
	return false
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// SplitPodRef splits "namespace/name" (a bare name means namespace default).
func SplitPodRef(ref string) (namespace, name string, err error) {
	ns, n, found := strings.Cut(ref, "/")
	if !found {
		ns, n = "default", ref
	}
	if ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("pod %q is not NAMESPACE/NAME", ref)
	}
	return ns, n, nil
}
