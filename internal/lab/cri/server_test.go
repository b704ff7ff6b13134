package cri

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	clientcri "github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

type fixedSource struct {
	mu  sync.Mutex
	sbs []Sandbox
}

func (f *fixedSource) Sandboxes() []Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Sandbox(nil), f.sbs...)
}

func serve(t *testing.T, src Source) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, src) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := clientcri.Dial(context.Background(), sock); err == nil {
			_ = c.Close()
			return sock
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("CRI server did not come up")
	return ""
}

// TestFindPodThroughCRI runs a process in a fresh namespace, serves it as a pod and finds its
// namespace with netdoctor's CRI client exactly as it would with containerd.
func TestFindPodThroughCRI(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t, "cri")
	cmd := exec.Command("ip", "netns", "exec", ns, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	now := time.Now().UnixNano()
	src := &fixedSource{sbs: []Sandbox{
		{ID: "sb1", Name: "web-1", Namespace: "shop", UID: "uid-1", CreatedAt: now, Ready: true, IP: "198.18.128.5",
			NetnsPath: testutil.Path(ns), PID: cmd.Process.Pid,
			Containers: []Container{{ID: "c1", Name: "web", Image: "nginx", PID: cmd.Process.Pid, Running: true, CreatedAt: now, StartedAt: now}}},
		{ID: "sb2", Name: "kube-proxy-x", Namespace: "kube-system", UID: "uid-2", CreatedAt: now, Ready: true, HostNetwork: true, IP: "198.18.0.11",
			Containers: []Container{{ID: "c2", Name: "kube-proxy", Image: "registry.k8s.io/kube-proxy:v1.37.2", FinishedAt: now, ExitCode: 1}}},
		{ID: "sb3", Name: "old", Namespace: "shop", UID: "uid-3", CreatedAt: now - 1},
	}}
	sock := serve(t, src)
	ctx := context.Background()
	c, err := clientcri.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()

	tests := []struct {
		ns, name, wantNetns, wantSource string
		wantErr                         bool
	}{
		{"shop", "web-1", testutil.Path(ns), "runtimeSpec", false},
		{"kube-system", "kube-proxy-x", "/proc/1/ns/net", "hostNetwork", false},
		{"shop", "old", "", "", true}, // not ready
		{"shop", "nope", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := c.FindPod(ctx, tt.ns, tt.name)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("found %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Netns != tt.wantNetns || p.Source != tt.wantSource {
				t.Fatalf("got netns %q (%s), want %q (%s)", p.Netns, p.Source, tt.wantNetns, tt.wantSource)
			}
		})
	}

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	lc, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}})
	if err != nil || len(lc.Containers) != 1 || lc.Containers[0].Id != "c1" || lc.Containers[0].Labels["io.kubernetes.pod.namespace"] != "shop" {
		t.Fatalf("ListContainers running = %v, %v", lc, err)
	}
	cs, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "c1", Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ PID int }
	if err := json.Unmarshal([]byte(cs.Info["info"]), &info); err != nil || info.PID != cmd.Process.Pid {
		t.Fatalf("container info %q: pid %d, %v", cs.Info["info"], info.PID, err)
	}
	cs2, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "c2"})
	if err != nil || cs2.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED || cs2.Status.ExitCode != 1 {
		t.Fatalf("exited container status %v, %v", cs2, err)
	}
	if _, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "zz"}); err == nil {
		t.Fatal("unknown container answered")
	}
	if _, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{}); err == nil {
		t.Fatal("RunPodSandbox accepted: the lab runtime is read-only")
	}
}
