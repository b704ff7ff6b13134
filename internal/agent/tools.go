package agent

// The seeds' tools through the agent (issue 5): `netdoctor tcping|trace|exec
// --node N [--pod NS/NAME]` writes a request carrying a ToolRequest (the
// tool and its options as data, never a shell string); the agent on that
// node runs the tool in the node's network namespace or the pod's (found
// through the CRI, else /proc) and writes a ToolResult under the same result
// name and labels as a check's result, so Cleanup removes it too.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/mtr"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/tcping"
)

// Tools a ToolRequest can name.
const (
	ToolTcping = "tcping"
	ToolTrace  = "trace"
	ToolExec   = "exec"
	// CheckTool is the only check a tool request lists, so that an agent
	// that does not know tools answers it with an empty result (no
	// analysis), which the CLI reports as "agent too old".
	CheckTool = "tool"
	// ToolResultVersion is the version of the ToolResult layout.
	ToolResultVersion = "netdoctor.toolresult/v1"
	// DefaultExecOutput bounds each of an exec's stdout and stderr.
	DefaultExecOutput = 256 << 10
	// MaxExecTimeout bounds an exec's time limit.
	MaxExecTimeout = 10 * time.Minute
)

// ToolRequest is one tool run on one node.
type ToolRequest struct {
	Tool string `json:"tool"` // tcping, trace or exec
	// Pod (NAMESPACE/NAME) whose network namespace to run in; empty: the
	// node's. PodIP helps find it in /proc when the CRI cannot.
	Pod    string      `json:"pod,omitempty"`
	PodIP  string      `json:"podIP,omitempty"`
	Tcping *TcpingSpec `json:"tcping,omitempty"`
	Trace  *TraceSpec  `json:"trace,omitempty"`
	Exec   *ExecSpec   `json:"exec,omitempty"`
	// Capture names its own points (node or pods), so Pod stays empty.
	Capture *CaptureSpec `json:"capture,omitempty"`
}

// TcpingSpec are tcping's options (internal/tcping.Options without the
// namespace, which the agent chooses).
type TcpingSpec struct {
	Target   string        `json:"target"`
	Mode     string        `json:"mode,omitempty"`
	Count    int           `json:"count"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
	Payload  []byte        `json:"payload,omitempty"`
	Expect   []byte        `json:"expect,omitempty"`
	DNSName  string        `json:"dnsName,omitempty"`
	DNSType  uint16        `json:"dnsType,omitempty"`
}

// TraceSpec are trace's options (internal/mtr.Options without the namespace).
type TraceSpec struct {
	Target   string        `json:"target"`
	Protocol string        `json:"protocol,omitempty"`
	Port     int           `json:"port,omitempty"`
	Count    int           `json:"count"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
	MaxHops  int           `json:"maxHops"`
	Size     int           `json:"size,omitempty"`
	Resolve  bool          `json:"resolve,omitempty"`
}

// ExecSpec is a command and its arguments, as data (no shell), with a time
// limit and a bound on the output kept.
type ExecSpec struct {
	Command   string        `json:"command"`
	Args      []string      `json:"args,omitempty"`
	Timeout   time.Duration `json:"timeout"`
	MaxOutput int           `json:"maxOutput,omitempty"` // bytes per stream; 0: DefaultExecOutput
}

// ExecResult is how the command ended and what it printed.
type ExecResult struct {
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
	ExitCode int    `json:"exitCode"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timedOut,omitempty"`
	// Truncated: output beyond MaxOutput was dropped (counted in *Bytes).
	Truncated   bool  `json:"truncated,omitempty"`
	StdoutBytes int64 `json:"stdoutBytes"`
	StderrBytes int64 `json:"stderrBytes"`
}

// ToolResult is an agent's answer to a tool request.
type ToolResult struct {
	Version string `json:"version"`
	Request string `json:"request"`
	Node    string `json:"node"`
	Tool    string `json:"tool"`
	Where   string `json:"where"` // "node N" or "pod NS/NAME on node N"
	// Error says why the tool could not run (bad target, pod not found,
	// program missing); the tool's own failures (timeouts, loss, a non-zero
	// exit) are in its result.
	Error   string         `json:"error,omitempty"`
	Tcping  *tcping.Result `json:"tcping,omitempty"`
	Trace   *mtr.Report    `json:"trace,omitempty"`
	Exec    *ExecResult    `json:"exec,omitempty"`
	Capture *CaptureResult `json:"capture,omitempty"`
}

// errRequestDeleted cancels a tool run whose request the CLI deleted
// (Ctrl-C): nothing waits for its result any more.
var errRequestDeleted = errors.New("request deleted")

// toolRunKey names a running tool: the agent and the request.
type toolRunKey struct {
	a  *Agent
	id string
}

// toolRuns holds the cancel function of every running tool.
var toolRuns sync.Map // toolRunKey -> context.CancelCauseFunc

// requestDeleted stops the tool run of request id, if one runs (the hook
// of Run's watch).
func (a *Agent) requestDeleted(id string) {
	if c, ok := toolRuns.Load(toolRunKey{a, id}); ok {
		c.(context.CancelCauseFunc)(errRequestDeleted)
	}
}

// serveTool runs req's tool and writes its result (the hook of Serve). A
// run whose request is deleted meanwhile is stopped (an exec's process
// group killed) and writes nothing.
func (a *Agent) serveTool(ctx context.Context, req *Request) error {
	dl := req.Deadline.Add(-500 * time.Millisecond)
	cctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	key := toolRunKey{a, req.ID}
	toolRuns.Store(key, stop)
	defer toolRuns.Delete(key)
	wctx, cancel := context.WithDeadline(cctx, dl)
	defer cancel()
	res := a.RunTool(wctx, req.Tool)
	if errors.Is(context.Cause(cctx), errRequestDeleted) {
		return nil
	}
	res.Request, res.Node = req.ID, a.Node
	wctx2, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	return WriteToolResult(wctx2, a.Client, a.Namespace, res)
}

// RunTool runs one tool on this node and returns its result (never nil).
func (a *Agent) RunTool(ctx context.Context, t *ToolRequest) *ToolResult {
	res := &ToolResult{Tool: t.Tool, Where: "node " + a.Node}
	path := a.Netns
	if t.Pod != "" {
		res.Where = "pod " + t.Pod + " on node " + a.Node
		p, err := a.findPodNetns(ctx, cluster.NodeTarget{Node: a.Node, Pod: t.Pod, PodIP: t.PodIP})
		if err != nil {
			res.Error = fmt.Sprintf("find the network namespace of pod %s on node %s: %v", t.Pod, a.Node, err)
			return res
		}
		path = p
	}
	switch {
	case t.Tool == ToolTcping && t.Tcping != nil:
		s := t.Tcping
		r, err := tcping.Run(ctx, tcping.Options{Target: s.Target, Mode: tcping.Mode(s.Mode), Count: s.Count, Interval: s.Interval,
			Timeout: s.Timeout, Netns: path, Payload: s.Payload, Expect: s.Expect, DNSName: s.DNSName, DNSType: s.DNSType}, nil)
		if err != nil {
			res.Error = fmt.Sprintf("tcping %s: %v", s.Target, err)
			return res
		}
		r.Netns = res.Where
		res.Tcping = r
	case t.Tool == ToolTrace && t.Trace != nil:
		s := t.Trace
		r, err := mtr.Run(ctx, mtr.Options{Target: s.Target, Protocol: mtr.Protocol(s.Protocol), Port: s.Port, Count: s.Count,
			Interval: s.Interval, Timeout: s.Timeout, MaxHops: s.MaxHops, Size: s.Size, Netns: path, Resolve: s.Resolve}, nil)
		if err != nil {
			res.Error = fmt.Sprintf("trace %s: %v", s.Target, err)
			return res
		}
		res.Trace = r
	case t.Tool == ToolExec && t.Exec != nil:
		r, err := RunExec(ctx, path, t.Exec)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		res.Exec = r
	case t.Tool == ToolCapture && t.Capture != nil:
		r, err := a.RunCapture(ctx, t.Capture)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		res.Capture = r
	default:
		res.Error = fmt.Sprintf("tool request %q without its options: this agent runs tcping, trace, exec and capture", t.Tool)
	}
	return res
}

// RunExec runs s.Command with s.Args (no shell) in the network namespace at
// path ("" = current), stdin empty, killing its process group at
// s.Timeout (or when ctx ends), keeping at most MaxOutput bytes of each of
// stdout and stderr. An error means the command could not start.
func RunExec(ctx context.Context, path string, s *ExecSpec) (*ExecResult, error) {
	if s.Command == "" {
		return nil, errors.New("exec: no command")
	}
	bin, err := exec.LookPath(s.Command)
	if err != nil {
		return nil, fmt.Errorf("exec %s: %w", s.Command, err)
	}
	limit := s.MaxOutput
	if limit <= 0 {
		limit = DefaultExecOutput
	}
	timeout := s.Timeout
	if timeout <= 0 || timeout > MaxExecTimeout {
		timeout = MaxExecTimeout
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := exec.CommandContext(tctx, bin, s.Args...)
	// Its own process group, killed whole: children the command started
	// (and that hold its pipes) go too.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 2 * time.Second
	out, errb := &boundedBuffer{max: limit}, &boundedBuffer{max: limit}
	c.Stdout, c.Stderr = out, errb
	if err := namespace.Do(path, c.Start); err != nil {
		return nil, fmt.Errorf("exec %s: %w", s.Command, err)
	}
	werr := c.Wait()
	r := &ExecResult{Stdout: out.buf.Bytes(), Stderr: errb.buf.Bytes(), StdoutBytes: out.n, StderrBytes: errb.n,
		Truncated: out.n > int64(limit) || errb.n > int64(limit)}
	if r.Stdout == nil {
		r.Stdout = []byte{}
	}
	if r.Stderr == nil {
		r.Stderr = []byte{}
	}
	if c.ProcessState != nil {
		r.ExitCode = c.ProcessState.ExitCode()
		if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.Signal = ws.Signal().String()
			r.ExitCode = 128 + int(ws.Signal())
		}
	}
	r.TimedOut = errors.Is(tctx.Err(), context.DeadlineExceeded)
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) && !errors.Is(werr, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("exec %s: %w", s.Command, werr)
	}
	return r, nil
}

// boundedBuffer keeps the first max bytes written and counts the rest.
type boundedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
	n   int64
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += int64(len(p))
	if room := b.max - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
		} else {
			b.buf.Write(p)
		}
	}
	return len(p), nil
}

// WriteToolResult creates (or replaces) a tool result, with the labels of a
// check's result (Cleanup removes both).
func WriteToolResult(ctx context.Context, cs kubernetes.Interface, ns string, res *ToolResult) error {
	res.Version = ToolResultVersion
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: resultName(res.Request, res.Node), Namespace: ns,
		Labels: map[string]string{LabelResult: res.Request, LabelNode: nodeLabel(res.Node)}}}
	if err := encode(cm, res); err != nil {
		// Too large even gzipped: keep the result, drop the bulk.
		if res.Exec != nil {
			res.Exec.Stdout, res.Exec.Stderr, res.Exec.Truncated = []byte{}, []byte{}, true
		}
		if res.Trace != nil || res.Tcping != nil || res.Capture != nil {
			res.Error = "result too large for a ConfigMap: " + err.Error()
			res.Trace, res.Tcping, res.Capture = nil, nil, nil
		}
		if err := encode(cm, res); err != nil {
			return err
		}
	}
	if err := putConfigMap(ctx, cs, ns, cm); err != nil {
		return fmt.Errorf("write tool result %s/%s: %w", ns, cm.Name, err)
	}
	return nil
}

// ErrNoToolResult is returned (wrapped) by WaitToolResult when ctx ended
// before the node's agent answered.
var ErrNoToolResult = errors.New("no answer from the agent")

// ErrAgentWithoutTools is returned (wrapped) by WaitToolResult when the
// node's agent answered without running the tool (an older agent).
var ErrAgentWithoutTools = errors.New("the agent answered without running the tool: it is older than this netdoctor (reinstall it)")

// WaitToolResult waits for node's answer to tool request id until ctx ends.
func WaitToolResult(ctx context.Context, cs kubernetes.Interface, ns, id, node string) (*ToolResult, error) {
	sel := LabelResult + "=" + id
	var got *ToolResult
	var bad error
	take := func(cm *corev1.ConfigMap) {
		var r ToolResult
		if err := decode(cm, &r); err != nil {
			bad = err
			return
		}
		if r.Node != node || r.Request != id {
			return
		}
		if r.Version != ToolResultVersion {
			bad = fmt.Errorf("%w (result %s is %q)", ErrAgentWithoutTools, cm.Name, r.Version)
			return
		}
		got = &r
	}
	for got == nil && bad == nil && ctx.Err() == nil {
		l, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		for i := range l.Items {
			take(&l.Items[i])
		}
		if got != nil || bad != nil {
			break
		}
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
					take(cm)
				}
			}
			if got != nil || bad != nil {
				break
			}
		}
		w.Stop()
	}
	switch {
	case got != nil:
		return got, nil
	case bad != nil:
		return nil, fmt.Errorf("node %s: %w", node, bad)
	}
	return nil, fmt.Errorf("node %s: %w", node, ErrNoToolResult)
}
