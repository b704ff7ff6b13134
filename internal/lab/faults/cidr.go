package faults

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/controlplane"
)

// The cidr group: node IPAM of the controller-manager.

// Names of the Node objects the cidr group registers through the API (no kubelet or
// namespace behind them: the lab cannot add a namespace node at run time). They carry no
// kubernetes.io/os label, so no DaemonSet or sample pod is placed on them.
const (
	fillerNodePrefix = "ndlab-filler-"
	probeNodeName    = "ndlab-newnode"
	labNodeLabel     = "netdoctor.io/lab-api-only-node"
)

func init() {
	Register(Fault{
		ID: "node-pod-cidr-missing", Group: "cidr",
		Summary:   "the controller-manager's cluster CIDR is exhausted (restarted with the smallest CIDR holding the nodes' pod CIDRs, its free blocks taken): a new node gets no pod CIDR",
		Injection: "kube-controller-manager --cluster-cidr=SMALLEST_COVERING_CIDR (restart); register nodes until it is full",
		Checks: []Check{
			{Kind: NodeGetsPodCIDR, From: Faulted, Broken: true},
			{Kind: PodTCP, From: Faulted, To: Peer},
			{Kind: PodSampleService, From: Peer},
		},
		Inject: injectCIDRFull,
		Heal:   healCIDRFull,
	})
}

// coveringPrefix is the smallest prefix holding every one of cidrs.
func coveringPrefix(cidrs []netip.Prefix) (netip.Prefix, error) {
	if len(cidrs) == 0 {
		return netip.Prefix{}, fmt.Errorf("no pod CIDRs")
	}
	for bits := cidrs[0].Bits(); bits >= 0; bits-- {
		p, err := cidrs[0].Addr().Prefix(bits)
		if err != nil {
			return netip.Prefix{}, err
		}
		all := true
		for _, c := range cidrs {
			if !p.Contains(c.Addr()) || c.Bits() < bits {
				all = false
				break
			}
		}
		if all {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no prefix covers %v", cidrs)
}

func registerAPINode(ctx context.Context, l *lab.Lab, name string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labNodeLabel: "true"}}}
	if _, err := l.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return nil
}

func deleteAPINode(ctx context.Context, l *lab.Lab, name string) error {
	if err := l.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

func injectCIDRFull(ctx context.Context, t Target) (map[string]string, error) {
	l := t.Lab
	nodes, err := l.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var cidrs []netip.Prefix
	for _, n := range nodes.Items {
		if n.Spec.PodCIDR == "" {
			continue
		}
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %q of node %s: %w", n.Spec.PodCIDR, n.Name, err)
		}
		cidrs = append(cidrs, p)
	}
	sort.Slice(cidrs, func(i, j int) bool { return cidrs[i].Addr().Less(cidrs[j].Addr()) })
	cover, err := coveringPrefix(cidrs)
	if err != nil {
		return nil, err
	}
	free := (1 << (l.State.Config.NodeCIDRMaskSize - cover.Bits())) - len(cidrs)
	if err := l.CP.Restart(ctx, controlplane.ControllerManager, []string{"--cluster-cidr=" + cover.String()}); err != nil {
		return nil, err
	}
	var fillers []string
	for i := 1; i <= free; i++ {
		name := fillerNodePrefix + strconv.Itoa(i)
		if err := registerAPINode(ctx, l, name); err != nil {
			return nil, err
		}
		fillers = append(fillers, name)
	}
	data := map[string]string{"clusterCIDR": cover.String(), "fillers": strings.Join(fillers, ",")}
	// The fillers take the free blocks: the CIDR is full once each has one.
	err = waitFor(ctx, 30*time.Second, "filler nodes to take the free pod CIDRs", func() (bool, string) {
		for _, f := range fillers {
			n, err := l.Client.CoreV1().Nodes().Get(ctx, f, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if n.Spec.PodCIDR == "" {
				return false, f + " has no pod CIDR yet"
			}
		}
		return true, ""
	})
	return data, err
}

func healCIDRFull(ctx context.Context, t Target, d map[string]string) error {
	if err := t.Lab.CP.Restart(ctx, controlplane.ControllerManager, nil); err != nil {
		return err
	}
	for _, f := range strings.Split(d["fillers"], ",") {
		if f == "" {
			continue
		}
		if err := deleteAPINode(ctx, t.Lab, f); err != nil {
			return err
		}
	}
	return nil
}

// probeNewNodeCIDR registers a new Node and says whether the controller-manager gives it a
// pod CIDR within 10 seconds; the Node is deleted afterwards.
func probeNewNodeCIDR(ctx context.Context, l *lab.Lab) error {
	if err := registerAPINode(ctx, l, probeNodeName); err != nil {
		return err
	}
	defer func() { _ = deleteAPINode(context.WithoutCancel(ctx), l, probeNodeName) }()
	return waitFor(ctx, 10*time.Second, "a pod CIDR for new node "+probeNodeName, func() (bool, string) {
		n, err := l.Client.CoreV1().Nodes().Get(ctx, probeNodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if n.Spec.PodCIDR == "" {
			return false, "node " + probeNodeName + " has no pod CIDR (cluster CIDR exhausted)"
		}
		return true, ""
	})
}
