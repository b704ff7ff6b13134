// Package critest serves a real CRI v1 RuntimeService over a unix socket for
// tests: Version, ListPodSandbox and PodSandboxStatus with containerd-style
// verbose info (pid and runtimeSpec with the network namespace path).
package critest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Pod is one sandbox the fake runtime reports.
type Pod struct {
	ID, Namespace, Name, UID string
	IP                       string
	PID                      int    // sandbox process; 0 = none in the info
	NetnsPath                string // runtimeSpec network namespace; "" = none in the info
	NotReady                 bool
	HostNetwork              bool
}

// Server is a running fake runtime.
type Server struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	Pods     []Pod
	Endpoint string // unix socket path
}

// Start serves pods on socket until the test ends.
func Start(t testing.TB, socket string, pods []Pod) *Server {
	t.Helper()
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatalf("listen on %s: %v", socket, err)
	}
	s := &Server{Pods: pods, Endpoint: socket}
	g := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return s
}

// Version answers like containerd does.
func (s *Server) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.0.0-critest", RuntimeApiVersion: "v1"}, nil
}

func (s *Server) state(p Pod) runtimeapi.PodSandboxState {
	if p.NotReady {
		return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	}
	return runtimeapi.PodSandboxState_SANDBOX_READY
}

// ListPodSandbox lists the pods, honouring the state and label filters.
func (s *Server) ListPodSandbox(_ context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	var items []*runtimeapi.PodSandbox
	for _, p := range s.Pods {
		f := r.GetFilter()
		if f.GetState() != nil && f.GetState().GetState() != s.state(p) {
			continue
		}
		labels := map[string]string{"io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.name": p.Name, "io.kubernetes.pod.uid": p.UID}
		ok := true
		for k, v := range f.GetLabelSelector() {
			if labels[k] != v {
				ok = false
			}
		}
		if !ok {
			continue
		}
		items = append(items, &runtimeapi.PodSandbox{
			Id:       p.ID,
			Metadata: &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
			State:    s.state(p), Labels: labels,
		})
	}
	return &runtimeapi.ListPodSandboxResponse{Items: items}, nil
}

// PodSandboxStatus returns the status and, when verbose, containerd's info JSON.
func (s *Server) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	for _, p := range s.Pods {
		if p.ID != r.GetPodSandboxId() {
			continue
		}
		resp := &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{
			Id:       p.ID,
			Metadata: &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
			State:    s.state(p),
			Network:  &runtimeapi.PodSandboxNetworkStatus{Ip: p.IP},
			Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
				Options: &runtimeapi.NamespaceOption{Network: netMode(p)},
			}},
		}}
		if r.GetVerbose() {
			resp.Info = map[string]string{"info": ContainerdInfo(p)}
		}
		return resp, nil
	}
	return nil, status.Errorf(codes.NotFound, "an error occurred when try to find sandbox %q: not found", r.GetPodSandboxId())
}

func netMode(p Pod) runtimeapi.NamespaceMode {
	if p.HostNetwork {
		return runtimeapi.NamespaceMode_NODE
	}
	return runtimeapi.NamespaceMode_POD
}

// ContainerdInfo renders the verbose "info" value the way containerd's CRI
// plugin lays it out (sandboxInfo: pid, processStatus, netNamespaceClosed,
// image, runtimeHandler, runtimeType, config, runtimeSpec...).
func ContainerdInfo(p Pod) string {
	ns := []map[string]string{{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}}
	if p.NetnsPath != "" {
		ns = append(ns, map[string]string{"type": "network", "path": p.NetnsPath})
	}
	info := map[string]any{
		"pid":                p.PID,
		"processStatus":      "running",
		"netNamespaceClosed": false,
		"image":              "registry.k8s.io/pause:3.10",
		"snapshotKey":        p.ID,
		"snapshotter":        "overlayfs",
		"runtimeHandler":     "",
		"runtimeType":        "io.containerd.runc.v2",
		"config": map[string]any{
			"metadata": map[string]any{"name": p.Name, "uid": p.UID, "namespace": p.Namespace},
			"linux":    map[string]any{"cgroup_parent": fmt.Sprintf("kubepods-besteffort-pod%s.slice", p.UID)},
		},
		"runtimeSpec": map[string]any{
			"ociVersion": "1.1.0",
			"process":    map[string]any{"args": []string{"/pause"}, "cwd": "/"},
			"root":       map[string]any{"path": "rootfs", "readonly": true},
			"linux": map[string]any{
				"cgroupsPath": fmt.Sprintf("kubepods-besteffort-pod%s.slice:cri-containerd:%s", p.UID, p.ID),
				"namespaces":  ns,
			},
		},
	}
	b, _ := json.Marshal(info)
	return string(b)
}
