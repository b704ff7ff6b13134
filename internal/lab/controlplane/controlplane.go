package controlplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netdoctor/netdoctor/internal/lab/proc"
	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Component names: the programs of the control plane, in start order. They are also the
// netdoctor-k8s program names.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// Components lists the control plane's programs in start order.
var Components = []string{Etcd, APIServer, ControllerManager, Scheduler}

// Defaults of Config.
const (
	DefaultAdvertiseIP      = "198.18.0.2"
	DefaultServiceCIDR      = "198.19.0.0/16"
	DefaultClusterCIDR      = "198.18.128.0/17"
	DefaultNodeCIDRMaskSize = 24
	DefaultClusterDomain    = "cluster.local"
	// APIServerPort is the API server's secure port on AdvertiseIP.
	APIServerPort = 6443
	// K8sBinEnv names the environment variable that points at the netdoctor-k8s binary.
	K8sBinEnv = "NETDOCTOR_K8S_BIN"
	// K8sBinName is the multi-call binary's file name.
	K8sBinName = "netdoctor-k8s"
)

const (
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
	cmHealthURL   = "https://127.0.0.1:10257/healthz"
	schedHealth   = "https://127.0.0.1:10259/healthz"
)

// Config says where and how to run the control plane.
type Config struct {
	// StateDir holds the PKI, etcd's data, kubeconfigs, logs and process state files.
	StateDir string `json:"stateDir"`
	// K8sBin is the netdoctor-k8s binary; default FindK8sBin().
	K8sBin string `json:"k8sBin"`
	// Netns is the path of the network namespace the control plane runs in; "" = current.
	Netns string `json:"netns"`
	// AdvertiseIP is the address nodes reach the API server on (it also binds there).
	AdvertiseIP string `json:"advertiseIP"`
	// ServiceCIDR is the service cluster IP range.
	ServiceCIDR string `json:"serviceCIDR"`
	// ClusterCIDR is the pod network the controller-manager splits into node pod CIDRs.
	ClusterCIDR string `json:"clusterCIDR"`
	// NodeCIDRMaskSize is the prefix length of each node's pod CIDR.
	NodeCIDRMaskSize int `json:"nodeCIDRMaskSize"`
	// ClusterDomain is the cluster's DNS domain (service account issuer, CoreDNS).
	ClusterDomain string `json:"clusterDomain"`
	// ReadyTimeout bounds the wait for each component to become healthy; default 90 s.
	ReadyTimeout time.Duration `json:"readyTimeout"`
	// StopTimeout is how long a component gets between SIGTERM and SIGKILL; default 5 s.
	StopTimeout time.Duration `json:"stopTimeout"`
	// Owner, if set, marks every component's process with it (proc.Spec.Owner): the lab's name.
	Owner string `json:"owner,omitempty"`
}

// FindK8sBin returns the netdoctor-k8s binary: $NETDOCTOR_K8S_BIN, else netdoctor-k8s next to
// the running executable, else ./bin/netdoctor-k8s.
func FindK8sBin() (string, error) {
	if p := os.Getenv(K8sBinEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w (build it with `make labbins`)", K8sBinEnv, p, err)
		}
		return p, nil
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), K8sBinName))
	}
	candidates = append(candidates, filepath.Join("bin", K8sBinName))
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return filepath.Abs(c)
		}
	}
	return "", fmt.Errorf("lab Kubernetes binary %s not found (looked at %s): build it with `make labbins` or set %s",
		K8sBinName, strings.Join(candidates, ", "), K8sBinEnv)
}

// WithDefaults returns c with its empty fields set to the defaults.
func (c Config) WithDefaults() Config {
	if c.AdvertiseIP == "" {
		c.AdvertiseIP = DefaultAdvertiseIP
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	if c.ClusterCIDR == "" {
		c.ClusterCIDR = DefaultClusterCIDR
	}
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = DefaultNodeCIDRMaskSize
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 5 * time.Second
	}
	return c
}

// Validate checks a defaulted Config.
func (c Config) Validate() error {
	if c.StateDir == "" {
		return errors.New("control plane config: no state directory")
	}
	a, err := netip.ParseAddr(c.AdvertiseIP)
	if err != nil || !a.Is4() {
		return fmt.Errorf("control plane config: advertise address %q is not an IPv4 address", c.AdvertiseIP)
	}
	if a.IsLoopback() {
		return fmt.Errorf("control plane config: advertise address %s is loopback; the API server refuses it, use the lab address nodes reach it on", a)
	}
	svc, err := netip.ParsePrefix(c.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("control plane config: service CIDR %q: %w", c.ServiceCIDR, err)
	}
	cl, err := netip.ParsePrefix(c.ClusterCIDR)
	if err != nil {
		return fmt.Errorf("control plane config: cluster CIDR %q: %w", c.ClusterCIDR, err)
	}
	if svc.Overlaps(cl) {
		return fmt.Errorf("control plane config: service CIDR %s overlaps cluster CIDR %s", svc, cl)
	}
	if c.NodeCIDRMaskSize < cl.Bits() || c.NodeCIDRMaskSize > 30 {
		return fmt.Errorf("control plane config: node CIDR mask size %d does not fit cluster CIDR %s", c.NodeCIDRMaskSize, cl)
	}
	return nil
}

// ControlPlane is a running (or recorded) lab control plane.
type ControlPlane struct {
	Config Config `json:"config"`
	// Server is the API server's URL, https://AdvertiseIP:6443.
	Server string `json:"server"`
	// Kubeconfig is the admin kubeconfig (system:masters).
	Kubeconfig string `json:"kubeconfig"`
	// Procs are the running components, in start order.
	Procs []proc.Info `json:"procs"`
	// ExtraArgs are the flags a component was last (re)started with on top of its own.
	ExtraArgs map[string][]string `json:"extraArgs,omitempty"`
	// StartupTime is how long Start took until every component was healthy.
	StartupTime time.Duration `json:"startupTime"`
	// ComponentStartup is, per component, the time from its start to healthy (for the API
	// server: until its default namespaces exist); "pki" is the key and certificate generation.
	ComponentStartup map[string]time.Duration `json:"componentStartup,omitempty"`
}

// Paths inside the state directory.
func (c Config) pkiDir() string        { return filepath.Join(c.StateDir, "pki") }
func (c Config) etcdDir() string       { return filepath.Join(c.StateDir, "etcd") }
func (c Config) kubeconfigDir() string { return filepath.Join(c.StateDir, "kubeconfigs") }
func (c Config) logDir() string        { return filepath.Join(c.StateDir, "logs") }
func (c Config) procDir() string       { return filepath.Join(c.StateDir, "procs") }

// StateFile is the file Start records the control plane in, read back by Load.
func StateFile(stateDir string) string { return filepath.Join(stateDir, "controlplane.json") }

// Start generates the PKI and kubeconfigs and starts etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler in cfg.Netns, waiting until each is healthy and
// the default and kube-system namespaces exist. On failure everything started is stopped.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	begin := time.Now()
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.K8sBin == "" {
		p, err := FindK8sBin()
		if err != nil {
			return nil, err
		}
		cfg.K8sBin = p
	}
	if abs, err := filepath.Abs(cfg.K8sBin); err == nil {
		cfg.K8sBin = abs
	}
	if _, err := os.Stat(cfg.K8sBin); err != nil {
		return nil, fmt.Errorf("lab Kubernetes binary: %w (build it with `make labbins`)", err)
	}
	for _, d := range []string{cfg.pkiDir(), cfg.kubeconfigDir(), cfg.logDir(), cfg.procDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create control plane directory: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.etcdDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create etcd data directory: %w", err)
	}
	cp := &ControlPlane{
		Config:     cfg,
		Server:     "https://" + net.JoinHostPort(cfg.AdvertiseIP, strconv.Itoa(APIServerPort)),
		Kubeconfig: filepath.Join(cfg.kubeconfigDir(), "admin.conf"),
		ExtraArgs:  map[string][]string{},
	}
	t0 := time.Now()
	if err := cp.writePKI(); err != nil {
		return nil, err
	}
	cp.ComponentStartup = map[string]time.Duration{"pki": time.Since(t0)}
	var mu sync.Mutex
	// etcd, then the API server (until its default namespaces exist), then the
	// controller-manager and the scheduler together: both only need the API server.
	for _, stage := range [][]string{{Etcd}, {APIServer}, {ControllerManager, Scheduler}} {
		t0 := time.Now()
		infos := make([]*proc.Info, len(stage))
		for i, comp := range stage {
			info, err := cp.launch(comp)
			if err != nil {
				_ = cp.Stop()
				return nil, err
			}
			infos[i] = info
		}
		errs := make([]error, len(stage))
		var wg sync.WaitGroup
		for i, comp := range stage {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = cp.waitHealthyLogged(ctx, comp, infos[i])
				if errs[i] == nil && comp == APIServer {
					errs[i] = cp.waitNamespaces(ctx, "default", "kube-system")
				}
				if errs[i] == nil {
					mu.Lock()
					cp.ComponentStartup[comp] = time.Since(t0)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			_ = cp.Stop()
			return nil, err
		}
	}
	cp.StartupTime = time.Since(begin)
	if err := cp.save(); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return cp, nil
}

// Load reads the control plane recorded in stateDir by Start (for `lab status` and `lab down`
// in another process).
func Load(stateDir string) (*ControlPlane, error) {
	b, err := os.ReadFile(StateFile(stateDir))
	if err != nil {
		return nil, fmt.Errorf("read control plane state: %w", err)
	}
	var cp ControlPlane
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("parse control plane state %s: %w", StateFile(stateDir), err)
	}
	return &cp, nil
}

func (cp *ControlPlane) save() error {
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return fmt.Errorf("encode control plane state: %w", err)
	}
	p := StateFile(cp.Config.StateDir)
	if err := os.WriteFile(p+".tmp", append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write control plane state: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("write control plane state: %w", err)
	}
	return nil
}

func (cp *ControlPlane) writePKI() error {
	c := cp.Config
	dir := c.pkiDir()
	ca, err := NewCA("netdoctor-lab-ca")
	if err != nil {
		return err
	}
	if err := writeCA(dir, ca); err != nil {
		return err
	}
	svc := netip.MustParsePrefix(c.ServiceCIDR)
	kubernetesSvcIP := svc.Masked().Addr().Next()
	serving, err := ca.Issue(CertRequest{
		CommonName: "kube-apiserver",
		DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + c.ClusterDomain, "localhost"},
		IPs:    []net.IP{net.ParseIP(c.AdvertiseIP), net.IP(kubernetesSvcIP.AsSlice()), net.ParseIP("127.0.0.1")},
		Server: true,
	})
	if err != nil {
		return err
	}
	if err := serving.writeAs(dir, "apiserver"); err != nil {
		return err
	}
	if _, _, err := writeServiceAccountKeys(dir); err != nil {
		return err
	}
	for name, id := range map[string]Identity{
		"admin.conf":              AdminIdentity,
		"controller-manager.conf": ControllerManagerIdentity,
		"scheduler.conf":          SchedulerIdentity,
		"kube-proxy.conf":         KubeProxyIdentity,
	} {
		if err := cp.writeKubeconfigWith(ca, filepath.Join(c.kubeconfigDir(), name), id); err != nil {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) writeKubeconfigWith(ca *CA, path string, id Identity) error {
	kp, err := ca.Issue(CertRequest{CommonName: id.User, Organization: id.Groups})
	if err != nil {
		return err
	}
	return writeKubeconfig(path, cp.Server, ca.CertPEM, id.User, kp)
}

// WriteKubeconfig writes to path a kubeconfig for the API server (cp.Server) that
// authenticates as id with a fresh client certificate signed by the lab CA.
func (cp *ControlPlane) WriteKubeconfig(path string, id Identity) error {
	ca, err := loadCA(cp.Config.pkiDir())
	if err != nil {
		return err
	}
	return cp.writeKubeconfigWith(ca, path, id)
}

// NodeKubeconfig writes (once) the kubeconfig of node's kubelet, authenticating as
// system:node:NODE in group system:nodes, and returns its path.
func (cp *ControlPlane) NodeKubeconfig(node string) (string, error) {
	p := filepath.Join(cp.Config.kubeconfigDir(), "node-"+node+".conf")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return p, cp.WriteKubeconfig(p, NodeIdentity(node))
}

// ComponentKubeconfig returns the path of a component's kubeconfig written by Start:
// "admin", "controller-manager", "scheduler" or "kube-proxy".
func (cp *ControlPlane) ComponentKubeconfig(name string) string {
	return filepath.Join(cp.Config.kubeconfigDir(), name+".conf")
}

// CAFile is the lab CA certificate (what in-cluster clients trust as ca.crt).
func (cp *ControlPlane) CAFile() string { return filepath.Join(cp.Config.pkiDir(), "ca.crt") }

// ServiceAccountKeyFile is the private key that signs service account tokens.
func (cp *ControlPlane) ServiceAccountKeyFile() string {
	return filepath.Join(cp.Config.pkiDir(), "sa.key")
}

// LogFile is where a component's output goes.
func (cp *ControlPlane) LogFile(component string) string {
	return filepath.Join(cp.Config.logDir(), component+".log")
}

func (cp *ControlPlane) procFile(component string) string {
	return filepath.Join(cp.Config.procDir(), component+".json")
}

// Args returns the flags the lab runs component with (without extra arguments).
func (cp *ControlPlane) Args(component string) ([]string, error) {
	c := cp.Config
	pki := c.pkiDir()
	kc := cp.ComponentKubeconfig
	switch component {
	case Etcd:
		return []string{
			"--name=lab",
			"--data-dir=" + c.etcdDir(),
			"--listen-client-urls=" + etcdClientURL,
			"--advertise-client-urls=" + etcdClientURL,
			"--listen-peer-urls=" + etcdPeerURL,
			"--initial-advertise-peer-urls=" + etcdPeerURL,
			"--initial-cluster=lab=" + etcdPeerURL,
			"--initial-cluster-state=new",
			// The lab is thrown away at `lab down`: no need to pay for fsync on every write.
			"--unsafe-no-fsync=true",
			"--log-level=warn",
		}, nil
	case APIServer:
		return []string{
			"--etcd-servers=" + etcdClientURL,
			"--advertise-address=" + c.AdvertiseIP,
			"--bind-address=" + c.AdvertiseIP,
			"--secure-port=" + strconv.Itoa(APIServerPort),
			"--cert-dir=" + pki,
			"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
			"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--service-account-issuer=https://kubernetes.default.svc." + c.ClusterDomain,
			"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--service-cluster-ip-range=" + c.ServiceCIDR,
			"--profiling=false",
		}, nil
	case ControllerManager:
		return []string{
			"--kubeconfig=" + kc("controller-manager"),
			"--authentication-kubeconfig=" + kc("controller-manager"),
			"--authorization-kubeconfig=" + kc("controller-manager"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--controllers=*",
			"--use-service-account-credentials=true",
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + c.ClusterCIDR,
			"--node-cidr-mask-size=" + strconv.Itoa(c.NodeCIDRMaskSize),
			"--service-cluster-ip-range=" + c.ServiceCIDR,
			"--cluster-name=netdoctor-lab",
			"--root-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
			"--cluster-signing-cert-file=" + filepath.Join(pki, "ca.crt"),
			"--cluster-signing-key-file=" + filepath.Join(pki, "ca.key"),
			"--profiling=false",
		}, nil
	case Scheduler:
		return []string{
			"--kubeconfig=" + kc("scheduler"),
			"--authentication-kubeconfig=" + kc("scheduler"),
			"--authorization-kubeconfig=" + kc("scheduler"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--profiling=false",
		}, nil
	}
	return nil, fmt.Errorf("unknown control plane component %q (want one of %s)", component, strings.Join(Components, ", "))
}

// MergeArgs returns base with extra applied: an extra --flag[=value] replaces every base
// argument of the same flag, so a restart with other flags does not leave the old value
// (repeated slice flags would otherwise accumulate).
func MergeArgs(base, extra []string) []string {
	name := func(a string) string {
		if i := strings.IndexByte(a, '='); i >= 0 {
			return a[:i]
		}
		return a
	}
	drop := map[string]bool{}
	for _, e := range extra {
		if strings.HasPrefix(e, "-") {
			drop[name(e)] = true
		}
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, b := range base {
		if !drop[name(b)] {
			out = append(out, b)
		}
	}
	return append(out, extra...)
}

func (cp *ControlPlane) startComponent(ctx context.Context, component string) error {
	info, err := cp.launch(component)
	if err != nil {
		return err
	}
	return cp.waitHealthyLogged(ctx, component, info)
}

// launch starts component's process with its flags and extra arguments and records it.
func (cp *ControlPlane) launch(component string) (*proc.Info, error) {
	base, err := cp.Args(component)
	if err != nil {
		return nil, err
	}
	args := MergeArgs(base, cp.ExtraArgs[component])
	info, err := proc.Start(proc.Spec{
		Name:      component,
		Path:      cp.Config.K8sBin,
		Argv0:     component,
		Args:      args,
		Netns:     cp.Config.Netns,
		LogFile:   cp.LogFile(component),
		StateFile: cp.procFile(component),
		Owner:     cp.Config.Owner,
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", component, err)
	}
	cp.setProc(*info)
	return info, nil
}

// waitHealthyLogged is waitHealthy with the end of the component's log in the error.
func (cp *ControlPlane) waitHealthyLogged(ctx context.Context, component string, info *proc.Info) error {
	if err := cp.waitHealthy(ctx, component, info); err != nil {
		return fmt.Errorf("%s did not become healthy: %w\n--- last lines of %s:\n%s", component, err, info.LogFile, tail(info.LogFile, 15))
	}
	return nil
}

func (cp *ControlPlane) setProc(info proc.Info) {
	for i := range cp.Procs {
		if cp.Procs[i].Name == info.Name {
			cp.Procs[i] = info
			return
		}
	}
	cp.Procs = append(cp.Procs, info)
}

// Proc returns the recorded process of a component.
func (cp *ControlPlane) Proc(component string) (*proc.Info, bool) {
	for i := range cp.Procs {
		if cp.Procs[i].Name == component {
			return &cp.Procs[i], true
		}
	}
	return nil, false
}

// Restart stops component and starts it again with its own flags plus extraArgs (which
// replace flags of the same name; nil restores the defaults), then waits until it is healthy.
// Faults use it, e.g. to restart the controller-manager with another --cluster-cidr.
func (cp *ControlPlane) Restart(ctx context.Context, component string, extraArgs []string) error {
	if _, err := cp.Args(component); err != nil {
		return err
	}
	if info, ok := cp.Proc(component); ok {
		if err := proc.Stop(info, cp.Config.StopTimeout); err != nil {
			return fmt.Errorf("restart %s: %w", component, err)
		}
	}
	if cp.ExtraArgs == nil {
		cp.ExtraArgs = map[string][]string{}
	}
	if len(extraArgs) == 0 {
		delete(cp.ExtraArgs, component)
	} else {
		cp.ExtraArgs[component] = append([]string(nil), extraArgs...)
	}
	if err := cp.startComponent(ctx, component); err != nil {
		return fmt.Errorf("restart %s: %w", component, err)
	}
	return cp.save()
}

// Stop stops every component in reverse start order (SIGTERM, then SIGKILL after
// Config.StopTimeout). It is idempotent and works on a ControlPlane returned by Load.
func (cp *ControlPlane) Stop() error {
	timeout := cp.Config.StopTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	var errs []error
	for i := len(cp.Procs) - 1; i >= 0; i-- {
		if err := proc.Stop(&cp.Procs[i], timeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Running reports, per component, whether its recorded process is still alive.
func (cp *ControlPlane) Running() map[string]bool {
	out := map[string]bool{}
	for i := range cp.Procs {
		out[cp.Procs[i].Name] = proc.Alive(&cp.Procs[i])
	}
	return out
}

// DialContext opens a connection from inside the control plane's network namespace, so that
// the API server (and the components' loopback health ports) are reachable from a process
// that is not in the lab's network.
func (cp *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	// client-go and http.Transport call this from goroutines of their own:
	// namespace.Dialer makes the socket on a thread inside the namespace and
	// checks that it is there before connecting.
	conn, err := namespace.Dialer(cp.Config.Netns, nil)(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from the control plane namespace: %w", addr, err)
	}
	return conn, nil
}

// RESTConfig is the admin client configuration. Its connections are made from inside the
// control plane's namespace, so it works whether or not the caller's namespace has a route
// to the lab.
func (cp *ControlPlane) RESTConfig() (*rest.Config, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load admin kubeconfig %s: %w", cp.Kubeconfig, err)
	}
	if cp.Config.Netns != "" {
		rc.Dial = cp.DialContext
	}
	rc.QPS, rc.Burst = 50, 100
	rc.Timeout = 30 * time.Second
	return rc, nil
}

// Client is an admin clientset (see RESTConfig).
func (cp *ControlPlane) Client() (kubernetes.Interface, error) {
	rc, err := cp.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return cs, nil
}

// waitHealthy polls the component's health endpoint until it answers ok, the process dies,
// or Config.ReadyTimeout passes.
func (cp *ControlPlane) waitHealthy(ctx context.Context, component string, info *proc.Info) error {
	check, err := cp.healthCheck(component)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cp.Config.ReadyTimeout)
	defer cancel()
	var last error
	for {
		if !proc.Alive(info) {
			return fmt.Errorf("process %d exited", info.PID)
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %w)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) healthCheck(component string) (func(context.Context) error, error) {
	switch component {
	case Etcd:
		return func(ctx context.Context) error {
			return cp.httpOK(ctx, cp.plainHTTP(), etcdClientURL+"/health", `"health":"true"`)
		}, nil
	case APIServer:
		rc, err := cp.RESTConfig()
		if err != nil {
			return nil, err
		}
		rc.Timeout = 5 * time.Second
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("admin client: %w", err)
		}
		return func(ctx context.Context) error {
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(body)) != "ok" {
				return fmt.Errorf("readyz: %s", body)
			}
			return nil
		}, nil
	case ControllerManager:
		return func(ctx context.Context) error { return cp.httpOK(ctx, cp.loopbackTLS(), cmHealthURL, "ok") }, nil
	case Scheduler:
		return func(ctx context.Context) error { return cp.httpOK(ctx, cp.loopbackTLS(), schedHealth, "ok") }, nil
	}
	return nil, fmt.Errorf("unknown control plane component %q", component)
}

func (cp *ControlPlane) plainHTTP() *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: cp.DialContext}}
}

// loopbackTLS reaches the controller-manager's and scheduler's health ports on the loopback
// of the control plane namespace. They serve a self-signed certificate they generate at
// start, which cannot be verified; only /healthz is read through it.
func (cp *ControlPlane) loopbackTLS() *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext:     cp.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback health check of a self-signed local port
	}}
}

func (cp *ControlPlane) httpOK(ctx context.Context, c *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitNamespaces waits until the API server has created the given namespaces (it does so a
// few seconds after /readyz first answers ok).
func (cp *ControlPlane) waitNamespaces(ctx context.Context, names ...string) error {
	cs, err := cp.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cp.Config.ReadyTimeout)
	defer cancel()
	for _, n := range names {
		for {
			_, err := cs.CoreV1().Namespaces().Get(ctx, n, metav1.GetOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsNotFound(err) && ctx.Err() != nil {
				return fmt.Errorf("wait for namespace %s: %w", n, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("wait for namespace %s: %w (last: %w)", n, ctx.Err(), err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// tail returns the last n lines of a file (for error messages).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
