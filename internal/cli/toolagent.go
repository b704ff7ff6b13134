package cli

// tcping, trace and exec with --node: run by the netdoctor agent on that
// node (internal/agent/tools.go), through the same request and result
// ConfigMaps as check. The CLI writes the request (tool and options as
// data), waits for the node's result, prints it as the local run does, and
// deletes both afterwards, also on Ctrl-C.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/cri"
	"github.com/netdoctor/netdoctor/internal/install"
)

// toolAgentMargin is the time the agent gets on top of the tool's own run
// time (API round trips, finding the pod's namespace, reverse lookups).
const toolAgentMargin = 15 * time.Second

// temporaryAgentStart is the extra wait when a temporary agent is deployed
// for the run (image pull, pod start).
const temporaryAgentStart = 60 * time.Second

// newToolKubeFlags are check's kubectl flags without -n/--namespace and
// -s/--server, whose shorthands the tools use for their own options.
func newToolKubeFlags() *kubeFlags {
	return newKubeFlags(false)
}

// deployTemporaryAgent deploys a temporary agent and returns the function that removes it
// again. The caller defers it, so that the agent goes whatever happens; it works with a
// fresh context, Ctrl-C having cancelled the command's. Warnings go to warn.
func deployTemporaryAgent(ctx context.Context, cs kubernetes.Interface, image string, warn io.Writer) (remove func(), err error) {
	remove = func() {
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if uerr := install.Uninstall(cctx, cs, true); uerr != nil {
			_, _ = fmt.Fprintf(warn, "warning: remove the temporary agent: %v (run `netdoctor uninstall`)\n", uerr)
		}
	}
	if err := install.Apply(ctx, cs, install.Objects(install.Options{Image: image, Temporary: true})); err != nil {
		remove()
		return nil, &ExitCodeError{Code: ExitError, Err: fmt.Errorf("deploy the temporary agent: %w", err)}
	}
	return remove, nil
}

// noAgentNotice is what the tools print before they deploy a temporary agent.
const noAgentNotice = "no netdoctor agent installed: deploying a temporary one (removed afterwards)\n"

// checkNodeFlags refuses the local-only placement flags with --node.
func (w *toolWhere) checkNodeFlags() error {
	if w.netns != "" || w.pid != 0 {
		return UsageError("--node runs on that node through its agent: --netns and --pid are for a local run (use --pod NS/NAME for a pod on the node)")
	}
	if w.criEndpoint != "" {
		return UsageError("--cri-endpoint is for a local run: the agent on --node uses its node's runtime")
	}
	return nil
}

// runOnNode sends tool to the agent on w.node and returns its result. run is
// how long the tool itself may take. Errors are ExitCodeErrors (exit 2).
func runOnNode(cmd *cobra.Command, w *toolWhere, tool *agent.ToolRequest, run time.Duration) (*agent.ToolResult, error) {
	if err := w.checkNodeFlags(); err != nil {
		return nil, err
	}
	ctx := cmd.Context()
	cs := w.client
	if cs == nil {
		c, _, err := connect(ctx, w.kube)
		if err != nil {
			return nil, err
		}
		cs = c
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, w.node, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			var names []string
			if l, lerr := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); lerr == nil {
				for _, n := range l.Items {
					names = append(names, n.Name)
				}
				sort.Strings(names)
			}
			return nil, UsageError("--node: no node %q in the cluster (nodes: %s)", w.node, strings.Join(names, ", "))
		}
		return nil, UsageError("--node: read node %s: %v", w.node, err)
	}
	if w.pod != "" {
		ns, name, err := cri.SplitPodRef(w.pod)
		if err != nil {
			return nil, UsageError("--pod: %v", err)
		}
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return nil, UsageError("--pod: no pod %s/%s in the cluster", ns, name)
			}
			return nil, UsageError("--pod: read pod %s/%s: %v", ns, name, err)
		}
		if pod.Spec.NodeName != w.node {
			where := "is not scheduled yet"
			if pod.Spec.NodeName != "" {
				where = "runs on node " + pod.Spec.NodeName
			}
			return nil, UsageError("--pod %s/%s %s, not on --node %s", ns, name, where, w.node)
		}
		if pod.Spec.HostNetwork {
			return nil, UsageError("--pod %s/%s uses the host network: run without --pod on node %s", ns, name, w.node)
		}
		tool.Pod, tool.PodIP = ns+"/"+name, pod.Status.PodIP
	}
	wait := run + toolAgentMargin
	installed := false
	if !w.temporaryAgent {
		var err error
		if installed, _, err = install.Installed(ctx, cs); err != nil {
			return nil, &ExitCodeError{Code: ExitError, Err: err}
		}
	}
	switch {
	case w.temporaryAgent:
		// The caller deployed a temporary agent for several runs and removes it.
		wait += temporaryAgentStart
	case !installed:
		_, _ = fmt.Fprint(cmd.ErrOrStderr(), noAgentNotice)
		remove, err := deployTemporaryAgent(ctx, cs, w.image, cmd.ErrOrStderr())
		if err != nil {
			return nil, err
		}
		defer remove()
		wait += temporaryAgentStart
	case !agentPodRunning(ctx, cs, w.node):
		_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "warning: no running netdoctor agent pod on node %s; waiting up to %s for an answer\n", w.node, wait.Round(time.Second))
	}
	req := &agent.Request{ID: agent.NewID(), Nodes: []string{w.node}, Checks: []string{agent.CheckTool},
		Deadline: time.Now().Add(wait), Tool: tool}
	if err := agent.WriteRequest(ctx, cs, install.Namespace, req); err != nil {
		return nil, &ExitCodeError{Code: ExitError, Err: err}
	}
	defer func() {
		// A fresh context: ctx is cancelled on Ctrl-C.
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if cerr := agent.Cleanup(cctx, cs, install.Namespace, req.ID); cerr != nil {
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", cerr)
		}
	}()
	wctx, cancel := context.WithDeadline(ctx, req.Deadline)
	defer cancel()
	res, err := agent.WaitToolResult(wctx, cs, install.Namespace, req.ID, w.node)
	if ctx.Err() != nil {
		return nil, UsageError("interrupted")
	}
	if errors.Is(err, agent.ErrNoToolResult) {
		return nil, UsageError("no answer from the netdoctor agent on node %s within %s: is it running there? (kubectl -n %s get pods -o wide --field-selector spec.nodeName=%s)",
			w.node, wait.Round(time.Second), install.Namespace, w.node)
	}
	if err != nil {
		return nil, UsageError("%v", err)
	}
	if res.Error != "" {
		return nil, UsageError("%s: %s", res.Where, res.Error)
	}
	return res, nil
}

// ExitTimedOut is exec --node's exit code when the command was killed at
// its --timeout (as timeout(1)).
const ExitTimedOut = 124

// execOnNode runs args through the agent on w.node and prints the result.
func execOnNode(cmd *cobra.Command, w *toolWhere, args []string, timeout time.Duration, maxOutput int) error {
	if err := CheckOutput(); err != nil {
		return err
	}
	if timeout <= 0 || timeout > agent.MaxExecTimeout {
		return UsageError("--timeout %s: give a positive time limit up to %s", timeout, agent.MaxExecTimeout)
	}
	if maxOutput <= 0 || maxOutput > agent.MaxObjectBytes/2 {
		return UsageError("--max-output %d: 1..%d bytes (results travel in a ConfigMap)", maxOutput, agent.MaxObjectBytes/2)
	}
	spec := &agent.ExecSpec{Command: args[0], Args: args[1:], Timeout: timeout, MaxOutput: maxOutput}
	tr, err := runOnNode(cmd, w, &agent.ToolRequest{Tool: agent.ToolExec, Exec: spec}, timeout)
	if err != nil {
		return err
	}
	r := tr.Exec
	if r == nil {
		return UsageError("%s: the agent returned no exec result", tr.Where)
	}
	if Globals.Output == "json" {
		if err := writeJSON(cmd.OutOrStdout(), tr); err != nil {
			return err
		}
	} else {
		_, _ = cmd.OutOrStdout().Write(r.Stdout)
		_, _ = cmd.ErrOrStderr().Write(r.Stderr)
		if r.Truncated {
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "netdoctor: output truncated: %d bytes of stdout and %d of stderr, %d of each kept (--max-output)\n",
				r.StdoutBytes, r.StderrBytes, maxOutput)
		}
		if r.TimedOut {
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "netdoctor: %s killed after --timeout %s on %s\n", args[0], timeout, tr.Where)
		}
	}
	switch {
	case r.TimedOut:
		return &ExitCodeError{Code: ExitTimedOut}
	case r.ExitCode != 0:
		return &ExitCodeError{Code: r.ExitCode}
	}
	return nil
}

// agentPodRunning says whether the agent DaemonSet has a running pod on
// node (true when that cannot be read: the wait decides then).
func agentPodRunning(ctx context.Context, cs kubernetes.Interface, node string) bool {
	l, err := cs.CoreV1().Pods(install.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: cluster.LabelAppName + "=" + install.AgentName, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return true
	}
	for _, p := range l.Items {
		if p.Status.Phase == corev1.PodRunning {
			return true
		}
	}
	return false
}
