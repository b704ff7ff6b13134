// Package cri serves a lab node's pods over the Kubernetes Container Runtime Interface (CRI v1
// RuntimeService, gRPC on a unix socket), answering the read-only calls tools use to find a
// pod's network namespace the way they do on containerd: Version, ListPodSandbox,
// PodSandboxStatus (with containerd-style verbose "info": pid and the OCI runtime spec's
// network namespace path), ListContainers and ContainerStatus (with the pid in verbose info).
// Calls that would change pods are refused: the lab kubelet, not CRI clients, runs pods.
package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeName is what Version reports.
const RuntimeName = "netdoctor-lab"

// Sandbox is one pod as the runtime knows it.
type Sandbox struct {
	ID          string
	Name        string
	Namespace   string
	UID         string
	Attempt     uint32
	CreatedAt   int64 // unix nanoseconds
	Ready       bool
	IP          string
	HostNetwork bool
	NetnsPath   string // network namespace path ("" for hostNetwork)
	PID         int    // a process inside the pod's namespaces (the first container's)
	Labels      map[string]string
	Annotations map[string]string
	Containers  []Container
}

// Container is one container (process) of a sandbox.
type Container struct {
	ID         string
	Name       string
	Image      string
	Attempt    uint32
	PID        int
	Running    bool
	ExitCode   int32
	CreatedAt  int64
	StartedAt  int64
	FinishedAt int64
	LogPath    string
}

// Source gives the current sandboxes; it must be safe for concurrent use.
type Source interface {
	Sandboxes() []Sandbox
}

// Server implements runtimeapi.RuntimeServiceServer over a Source.
type Server struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	Src Source
}

// Serve listens on the unix socket path (replacing a stale socket file) and serves until ctx
// ends.
func Serve(ctx context.Context, socket string, src Source) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return fmt.Errorf("CRI socket directory: %w", err)
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on CRI socket %s: %w", socket, err)
	}
	g := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(g, &Server{Src: src})
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	err = g.Serve(l)
	_ = os.Remove(socket)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) && ctx.Err() == nil {
		return fmt.Errorf("serve CRI on %s: %w", socket, err)
	}
	return nil
}

// Version answers the runtime's name and the CRI version.
func (s *Server) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: RuntimeName, RuntimeVersion: "v0.1.0", RuntimeApiVersion: "v1"}, nil
}

func sbState(sb Sandbox) runtimeapi.PodSandboxState {
	if sb.Ready {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

func meta(sb Sandbox) *runtimeapi.PodSandboxMetadata {
	return &runtimeapi.PodSandboxMetadata{Name: sb.Name, Namespace: sb.Namespace, Uid: sb.UID, Attempt: sb.Attempt}
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func (s *Server) sorted() []Sandbox {
	sbs := s.Src.Sandboxes()
	sort.Slice(sbs, func(i, j int) bool { return sbs[i].ID < sbs[j].ID })
	return sbs
}

// ListPodSandbox lists sandboxes, honouring the id, state and label filters.
func (s *Server) ListPodSandbox(_ context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := r.GetFilter()
	var out []*runtimeapi.PodSandbox
	for _, sb := range s.sorted() {
		if f.GetId() != "" && f.GetId() != sb.ID {
			continue
		}
		if f.GetState() != nil && f.GetState().GetState() != sbState(sb) {
			continue
		}
		if !labelsMatch(sb.Labels, f.GetLabelSelector()) {
			continue
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: sb.ID, Metadata: meta(sb), State: sbState(sb), CreatedAt: sb.CreatedAt,
			Labels: sb.Labels, Annotations: sb.Annotations, RuntimeHandler: "",
		})
	}
	return &runtimeapi.ListPodSandboxResponse{Items: out}, nil
}

func (s *Server) sandbox(id string) (Sandbox, bool) {
	for _, sb := range s.Src.Sandboxes() {
		if sb.ID == id {
			return sb, true
		}
	}
	return Sandbox{}, false
}

// SandboxInfo is the verbose "info" JSON of PodSandboxStatus, shaped like containerd's.
type SandboxInfo struct {
	PID         int         `json:"pid"`
	Image       string      `json:"image"`
	RuntimeSpec runtimeSpec `json:"runtimeSpec"`
}

type runtimeSpec struct {
	Linux struct {
		Namespaces []specNamespace `json:"namespaces"`
	} `json:"linux"`
}

type specNamespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

func specFor(sb Sandbox) runtimeSpec {
	var rs runtimeSpec
	rs.Linux.Namespaces = []specNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}}
	if !sb.HostNetwork {
		rs.Linux.Namespaces = append(rs.Linux.Namespaces, specNamespace{Type: "network", Path: sb.NetnsPath})
	}
	return rs
}

// PodSandboxStatus reports one sandbox; with Verbose, "info" carries the pid and runtime spec.
func (s *Server) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	sb, ok := s.sandbox(r.GetPodSandboxId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "an error occurred when try to find sandbox %q: not found", r.GetPodSandboxId())
	}
	mode := runtimeapi.NamespaceMode_POD
	if sb.HostNetwork {
		mode = runtimeapi.NamespaceMode_NODE
	}
	st := &runtimeapi.PodSandboxStatus{
		Id: sb.ID, Metadata: meta(sb), State: sbState(sb), CreatedAt: sb.CreatedAt,
		Network: &runtimeapi.PodSandboxNetworkStatus{Ip: sb.IP},
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{
			Network: mode, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
		}}},
		Labels: sb.Labels, Annotations: sb.Annotations,
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: st}
	if r.GetVerbose() {
		b, err := json.Marshal(SandboxInfo{PID: sb.PID, Image: "lab/pause", RuntimeSpec: specFor(sb)})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode sandbox info: %v", err)
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func ctrState(c Container) runtimeapi.ContainerState {
	switch {
	case c.Running:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case c.FinishedAt != 0:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	case c.StartedAt == 0:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

func ctrLabels(sb Sandbox, c Container) map[string]string {
	return map[string]string{
		"io.kubernetes.pod.name":       sb.Name,
		"io.kubernetes.pod.namespace":  sb.Namespace,
		"io.kubernetes.pod.uid":        sb.UID,
		"io.kubernetes.container.name": c.Name,
	}
}

// ListContainers lists containers, honouring the id, sandbox, state and label filters.
func (s *Server) ListContainers(_ context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := r.GetFilter()
	var out []*runtimeapi.Container
	for _, sb := range s.sorted() {
		if f.GetPodSandboxId() != "" && f.GetPodSandboxId() != sb.ID {
			continue
		}
		for _, c := range sb.Containers {
			if f.GetId() != "" && f.GetId() != c.ID {
				continue
			}
			if f.GetState() != nil && f.GetState().GetState() != ctrState(c) {
				continue
			}
			l := ctrLabels(sb, c)
			if !labelsMatch(l, f.GetLabelSelector()) {
				continue
			}
			out = append(out, &runtimeapi.Container{
				Id: c.ID, PodSandboxId: sb.ID,
				Metadata: &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: c.Attempt},
				Image:    &runtimeapi.ImageSpec{Image: c.Image}, ImageRef: c.Image,
				State: ctrState(c), CreatedAt: c.CreatedAt, Labels: l,
			})
		}
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

// ContainerStatus reports one container; with Verbose, "info" carries its pid and the spec.
func (s *Server) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	for _, sb := range s.Src.Sandboxes() {
		for _, c := range sb.Containers {
			if c.ID != r.GetContainerId() {
				continue
			}
			st := &runtimeapi.ContainerStatus{
				Id: c.ID, Metadata: &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: c.Attempt},
				State: ctrState(c), CreatedAt: c.CreatedAt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt,
				ExitCode: c.ExitCode, Image: &runtimeapi.ImageSpec{Image: c.Image}, ImageRef: c.Image,
				Labels: ctrLabels(sb, c), LogPath: c.LogPath,
			}
			resp := &runtimeapi.ContainerStatusResponse{Status: st}
			if r.GetVerbose() {
				b, err := json.Marshal(struct {
					SandboxID   string      `json:"sandboxID"`
					PID         int         `json:"pid"`
					RuntimeSpec runtimeSpec `json:"runtimeSpec"`
				}{sb.ID, c.PID, specFor(sb)})
				if err != nil {
					return nil, status.Errorf(codes.Internal, "encode container info: %v", err)
				}
				resp.Info = map[string]string{"info": string(b)}
			}
			return resp, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "an error occurred when try to find container %q: not found", r.GetContainerId())
}

// Status says the runtime and its network are ready.
func (s *Server) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}}, nil
}
