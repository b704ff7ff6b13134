package kubelet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/netdoctor/netdoctor/internal/lab"
	"github.com/netdoctor/netdoctor/internal/lab/cri"
	"github.com/netdoctor/netdoctor/internal/lab/proc"
)

// podRuntime is the kubelet's record of one pod it runs.
type podRuntime struct {
	pod        *corev1.Pod
	id         string // sandbox ID
	net        *PodNet
	netnsPath  string // "" for hostNetwork
	ip         string
	created    time.Time
	dir        string
	containers map[string]*ctrRuntime
	order      []string
	lastStatus string
	ready      bool // sandbox set up
	setupErr   string
	deleted    bool // deletion requested (DeletionTimestamp or gone from the API)
}

// ctrRuntime is one container (one process) of a pod.
type ctrRuntime struct {
	name       string
	image      string
	id         string
	info       *proc.Info
	restarts   int32
	created    time.Time
	started    time.Time
	ready      bool
	everStart  bool
	exitCode   int32
	finished   time.Time
	lastExit   *corev1.ContainerStateTerminated
	backoffTil time.Time
	failing    string
}

// SandboxID is the runtime's ID of a pod sandbox: a hash of the pod UID.
func SandboxID(uid types.UID) string {
	s := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(s[:16])
}

func (k *Kubelet) podChanged(p *corev1.Pod) {
	k.mu.Lock()
	r, ok := k.pods[p.UID]
	if !ok {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			k.mu.Unlock()
			return
		}
		id := SandboxID(p.UID)
		r = &podRuntime{pod: p, id: id, created: time.Now(), containers: map[string]*ctrRuntime{},
			dir: filepath.Join(k.nodeDir, "pods", string(p.UID))}
		k.pods[p.UID] = r
	}
	r.pod = p
	if p.DeletionTimestamp != nil {
		r.deleted = true
	}
	k.mu.Unlock()
	k.poke()
}

func (k *Kubelet) podGone(uid types.UID) {
	k.mu.Lock()
	if r, ok := k.pods[uid]; ok {
		r.deleted = true
	}
	k.mu.Unlock()
	k.poke()
}

func (k *Kubelet) poke() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// loop syncs every pod on each change and every second (process liveness, readiness).
func (k *Kubelet) loop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		case <-t.C:
		}
		k.mu.Lock()
		var rs []*podRuntime
		for _, r := range k.pods {
			rs = append(rs, r)
		}
		k.mu.Unlock()
		for _, r := range rs {
			if ctx.Err() != nil {
				return
			}
			k.syncPod(ctx, r)
		}
	}
}

// shutdown leaves pods running: they are detached processes `lab down` stops. Only the
// kubelet itself ends.
func (k *Kubelet) shutdown() {}

func (k *Kubelet) syncPod(ctx context.Context, r *podRuntime) {
	k.mu.Lock()
	p, deleted := r.pod, r.deleted
	k.mu.Unlock()
	if deleted {
		k.killPod(r, p)
		k.mu.Lock()
		delete(k.pods, p.UID)
		k.mu.Unlock()
		if p.DeletionTimestamp != nil {
			zero := int64(0)
			uid := p.UID
			err := k.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				k.log.Warn("finalize pod deletion", "pod", p.Namespace+"/"+p.Name, "err", err)
			}
		}
		return
	}
	if !r.ready {
		if err := k.setupSandbox(ctx, r, p); err != nil {
			r.setupErr = err.Error()
			k.log.Warn("pod sandbox", "pod", p.Namespace+"/"+p.Name, "err", err)
			k.reportStatus(ctx, r)
			return
		}
		r.ready, r.setupErr = true, ""
	}
	for i := range p.Spec.Containers {
		c := &p.Spec.Containers[i]
		k.syncContainer(ctx, r, p, c)
	}
	k.reportStatus(ctx, r)
}

// setupSandbox makes the pod's network (unless hostNetwork) and its files (resolv.conf, hosts).
func (k *Kubelet) setupSandbox(ctx context.Context, r *podRuntime, p *corev1.Pod) error {
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return fmt.Errorf("pod directory: %w", err)
	}
	if p.Spec.HostNetwork {
		r.ip = k.nodeIP.String()
	} else {
		ip, err := k.ipam.Allocate(string(p.UID))
		if err != nil {
			return err
		}
		pn := &PodNet{Netns: lab.PodNetns(k.opts.Lab, r.id[:8]), HostVeth: "veth" + r.id[:8], IP: ip, PodCIDR: k.podCIDR}
		if err := SetupPodNet(k.nh, *pn); err != nil {
			return err
		}
		r.net, r.netnsPath, r.ip = pn, lab.NetnsPath(pn.Netns), ip.String()
	}
	var nodeNS []string
	if b, err := os.ReadFile(k.nodeResolvConf()); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
				nodeNS = append(nodeNS, f[1])
			}
		}
	}
	resolv := ResolvConf(p, k.cfg.ClusterDNSIP().String(), "cluster.local", nodeNS)
	if err := os.WriteFile(filepath.Join(r.dir, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + r.ip + "\t" + p.Name + "\n"
	if err := os.WriteFile(filepath.Join(r.dir, "hosts"), []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("write hosts: %w", err)
	}
	return nil
}

// ResolvConfPath is where a pod's resolv.conf lives on the node (bind-mounted on the pod's
// processes' /etc/resolv.conf).
func ResolvConfPath(stateDir, node string, uid types.UID) string {
	return filepath.Join(lab.NodeDir(stateDir, node), "pods", string(uid), "resolv.conf")
}

func (k *Kubelet) syncContainer(ctx context.Context, r *podRuntime, p *corev1.Pod, c *corev1.Container) {
	cr, ok := r.containers[c.Name]
	if !ok {
		cr = &ctrRuntime{name: c.Name, image: c.Image, created: time.Now()}
		r.containers[c.Name] = cr
		r.order = append(r.order, c.Name)
		// Adopt a process a previous kubelet started.
		if info, err := proc.Load(k.ctrStateFile(r, c.Name)); err == nil && proc.Alive(info) {
			cr.info, cr.started, cr.everStart = info, time.Now(), true
			cr.id = SandboxID(types.UID(string(p.UID) + "/" + c.Name + "/" + strconv.Itoa(int(cr.restarts))))
		}
	}
	if cr.info != nil && !proc.Alive(cr.info) {
		// The process ended. What it started goes with it, as with a container's cgroup;
		// then record the exit and restart per the pod's restart policy.
		if stopped, err := lab.KillMarked(k.containerMark(r, c.Name)); err != nil || len(stopped) > 0 {
			k.log.Warn("stopped what an ended container left running", "pod", p.Namespace+"/"+p.Name, "container", c.Name, "stopped", stopped, "err", err)
		}
		cr.exitCode = 1
		cr.finished = time.Now()
		cr.lastExit = &corev1.ContainerStateTerminated{ExitCode: cr.exitCode, Reason: "Error",
			StartedAt: metav1.NewTime(cr.started), FinishedAt: metav1.NewTime(cr.finished), ContainerID: "lab://" + cr.id}
		cr.info, cr.ready = nil, false
		if p.Spec.RestartPolicy == corev1.RestartPolicyNever {
			return
		}
		cr.restarts++
		backoff := time.Duration(1<<min(int(cr.restarts), 4)) * time.Second
		cr.backoffTil = time.Now().Add(backoff)
	}
	if cr.info == nil {
		if p.Spec.RestartPolicy == corev1.RestartPolicyNever && cr.everStart {
			return
		}
		if time.Now().Before(cr.backoffTil) {
			return
		}
		if live := k.runningContainer(r, c.Name); live != nil {
			// A process of this container runs that this kubelet does not track (its state
			// file is gone): adopt it rather than start a second one.
			k.log.Warn("adopting a running container process", "pod", p.Namespace+"/"+p.Name, "container", c.Name, "pid", live.PID)
			cr.info, cr.started, cr.everStart = live, time.Now(), true
			_ = proc.Save(k.ctrStateFile(r, c.Name), live)
		} else if err := k.startContainer(ctx, r, p, c, cr); err != nil {
			cr.failing = err.Error()
			cr.backoffTil = time.Now().Add(2 * time.Second)
			k.log.Warn("start container", "pod", p.Namespace+"/"+p.Name, "container", c.Name, "err", err)
			return
		}
		cr.failing = ""
	}
	cr.ready = k.probeReady(ctx, r, p, c)
}

func (k *Kubelet) ctrStateFile(r *podRuntime, ctr string) string {
	return filepath.Join(lab.ProcDir(k.stateDir), "pod-"+r.id[:8]+"-"+ctr+".json")
}

// ContainerMarkEnv marks every process of a lab pod's container (and its children) with
// <lab>/<sandbox ID>/<container>/, as a real runtime's cgroup would hold them: the kubelet
// finds a container's processes by it even when it does not track them (a state file lost,
// a process thought ended), and never runs a container twice.
const ContainerMarkEnv = "NETDOCTOR_LAB_CONTAINER"

// containerMark is the environment entry that marks the processes of container ctr of r.
// Container names are DNS labels: the closing "/" keeps "web/" from matching "web2/".
func (k *Kubelet) containerMark(r *podRuntime, ctr string) string {
	return k.podMark(r) + ctr + "/"
}

// podMark is the prefix of the marks of all of r's containers.
func (k *Kubelet) podMark(r *podRuntime) string {
	return ContainerMarkEnv + "=" + k.opts.Lab + "/" + r.id + "/"
}

// runningContainer returns the running process of container ctr of r, found by its mark, or
// nil if none runs. The container's process is the one whose parent is not marked too (the
// others are its children); if several run, the oldest stays and the others are stopped.
func (k *Kubelet) runningContainer(r *podRuntime, ctr string) *proc.Info {
	want := []byte(k.containerMark(r, ctr))
	pids, err := proc.FindEnv(func(kv []byte) bool { return bytes.Equal(kv, want) })
	if err != nil || len(pids) == 0 {
		return nil
	}
	marked := make(map[int]bool, len(pids))
	for _, pid := range pids {
		marked[pid] = true
	}
	var tops []*proc.Info
	for _, pid := range pids {
		st, err := proc.ReadStat(pid)
		if err != nil || marked[st.PPID] {
			continue
		}
		if info, err := proc.InfoOf(pid, "pod "+r.pod.Namespace+"/"+r.pod.Name+"/"+ctr); err == nil {
			// What startContainer records, so that `lab status` shows it alike.
			info.Netns, info.LogFile, info.StateFile = r.netnsPath, filepath.Join(r.dir, ctr+".log"), k.ctrStateFile(r, ctr)
			tops = append(tops, info)
		}
	}
	if len(tops) == 0 {
		return nil
	}
	sort.Slice(tops, func(i, j int) bool { return tops[i].StartTime < tops[j].StartTime })
	for _, extra := range tops[1:] {
		k.log.Warn("stopping a second process of one container", "container", ctr, "pid", extra.PID, "keeping", tops[0].PID)
		if err := proc.Stop(extra, 3*time.Second); err != nil {
			k.log.Warn("stop container", "container", ctr, "err", err)
		}
	}
	return tops[0]
}

func (k *Kubelet) startContainer(ctx context.Context, r *podRuntime, p *corev1.Pod, c *corev1.Container, cr *ctrRuntime) error {
	lookup := func(kind, name, key string) (string, bool) {
		switch kind {
		case "configmap":
			cm, err := k.client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				v, ok := cm.Data[key]
				return v, ok
			}
		case "secret":
			s, err := k.client.CoreV1().Secrets(p.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				v, ok := s.Data[key]
				return string(v), ok
			}
		}
		return "", false
	}
	env, err := ContainerEnv(p, c, FieldValues{PodIP: r.ip, HostIP: k.nodeIP.String(), NodeName: k.opts.Node}, k.apiHost, k.apiPort, lookup)
	if err != nil {
		return err
	}
	mounts, err := k.volumeMounts(ctx, r, p, c)
	if err != nil {
		return err
	}
	prog := ProgramFor(p, c, env, k.cfg.K8sBin, k.cfg.SelfBin)
	args := []string{"lab", "podexec"}
	for _, m := range mounts {
		args = append(args, "--mount", m.String())
	}
	args = append(args, "--")
	args = append(args, prog.Path)
	args = append(args, prog.Args...)
	cr.id = SandboxID(types.UID(string(p.UID) + "/" + c.Name + "/" + strconv.Itoa(int(cr.restarts))))
	info, err := proc.Start(proc.Spec{
		Name:      "pod " + p.Namespace + "/" + p.Name + "/" + c.Name,
		Path:      k.cfg.SelfBin,
		Args:      args,
		Env:       append(EnvList(env), k.containerMark(r, c.Name)),
		Netns:     r.netnsPath,
		LogFile:   filepath.Join(r.dir, c.Name+".log"),
		StateFile: k.ctrStateFile(r, c.Name),
		Owner:     k.opts.Lab,
	})
	if err != nil {
		return err
	}
	cr.info, cr.started, cr.everStart, cr.ready = info, time.Now(), true, false
	k.log.Info("started container", "pod", p.Namespace+"/"+p.Name, "container", c.Name, "pid", info.PID, "program", prog.Kind)
	return nil
}

// probeReady runs the container's readiness probe (HTTP GET or TCP connect); without one,
// a container is ready once its TCP container ports accept connections.
func (k *Kubelet) probeReady(ctx context.Context, r *podRuntime, p *corev1.Pod, c *corev1.Container) bool {
	cr := r.containers[c.Name]
	if cr == nil || cr.info == nil {
		return false
	}
	port := func(ps intOrName) int {
		if ps.num > 0 {
			return ps.num
		}
		for _, cp := range c.Ports {
			if cp.Name == ps.name {
				return int(cp.ContainerPort)
			}
		}
		return 0
	}
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	if pr := c.ReadinessProbe; pr != nil {
		switch {
		case pr.HTTPGet != nil:
			pt := port(intOrName{num: pr.HTTPGet.Port.IntValue(), name: pr.HTTPGet.Port.StrVal})
			url := "http://" + net.JoinHostPort(r.ip, strconv.Itoa(pt)) + pr.HTTPGet.Path
			hc := &http.Client{Timeout: 500 * time.Millisecond}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return false
			}
			resp, err := hc.Do(req)
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			return resp.StatusCode >= 200 && resp.StatusCode < 400
		case pr.TCPSocket != nil:
			pt := port(intOrName{num: pr.TCPSocket.Port.IntValue(), name: pr.TCPSocket.Port.StrVal})
			conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(r.ip, strconv.Itoa(pt)))
			if err != nil {
				return false
			}
			_ = conn.Close()
			return true
		}
		return true
	}
	for _, cp := range c.Ports {
		if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
			continue
		}
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(r.ip, strconv.Itoa(int(cp.ContainerPort))))
		if err != nil {
			return false
		}
		_ = conn.Close()
	}
	return true
}

type intOrName struct {
	num  int
	name string
}

// killPod stops the pod's processes, removes its network and releases its address.
func (k *Kubelet) killPod(r *podRuntime, p *corev1.Pod) {
	for _, cr := range r.containers {
		if cr.info != nil {
			if err := proc.Stop(cr.info, 3*time.Second); err != nil {
				k.log.Warn("stop container", "pod", p.Namespace+"/"+p.Name, "container", cr.name, "err", err)
			}
			_ = os.Remove(k.ctrStateFile(r, cr.name))
		}
	}
	// Whatever process of the pod still runs (a container an earlier kubelet started and this
	// one never adopted, host-network pods too) goes with it.
	if stopped, err := lab.KillMarked(k.podMark(r)); err != nil || len(stopped) > 0 {
		k.log.Warn("stopped untracked processes of the pod", "pod", p.Namespace+"/"+p.Name, "stopped", stopped, "err", err)
	}
	// Whatever still runs in the pod's namespace (started before containers were marked) goes
	// with it: deleting the name would leave it running, unseen.
	if !p.Spec.HostNetwork {
		if stopped, err := lab.KillInNamespaces([]string{lab.PodNetns(k.opts.Lab, r.id[:8])}); err != nil || len(stopped) > 0 {
			k.log.Warn("stopped processes left in the pod's namespace", "pod", p.Namespace+"/"+p.Name, "stopped", stopped, "err", err)
		}
	}
	if r.net != nil {
		if err := TeardownPodNet(k.nh, *r.net); err != nil {
			k.log.Warn("tear down pod network", "pod", p.Namespace+"/"+p.Name, "err", err)
		}
	} else if !p.Spec.HostNetwork {
		// Never set up in this kubelet's life; clean what an earlier one may have made.
		_ = TeardownPodNet(k.nh, PodNet{Netns: lab.PodNetns(k.opts.Lab, r.id[:8]), HostVeth: "veth" + r.id[:8]})
	}
	if k.ipam != nil {
		k.ipam.Release(string(p.UID))
	}
	_ = os.RemoveAll(r.dir)
	k.log.Info("pod removed", "pod", p.Namespace+"/"+p.Name)
}

// reportStatus patches the pod's status when it changed.
func (k *Kubelet) reportStatus(ctx context.Context, r *podRuntime) {
	p := r.pod
	now := metav1.Now()
	st := corev1.PodStatus{
		Phase:     corev1.PodPending,
		HostIP:    k.nodeIP.String(),
		HostIPs:   []corev1.HostIP{{IP: k.nodeIP.String()}},
		StartTime: &metav1.Time{Time: r.created.Truncate(time.Second)},
		QOSClass:  p.Status.QOSClass, // set by the API server at creation, immutable
	}
	if r.ip != "" {
		st.PodIP = r.ip
		st.PodIPs = []corev1.PodIP{{IP: r.ip}}
	}
	allReady, allStarted := true, true
	anyRunning := false
	for i := range p.Spec.Containers {
		c := &p.Spec.Containers[i]
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image}
		cr := r.containers[c.Name]
		switch {
		case cr != nil && cr.info != nil:
			anyRunning = true
			t := true
			cs.Started = &t
			cs.Ready = cr.ready
			cs.ContainerID = "lab://" + cr.id
			cs.RestartCount = cr.restarts
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(cr.started.Truncate(time.Second))}
		case cr != nil && cr.lastExit != nil:
			if p.Spec.RestartPolicy != corev1.RestartPolicyNever {
				anyRunning = true // restarting: the pod stays Running, as with a real kubelet
			}
			f := false
			cs.Started = &f
			cs.RestartCount = cr.restarts
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off restarting failed container " + c.Name}
		default:
			f := false
			cs.Started = &f
			reason := "ContainerCreating"
			msg := r.setupErr
			if cr != nil && cr.failing != "" {
				reason, msg = "CreateContainerError", cr.failing
			}
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
		}
		if cr != nil && cr.lastExit != nil {
			cs.LastTerminationState.Terminated = cr.lastExit
		}
		if !cs.Ready {
			allReady = false
		}
		if cs.State.Running == nil {
			allStarted = false
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	if anyRunning {
		st.Phase = corev1.PodRunning
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, r.ready),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, allReady && allStarted),
		cond(corev1.PodReady, allReady && allStarted),
		cond(corev1.PodScheduled, true),
	}
	key, _ := json.Marshal(st)
	if string(key) == r.lastStatus {
		return
	}
	for i := range st.Conditions {
		st.Conditions[i].LastTransitionTime = now
		for _, old := range p.Status.Conditions {
			if old.Type == st.Conditions[i].Type && old.Status == st.Conditions[i].Status {
				st.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	patch, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return
	}
	if _, err := k.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		if !apierrors.IsNotFound(err) {
			k.log.Warn("report pod status", "pod", p.Namespace+"/"+p.Name, "err", err)
		}
		return
	}
	r.lastStatus = string(key)
}

// Sandboxes implements cri.Source.
func (k *Kubelet) Sandboxes() []cri.Sandbox {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []cri.Sandbox
	for _, r := range k.pods {
		p := r.pod
		sb := cri.Sandbox{
			ID: r.id, Name: p.Name, Namespace: p.Namespace, UID: string(p.UID),
			CreatedAt: r.created.UnixNano(), Ready: r.ready && !r.deleted, IP: r.ip,
			HostNetwork: p.Spec.HostNetwork, NetnsPath: r.netnsPath,
			Labels: map[string]string{"io.kubernetes.pod.name": p.Name, "io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.uid": string(p.UID)},
		}
		for _, name := range r.order {
			cr := r.containers[name]
			c := cri.Container{ID: cr.id, Name: cr.name, Image: cr.image, Attempt: uint32(cr.restarts),
				CreatedAt: cr.created.UnixNano(), LogPath: filepath.Join(r.dir, cr.name+".log")}
			if cr.info != nil {
				c.PID, c.Running, c.StartedAt = cr.info.PID, true, cr.started.UnixNano()
				if sb.PID == 0 {
					sb.PID = cr.info.PID
				}
			} else if cr.lastExit != nil {
				c.FinishedAt, c.ExitCode, c.StartedAt = cr.finished.UnixNano(), cr.exitCode, cr.started.UnixNano()
			}
			if c.ID == "" {
				c.ID = SandboxID(types.UID(string(p.UID) + "/" + cr.name))
			}
			sb.Containers = append(sb.Containers, c)
		}
		out = append(out, sb)
	}
	return out
}

// volumeMounts materialises the container's volumes under the pod directory and returns the
// bind mounts the container's process needs: its volumes, resolv.conf and hosts.
func (k *Kubelet) volumeMounts(ctx context.Context, r *podRuntime, p *corev1.Pod, c *corev1.Container) ([]Mount, error) {
	var mounts []Mount
	for _, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range p.Spec.Volumes {
			if p.Spec.Volumes[i].Name == vm.Name {
				vol = &p.Spec.Volumes[i]
			}
		}
		if vol == nil {
			return nil, fmt.Errorf("volume mount %s: no such volume", vm.Name)
		}
		src, ro, err := k.materialise(ctx, r, p, vol)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		if src == "" {
			continue
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, vm.SubPath)
		}
		if filepath.Clean(src) == filepath.Clean(vm.MountPath) {
			continue // a hostPath seen at its own path: nothing to bind
		}
		if err := k.ensureMountpoint(vm.MountPath, src); err != nil {
			return nil, err
		}
		mounts = append(mounts, Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly || ro})
	}
	mounts = append(mounts,
		Mount{Source: filepath.Join(r.dir, "resolv.conf"), Target: "/etc/resolv.conf", ReadOnly: true},
		Mount{Source: filepath.Join(r.dir, "hosts"), Target: "/etc/hosts", ReadOnly: true},
	)
	return mounts, nil
}

// materialise writes a volume's content under the pod directory and returns where it is.
func (k *Kubelet) materialise(ctx context.Context, r *podRuntime, p *corev1.Pod, v *corev1.Volume) (string, bool, error) {
	dir := filepath.Join(r.dir, "volumes", v.Name)
	write := func(files map[string][]byte) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for name, data := range files {
			fp := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(fp), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(fp, data, 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case v.HostPath != nil:
		hp := v.HostPath
		if hp.Type != nil && *hp.Type == corev1.HostPathFileOrCreate {
			if _, err := os.Stat(hp.Path); errors.Is(err, os.ErrNotExist) {
				f, err := os.OpenFile(hp.Path, os.O_CREATE|os.O_WRONLY, 0o644)
				if err != nil {
					return "", false, err
				}
				_ = f.Close()
			}
		}
		return hp.Path, false, nil
	case v.EmptyDir != nil:
		return dir, false, os.MkdirAll(dir, 0o755)
	case v.ConfigMap != nil:
		files, err := k.configMapFiles(ctx, p.Namespace, v.ConfigMap.Name, v.ConfigMap.Items)
		if err != nil {
			return "", false, err
		}
		return dir, true, write(files)
	case v.Secret != nil:
		files, err := k.secretFiles(ctx, p.Namespace, v.Secret.SecretName, v.Secret.Items)
		if err != nil {
			return "", false, err
		}
		return dir, true, write(files)
	case v.Projected != nil:
		files := map[string][]byte{}
		for _, s := range v.Projected.Sources {
			switch {
			case s.ServiceAccountToken != nil:
				tok, err := k.token(ctx, p, s.ServiceAccountToken)
				if err != nil {
					return "", false, err
				}
				files[s.ServiceAccountToken.Path] = []byte(tok)
			case s.ConfigMap != nil:
				var f map[string][]byte
				var err error
				if s.ConfigMap.Name == "kube-root-ca.crt" && len(k.caPEM) > 0 {
					f = map[string][]byte{"ca.crt": k.caPEM}
				} else if f, err = k.configMapFiles(ctx, p.Namespace, s.ConfigMap.Name, s.ConfigMap.Items); err != nil {
					return "", false, err
				}
				for n, d := range f {
					files[n] = d
				}
			case s.Secret != nil:
				f, err := k.secretFiles(ctx, p.Namespace, s.Secret.Name, s.Secret.Items)
				if err != nil {
					return "", false, err
				}
				for n, d := range f {
					files[n] = d
				}
			case s.DownwardAPI != nil:
				for _, it := range s.DownwardAPI.Items {
					if it.FieldRef != nil {
						val, err := fieldValue(p, it.FieldRef.FieldPath, FieldValues{PodIP: r.ip, HostIP: k.nodeIP.String(), NodeName: k.opts.Node})
						if err != nil {
							return "", false, err
						}
						files[it.Path] = []byte(val)
					}
				}
			}
		}
		return dir, true, write(files)
	}
	return "", false, nil // unsupported volume types are left out
}

func (k *Kubelet) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath) (map[string][]byte, error) {
	cm, err := k.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for key, v := range cm.Data {
		data[key] = []byte(v)
	}
	for key, v := range cm.BinaryData {
		data[key] = v
	}
	return pick(data, items), nil
}

func (k *Kubelet) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath) (map[string][]byte, error) {
	s, err := k.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", ns, name, err)
	}
	return pick(s.Data, items), nil
}

func pick(data map[string][]byte, items []corev1.KeyToPath) map[string][]byte {
	if len(items) == 0 {
		return data
	}
	out := map[string][]byte{}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			out[it.Path] = v
		}
	}
	return out
}

// token asks the TokenRequest API for a token of the pod's service account, bound to the pod.
func (k *Kubelet) token(ctx context.Context, p *corev1.Pod, src *corev1.ServiceAccountTokenProjection) (string, error) {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3607)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}
	if src.Audience != "" {
		tr.Spec.Audiences = []string{src.Audience}
	}
	res, err := k.client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", p.Namespace, sa, err)
	}
	return res.Status.Token, nil
}

// ensureMountpoint creates a missing bind-mount target on the host (directories, or an empty
// file for a file source), recording what it created so `lab down` removes it.
func (k *Kubelet) ensureMountpoint(target, src string) error {
	k.mpMu.Lock()
	defer k.mpMu.Unlock()
	if _, err := os.Lstat(target); err == nil {
		return nil
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount source %s: %w", src, err)
	}
	var created []string
	dir := target
	if !fi.IsDir() {
		dir = filepath.Dir(target)
	}
	var missing []string
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
	}
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err == nil {
			created = append(created, d)
		} else if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create mountpoint %s: %w", d, err)
		}
	}
	if !fi.IsDir() {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			_ = f.Close()
			created = append(created, target)
		} else if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create mountpoint %s: %w", target, err)
		}
	}
	if len(created) == 0 {
		return nil
	}
	return lab.RecordMountpoints(created)
}
