package install_test

// The admission policy against a real API server: the lab's control plane
// (etcd, kube-apiserver, controller-manager, scheduler from
// bin/netdoctor-k8s) in a fresh network namespace, the agent's
// ServiceAccount impersonated. Skips, saying why, without root or the binary.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netdoctor/netdoctor/internal/agent"
	"github.com/netdoctor/netdoctor/internal/install"
	"github.com/netdoctor/netdoctor/internal/lab/controlplane"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestPolicyNamesMatchTheAgent(t *testing.T) {
	if install.LabelRequest != agent.LabelRequest {
		t.Errorf("install.LabelRequest %q, agent.LabelRequest %q: the policy would guard the wrong label", install.LabelRequest, agent.LabelRequest)
	}
	var sa *corev1.ServiceAccount
	var pol *admissionv1.ValidatingAdmissionPolicy
	for _, o := range install.Objects(install.Options{}) {
		switch x := o.(type) {
		case *corev1.ServiceAccount:
			sa = x
		case *admissionv1.ValidatingAdmissionPolicy:
			pol = x
		}
	}
	if sa == nil || pol == nil {
		t.Fatalf("objects lack the ServiceAccount (%v) or the policy (%v)", sa != nil, pol != nil)
	}
	if want := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name; install.AgentUser != want {
		t.Errorf("AgentUser %q, the ServiceAccount authenticates as %q", install.AgentUser, want)
	}
	if len(pol.Spec.MatchConditions) != 1 || !strings.Contains(pol.Spec.MatchConditions[0].Expression, install.AgentUser) {
		t.Errorf("policy match conditions %+v do not name %s", pol.Spec.MatchConditions, install.AgentUser)
	}
}

// startControlPlane starts the lab control plane in a fresh netns, with
// everything removed on cleanup, and returns its admin REST config.
func startControlPlane(t *testing.T) (*controlplane.ControlPlane, *rest.Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped in -short: starts a real control plane")
	}
	testutil.RequireRoot(t)
	bin, err := controlplane.FindK8sBin()
	if err != nil {
		// Tests run from the package directory: look at the repo's bin/.
		p, e := filepath.Abs("../../bin/netdoctor-k8s")
		if e != nil {
			t.Skipf("skipped: no lab Kubernetes binary (%v)", err)
		}
		if _, e := os.Stat(p); e != nil {
			t.Skipf("skipped: no lab Kubernetes binary (%v): run `make labbins` or set NETDOCTOR_K8S_BIN", err)
		}
		bin = p
	}
	ns := testutil.NewNetns(t, "inst-api")
	testutil.MustRun(t, ns, "ip", "addr", "add", controlplane.DefaultAdvertiseIP+"/32", "dev", "lo")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{StateDir: t.TempDir(), K8sBin: bin, Netns: testutil.Path(ns)})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	t.Logf("control plane started in %s", time.Since(start).Round(time.Millisecond))
	rc, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cp, rc
}

func cmWith(name string, l map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: install.Namespace, Labels: l},
		Data: map[string]string{"json": `{"tool":{"name":"exec","args":["id"]}}`}}
}

// deniedByPolicy says whether err is the policy's refusal.
func deniedByPolicy(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), install.PolicyMessage) &&
		strings.Contains(err.Error(), install.PolicyName)
}

func TestAgentServiceAccountCannotWriteRequests(t *testing.T) {
	cp, rc := startControlPlane(t)
	args, err := cp.Args(controlplane.APIServer)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range args {
		if (strings.HasPrefix(a, "--disable-admission-plugins=") || strings.HasPrefix(a, "--admission-control=")) && strings.Contains(a, "ValidatingAdmissionPolicy") {
			t.Fatalf("the lab API server turns the policy plugin off or pins the plugin list: %s", a)
		}
	}
	admin := kubernetes.NewForConfigOrDie(rc)
	arc := rest.CopyConfig(rc)
	arc.Impersonate = rest.ImpersonationConfig{UserName: install.AgentUser}
	sa := kubernetes.NewForConfigOrDie(arc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := install.Apply(ctx, admin, install.Objects(install.Options{})); err != nil {
		t.Fatalf("install: %v", err)
	}
	// Applying twice updates the policy and binding in place.
	if err := install.Apply(ctx, admin, install.Objects(install.Options{})); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
	cms := sa.CoreV1().ConfigMaps(install.Namespace)
	acms := admin.CoreV1().ConfigMaps(install.Namespace)

	// The API server loads a new policy within a moment: wait for the
	// refusal, removing what got through before it was in force.
	var first error
	for {
		_, first = cms.Create(ctx, cmWith("agent-request", map[string]string{install.LabelRequest: "forged"}), metav1.CreateOptions{})
		if deniedByPolicy(first) {
			break
		}
		if first == nil {
			_ = acms.Delete(ctx, "agent-request", metav1.DeleteOptions{})
		} else if !apierrors.IsForbidden(first) {
			t.Fatalf("agent creates a request: %v, want the policy's refusal", first)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the policy never refused the agent a request (last: %v)", first)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("agent creating a request: %v", first)

	// The policy's CEL type-checks clean against ConfigMaps.
	for {
		p, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, install.PolicyName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tc := p.Status.TypeChecking; tc != nil && p.Status.ObservedGeneration == p.Generation {
			if len(tc.ExpressionWarnings) > 0 {
				t.Errorf("policy type checking: %+v", tc.ExpressionWarnings)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("policy status never type-checked: %+v", p.Status)
		case <-time.After(200 * time.Millisecond):
		}
	}

	// The admin (the CLI's user) writes a request; the agent a result.
	if _, err := acms.Create(ctx, cmWith("admin-request", map[string]string{install.LabelRequest: "r1"}), metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creates a request: %v", err)
	}
	if _, err := cms.Create(ctx, cmWith("agent-result", map[string]string{agent.LabelResult: "r1", agent.LabelNode: "n1"}), metav1.CreateOptions{}); err != nil {
		t.Fatalf("agent creates a result: %v", err)
	}

	relabel := func(name string, mod func(l map[string]string)) func() error {
		return func() error {
			cur, err := cms.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			mod(cur.Labels)
			_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}
	}
	patch := func(name, body string) func() error {
		return func() error {
			_, err := cms.Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
			return err
		}
	}
	tests := []struct {
		name   string
		do     func() error
		denied bool
	}{
		{"agent creates a request in a second form (empty label value)", func() error {
			_, err := cms.Create(ctx, cmWith("agent-request-2", map[string]string{install.LabelRequest: ""}), metav1.CreateOptions{})
			return err
		}, true},
		{"agent updates its result", patch("agent-result", `{"data":{"json":"{}"}}`), false},
		{"agent updates its result, replacing it", relabel("agent-result", func(l map[string]string) { l[agent.LabelNode] = "n2" }), false},
		{"agent creates an unlabelled configmap", func() error {
			_, err := cms.Create(ctx, cmWith("agent-plain", nil), metav1.CreateOptions{})
			return err
		}, false},
		{"agent turns its result into a request (update)", relabel("agent-result", func(l map[string]string) { l[install.LabelRequest] = "forged" }), true},
		{"agent turns its result into a request (merge patch)", patch("agent-result", `{"metadata":{"labels":{"`+install.LabelRequest+`":"forged"}}}`), true},
		{"agent turns an unlabelled configmap into a request", relabel("agent-plain", func(l map[string]string) { l[install.LabelRequest] = "forged" }), true},
		{"agent rewrites the admin's request", patch("admin-request", `{"data":{"json":"{\"tool\":{\"name\":\"exec\",\"args\":[\"sh\"]}}"}}`), true},
		{"agent strips the admin's request of its label", patch("admin-request", `{"metadata":{"labels":{"`+install.LabelRequest+`":null}}}`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			switch {
			case tt.denied && !deniedByPolicy(err):
				t.Errorf("got %v, want the policy's refusal", err)
			case !tt.denied && err != nil:
				t.Errorf("refused: %v", err)
			}
		})
	}
	// Nothing refused reached the store.
	l, err := acms.List(ctx, metav1.ListOptions{LabelSelector: install.LabelRequest})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 1 || l.Items[0].Name != "admin-request" || l.Items[0].Data["json"] != cmWith("", nil).Data["json"] {
		t.Errorf("requests after the refusals: %+v, want only the admin's, unchanged", l.Items)
	}
	// The admin changes its own request.
	if _, err := acms.Patch(ctx, "admin-request", types.MergePatchType, []byte(`{"data":{"json":"{}"}}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("admin updates its request: %v", err)
	}

	// Uninstall removes the cluster-scoped policy and binding too.
	if err := install.Uninstall(ctx, admin, true); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	_, perr := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, install.PolicyName, metav1.GetOptions{})
	_, berr := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, install.PolicyName, metav1.GetOptions{})
	if !apierrors.IsNotFound(perr) || !apierrors.IsNotFound(berr) {
		t.Errorf("after uninstall: policy %v, binding %v; want both not found", perr, berr)
	}
	if err := install.Uninstall(ctx, admin, true); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}
