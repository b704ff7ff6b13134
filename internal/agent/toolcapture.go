package agent

// capture --node through the agent: the CLI sends the points (devices in
// the node's network namespace or in a pod's), the filter and the bounds as
// data; the agent runs internal/capture on its node into memory, bounded so
// the pcapng fits a result ConfigMap, and returns the file's bytes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/netdoctor/netdoctor/internal/capture"
	"github.com/netdoctor/netdoctor/internal/cluster"
)

// ToolCapture is the capture tool's name in a ToolRequest.
const ToolCapture = "capture"

// Bounds of a capture through the agent.
const (
	// MaxCaptureBytes bounds the pcapng an agent returns (before gzip and
	// base64): the result must fit a ConfigMap.
	MaxCaptureBytes = 600 << 10
	// MaxCaptureDuration bounds a capture's --duration through the agent.
	MaxCaptureDuration = 10 * time.Minute
)

// CapturePoint is a device in the node's network namespace (Pod empty) or
// in the pod's.
type CapturePoint struct {
	Iface string `json:"iface"`
	Pod   string `json:"pod,omitempty"`   // NAMESPACE/NAME
	PodIP string `json:"podIP,omitempty"` // helps find the pod in /proc
}

// CaptureSpec is a capture's points, filter and bounds. Count or Duration
// must be set, so that the capture ends by itself.
type CaptureSpec struct {
	Points   []CapturePoint `json:"points"`
	Filter   string         `json:"filter,omitempty"` // tcpdump syntax
	Count    int            `json:"count,omitempty"`
	Duration time.Duration  `json:"duration,omitempty"`
	Snaplen  int            `json:"snaplen,omitempty"`
	MaxBytes int64          `json:"maxBytes,omitempty"` // 0 or above MaxCaptureBytes: MaxCaptureBytes
}

// CaptureResult is the pcapng the agent captured and how the capture went.
type CaptureResult struct {
	Pcapng  []byte          `json:"pcapng"`
	Capture *capture.Result `json:"capture"`
	// Truncated: the capture stopped at MaxBytes before its own bounds.
	Truncated bool  `json:"truncated,omitempty"`
	MaxBytes  int64 `json:"maxBytes"`
}

// RunCapture runs a capture on this node as s says; an error means it
// could not start (bad filter, no such device, pod not found).
func (a *Agent) RunCapture(ctx context.Context, s *CaptureSpec) (*CaptureResult, error) {
	if len(s.Points) == 0 {
		return nil, errors.New("capture: no capture point")
	}
	if s.Count <= 0 && s.Duration <= 0 {
		return nil, errors.New("capture: give a packet count or a duration, so that the capture ends")
	}
	if s.Duration > MaxCaptureDuration {
		return nil, fmt.Errorf("capture: duration %s is more than %s", s.Duration, MaxCaptureDuration)
	}
	limit := s.MaxBytes
	if limit <= 0 || limit > MaxCaptureBytes {
		limit = MaxCaptureBytes
	}
	var points []capture.Point
	for _, p := range s.Points {
		if p.Iface == "" {
			return nil, errors.New("capture: a point without a device")
		}
		pt := capture.Point{Node: a.Node, Netns: a.Netns, Iface: p.Iface}
		if p.Pod != "" {
			path, err := a.findPodNetns(ctx, cluster.NodeTarget{Node: a.Node, Pod: p.Pod, PodIP: p.PodIP})
			if err != nil {
				return nil, fmt.Errorf("find the network namespace of pod %s on node %s: %w", p.Pod, a.Node, err)
			}
			pt.Netns, pt.NetnsLabel, pt.Pod = path, "pod:"+p.Pod, p.Pod
		}
		points = append(points, pt)
	}
	var buf bytes.Buffer
	sess, err := capture.Start(ctx, capture.Config{Points: points, Filter: s.Filter, Snaplen: s.Snaplen, Count: s.Count,
		Duration: s.Duration, MaxBytes: limit, BufferBytes: 4 << 20, Out: &buf})
	if err != nil {
		return nil, fmt.Errorf("capture on node %s: %w", a.Node, err)
	}
	res, err := sess.Wait()
	if err != nil {
		return nil, fmt.Errorf("capture on node %s: %w", a.Node, err)
	}
	return &CaptureResult{Pcapng: buf.Bytes(), Capture: res, Truncated: res.Stopped == "size", MaxBytes: limit}, nil
}
