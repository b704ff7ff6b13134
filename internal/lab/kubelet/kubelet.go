package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/cri"
	"github.com/netdoctor/netdoctor/internal/lab/flannel"
)

// Version is the kubelet version the lab's nodes report.
const Version = "v1.37.2"

// Options select the lab and node a kubelet runs for.
type Options struct {
	Lab       string
	Node      string
	StateRoot string // "" = lab.DefaultStateRoot()
}

// Kubelet is one running lab node agent.
type Kubelet struct {
	opts     Options
	cfg      lab.Config
	node     lab.NodeState
	nodeIP   netip.Addr
	nodeDir  string
	stateDir string
	client   kubernetes.Interface
	// flannelClient watches Nodes (flannel's identity).
	flannelClient kubernetes.Interface
	caPEM         []byte
	nh            *netlink.Handle
	log           *slog.Logger

	podCIDR netip.Prefix
	ipam    *IPAM
	apiHost string
	apiPort int

	mu    sync.Mutex
	pods  map[types.UID]*podRuntime
	peers map[string]flannel.Peer
	kick  chan struct{}
	mpMu  sync.Mutex
	since metav1.Time // when the node's conditions took their (constant) values
}

// Run runs the kubelet until ctx ends. It is the body of `netdoctor lab kubelet` and must run
// inside the node's network namespace.
func Run(ctx context.Context, opts Options) error {
	if opts.StateRoot == "" {
		opts.StateRoot = lab.DefaultStateRoot()
	}
	stateDir := filepath.Join(opts.StateRoot, opts.Lab)
	st, err := lab.LoadState(stateDir)
	if err != nil {
		return err
	}
	ns, err := st.Node(opts.Node)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(ns.IP)
	if err != nil {
		return fmt.Errorf("node %s address %q: %w", opts.Node, ns.IP, err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", ns.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig of node %s: %w", opts.Node, err)
	}
	rc.QPS, rc.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("client for node %s: %w", opts.Node, err)
	}
	caPEM := rc.CAData
	if len(caPEM) == 0 && rc.CAFile != "" {
		if caPEM, err = os.ReadFile(rc.CAFile); err != nil {
			return fmt.Errorf("read CA: %w", err)
		}
	}
	nh, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer nh.Close()
	// flanneld watches every Node with its own identity: the Node authorizer lets a kubelet
	// read only its own Node.
	fclient := client
	if st.FlannelKubeconfig != "" {
		frc, err := clientcmd.BuildConfigFromFlags("", st.FlannelKubeconfig)
		if err != nil {
			return fmt.Errorf("flannel kubeconfig: %w", err)
		}
		if fclient, err = kubernetes.NewForConfig(frc); err != nil {
			return fmt.Errorf("flannel client: %w", err)
		}
	}
	k := &Kubelet{flannelClient: fclient,
		opts: opts, cfg: st.Config, node: *ns, nodeIP: ip, stateDir: stateDir,
		nodeDir: lab.NodeDir(stateDir, opts.Node), client: client, caPEM: caPEM, nh: nh,
		log:  slog.Default().With("node", opts.Node),
		pods: map[types.UID]*podRuntime{}, peers: map[string]flannel.Peer{}, kick: make(chan struct{}, 1),
	}
	if err := os.MkdirAll(k.nodeDir, 0o755); err != nil {
		return fmt.Errorf("node directory: %w", err)
	}
	// The node's own resolver (dnsPolicy Default): the lab's upstream DNS server.
	if err := os.WriteFile(k.nodeResolvConf(), []byte("nameserver "+k.cfg.DNSIP().String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("write node resolv.conf: %w", err)
	}
	return k.run(ctx)
}

func (k *Kubelet) nodeResolvConf() string { return filepath.Join(k.nodeDir, "resolv.conf") }

// CRISocket is the path of a node's CRI endpoint.
func CRISocket(stateDir, node string) string {
	return filepath.Join(lab.NodeDir(stateDir, node), "cri.sock")
}

// SubnetEnvPath is where a node's flannel subnet.env lives (flannel's /run/flannel/subnet.env).
func SubnetEnvPath(stateDir, node string) string {
	return filepath.Join(lab.NodeDir(stateDir, node), "run", "flannel", "subnet.env")
}

func (k *Kubelet) run(ctx context.Context) error {
	if err := k.register(ctx); err != nil {
		return err
	}
	go k.heartbeat(ctx)
	cidr, err := k.waitPodCIDR(ctx)
	if err != nil {
		return err
	}
	k.podCIDR = cidr
	k.ipam = &IPAM{Dir: filepath.Join(k.nodeDir, "ipam"), Subnet: cidr}
	if err := k.setupDatapath(ctx); err != nil {
		return err
	}
	go func() {
		if err := cri.Serve(ctx, CRISocket(k.stateDir, k.opts.Node), k); err != nil {
			k.log.Error("CRI endpoint stopped", "err", err)
		}
	}()
	k.apiHost, k.apiPort = k.kubernetesService(ctx)

	nodeInf := informers.NewSharedInformerFactory(k.flannelClient, 0)
	ni := nodeInf.Core().V1().Nodes().Informer()
	_, _ = ni.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.nodeChanged(o.(*corev1.Node)) },
		UpdateFunc: func(_, o any) { k.nodeChanged(o.(*corev1.Node)) },
		DeleteFunc: func(o any) {
			if n, ok := o.(*corev1.Node); ok {
				k.nodeDeleted(n.Name)
			} else if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				k.nodeDeleted(strings.TrimPrefix(t.Key, "/"))
			}
		},
	})
	podInf := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.opts.Node).String()
	}))
	pi := podInf.Core().V1().Pods().Informer()
	_, _ = pi.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.podChanged(o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { k.podChanged(o.(*corev1.Pod)) },
		DeleteFunc: func(o any) {
			if p, ok := o.(*corev1.Pod); ok {
				k.podGone(p.UID)
			} else if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				if p, ok := t.Obj.(*corev1.Pod); ok {
					k.podGone(p.UID)
				}
			}
		},
	})
	nodeInf.Start(ctx.Done())
	podInf.Start(ctx.Done())
	k.log.Info("kubelet running", "podCIDR", cidr)
	k.loop(ctx)
	k.shutdown()
	return nil
}

func (k *Kubelet) nodeObject() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: k.opts.Node,
		Labels: map[string]string{
			"kubernetes.io/hostname":  k.opts.Node,
			"kubernetes.io/os":        "linux",
			"kubernetes.io/arch":      "amd64",
			"beta.kubernetes.io/os":   "linux",
			"beta.kubernetes.io/arch": "amd64",
		},
	}}
}

func (k *Kubelet) nodeStatus() corev1.NodeStatus {
	now := metav1.Now()
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("4"),
		corev1.ResourceMemory:           resource.MustParse("8Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
	}
	if k.since.IsZero() {
		k.since = now
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: k.since}
	}
	return corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "lab kubelet is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: k.nodeIP.String()},
			{Type: corev1.NodeHostName, Address: k.opts.Node},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: k.opts.Node, SystemUUID: k.opts.Node, BootID: k.opts.Lab + "-" + k.opts.Node,
			KernelVersion: kernelVersion(), OSImage: "netdoctor lab", ContainerRuntimeVersion: cri.RuntimeName + "://0.1.0",
			KubeletVersion: Version, OperatingSystem: "linux", Architecture: "amd64",
		},
	}
}

func kernelVersion() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// register creates (or adopts) the Node object and posts its status.
func (k *Kubelet) register(ctx context.Context) error {
	for {
		_, err := k.client.CoreV1().Nodes().Create(ctx, k.nodeObject(), metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		k.log.Warn("register node", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("register node %s: %w", k.opts.Node, err)
		case <-time.After(time.Second):
		}
	}
	return k.postStatus(ctx)
}

func (k *Kubelet) postStatus(ctx context.Context) error {
	patch, err := json.Marshal(map[string]any{"status": k.nodeStatus()})
	if err != nil {
		return err
	}
	if _, err := k.client.CoreV1().Nodes().Patch(ctx, k.opts.Node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("post status of node %s: %w", k.opts.Node, err)
	}
	return nil
}

// heartbeat renews the node's Lease every 10 s and reposts its status every minute.
func (k *Kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	dur := int32(40)
	holder := k.opts.Node
	lastStatus := time.Now()
	for {
		now := metav1.NowMicro()
		l, err := leases.Get(ctx, k.opts.Node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.opts.Node, Namespace: corev1.NamespaceNodeLease},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			l.Spec.HolderIdentity = &holder
			l.Spec.LeaseDurationSeconds = &dur
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			k.log.Warn("renew lease", "err", err)
		}
		if time.Since(lastStatus) > time.Minute {
			if err := k.postStatus(ctx); err != nil && ctx.Err() == nil {
				k.log.Warn("post node status", "err", err)
			}
			lastStatus = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// waitPodCIDR waits for the controller-manager's node IPAM to give the node a pod CIDR.
func (k *Kubelet) waitPodCIDR(ctx context.Context) (netip.Prefix, error) {
	warned := time.Now()
	for {
		n, err := k.client.CoreV1().Nodes().Get(ctx, k.opts.Node, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			p, err := netip.ParsePrefix(n.Spec.PodCIDR)
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("pod CIDR %q of node %s: %w", n.Spec.PodCIDR, k.opts.Node, err)
			}
			return p, nil
		}
		if time.Since(warned) > 30*time.Second {
			k.log.Warn("node has no pod CIDR yet (cluster CIDR exhausted?)")
			warned = time.Now()
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("wait for pod CIDR of node %s: %w", k.opts.Node, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// setupDatapath creates cni0 and flannel.1, publishes flannel's annotations, writes subnet.env
// and installs flannel's iptables rules.
func (k *Kubelet) setupDatapath(ctx context.Context) error {
	l := flannel.Local{PublicIP: k.nodeIP, Uplink: lab.UplinkName, PodCIDR: k.podCIDR, ClusterCIDR: k.cfg.ClusterCIDR}
	mac, err := flannel.SetupLocal(k.nh, l)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": flannel.Annotations(k.nodeIP, mac)}})
	if err != nil {
		return err
	}
	if _, err := k.client.CoreV1().Nodes().Patch(ctx, k.opts.Node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s with flannel backend data: %w", k.opts.Node, err)
	}
	if err := flannel.WriteSubnetEnv(SubnetEnvPath(k.stateDir, k.opts.Node), l); err != nil {
		return err
	}
	return flannel.EnsureRules(ctx, "", k.cfg.ClusterCIDR, k.podCIDR)
}

// nodeChanged programs a peer when its flannel lease (public IP, pod CIDR, VTEP MAC) is new or
// changed, like flanneld's kube subnet manager: other Node updates (heartbeats) change nothing,
// so entries removed by hand stay removed until the peer's lease changes.
func (k *Kubelet) nodeChanged(n *corev1.Node) {
	if n.Name == k.opts.Node {
		return
	}
	p, ok := flannel.PeerFromNode(n.Name, n.Spec.PodCIDR, n.Annotations)
	if !ok {
		return
	}
	k.mu.Lock()
	old, had := k.peers[n.Name]
	k.mu.Unlock()
	if had && old.Equal(p) {
		return
	}
	if had {
		if err := flannel.DelPeer(k.nh, old); err != nil {
			k.log.Warn("remove old peer", "peer", n.Name, "err", err)
		}
	}
	if err := flannel.AddPeer(k.nh, p); err != nil {
		k.log.Error("program peer", "peer", n.Name, "err", err)
		return
	}
	k.mu.Lock()
	k.peers[n.Name] = p
	k.mu.Unlock()
	k.log.Info("programmed peer", "peer", n.Name, "podCIDR", p.PodCIDR, "publicIP", p.PublicIP, "vtepMAC", p.VtepMAC)
}

func (k *Kubelet) nodeDeleted(name string) {
	k.mu.Lock()
	p, ok := k.peers[name]
	delete(k.peers, name)
	k.mu.Unlock()
	if ok {
		if err := flannel.DelPeer(k.nh, p); err != nil {
			k.log.Warn("remove peer", "peer", name, "err", err)
		}
	}
}

// kubernetesService finds the in-cluster API address (the kubernetes Service's ClusterIP).
func (k *Kubelet) kubernetesService(ctx context.Context) (string, int) {
	for i := 0; i < 50; i++ {
		s, err := k.client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		if err == nil && s.Spec.ClusterIP != "" && len(s.Spec.Ports) > 0 {
			return s.Spec.ClusterIP, int(s.Spec.Ports[0].Port)
		}
		select {
		case <-ctx.Done():
			return "", 0
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "", 0
}
