package install

import (
	"context"
	"errors"
	"fmt"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
)

// Apply creates the objects, or updates those that exist (kubectl apply
// without the three-way merge: our objects are wholly ours).
func Apply(ctx context.Context, cs kubernetes.Interface, objs []runtime.Object) error {
	for _, o := range objs {
		if err := applyOne(ctx, cs, o); err != nil {
			return err
		}
	}
	return nil
}

func applyOne(ctx context.Context, cs kubernetes.Interface, o runtime.Object) error {
	var err error
	var what string
	cm := metav1.CreateOptions{FieldManager: "netdoctor"}
	um := metav1.UpdateOptions{FieldManager: "netdoctor"}
	switch x := o.(type) {
	case *corev1.Namespace:
		what = "namespace " + x.Name
		_, err = cs.CoreV1().Namespaces().Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			err = nil // namespaces carry no spec of ours to update
		}
	case *admissionv1.ValidatingAdmissionPolicy:
		what = "validatingadmissionpolicy " + x.Name
		_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			var cur *admissionv1.ValidatingAdmissionPolicy
			if cur, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, x.Name, metav1.GetOptions{}); err == nil {
				x.ResourceVersion = cur.ResourceVersion
				_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Update(ctx, x, um)
			}
		}
	case *admissionv1.ValidatingAdmissionPolicyBinding:
		what = "validatingadmissionpolicybinding " + x.Name
		_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			var cur *admissionv1.ValidatingAdmissionPolicyBinding
			if cur, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, x.Name, metav1.GetOptions{}); err == nil {
				x.ResourceVersion = cur.ResourceVersion
				_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Update(ctx, x, um)
			}
		}
	case *corev1.ServiceAccount:
		what = "serviceaccount " + x.Namespace + "/" + x.Name
		_, err = cs.CoreV1().ServiceAccounts(x.Namespace).Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	case *rbacv1.ClusterRole:
		what = "clusterrole " + x.Name
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			var cur *rbacv1.ClusterRole
			if cur, err = cs.RbacV1().ClusterRoles().Get(ctx, x.Name, metav1.GetOptions{}); err == nil {
				x.ResourceVersion = cur.ResourceVersion
				_, err = cs.RbacV1().ClusterRoles().Update(ctx, x, um)
			}
		}
	case *rbacv1.ClusterRoleBinding:
		what = "clusterrolebinding " + x.Name
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			err = nil // roleRef is immutable; ours never changes
		}
	case *rbacv1.Role:
		what = "role " + x.Namespace + "/" + x.Name
		_, err = cs.RbacV1().Roles(x.Namespace).Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			var cur *rbacv1.Role
			if cur, err = cs.RbacV1().Roles(x.Namespace).Get(ctx, x.Name, metav1.GetOptions{}); err == nil {
				x.ResourceVersion = cur.ResourceVersion
				_, err = cs.RbacV1().Roles(x.Namespace).Update(ctx, x, um)
			}
		}
	case *rbacv1.RoleBinding:
		what = "rolebinding " + x.Namespace + "/" + x.Name
		_, err = cs.RbacV1().RoleBindings(x.Namespace).Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	case *appsv1.DaemonSet:
		what = "daemonset " + x.Namespace + "/" + x.Name
		_, err = cs.AppsV1().DaemonSets(x.Namespace).Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			var cur *appsv1.DaemonSet
			if cur, err = cs.AppsV1().DaemonSets(x.Namespace).Get(ctx, x.Name, metav1.GetOptions{}); err == nil {
				x.ResourceVersion = cur.ResourceVersion
				_, err = cs.AppsV1().DaemonSets(x.Namespace).Update(ctx, x, um)
			}
		}
	case *corev1.Service:
		what = "service " + x.Namespace + "/" + x.Name
		_, err = cs.CoreV1().Services(x.Namespace).Create(ctx, x, cm)
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	default:
		return fmt.Errorf("apply: unsupported object %T", o)
	}
	if err != nil {
		return fmt.Errorf("apply %s: %w", what, err)
	}
	return nil
}

// Installed says whether the agent DaemonSet exists, and whether it is a
// temporary one (left by an interrupted check).
func Installed(ctx context.Context, cs kubernetes.Interface) (installed, temporary bool, err error) {
	ds, err := cs.AppsV1().DaemonSets(Namespace).Get(ctx, AgentName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("get daemonset %s/%s: %w", Namespace, AgentName, err)
	}
	return true, ds.Labels[LabelTemporary] == "true", nil
}

// Uninstall removes everything Install created: the cluster-scoped RBAC, the
// admission policy and its binding, and the namespace (which takes the rest, requests and results included). With
// wait it waits, within ctx, until the namespace is gone and with it every
// agent pod. Missing objects are not an error.
func Uninstall(ctx context.Context, cs kubernetes.Interface, wait bool) error {
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	var errs []error
	if err := cs.RbacV1().ClusterRoleBindings().Delete(ctx, AgentName, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete clusterrolebinding %s: %w", AgentName, err))
	}
	if err := cs.RbacV1().ClusterRoles().Delete(ctx, AgentName, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete clusterrole %s: %w", AgentName, err))
	}
	// The namespace goes below, and the agent's ServiceAccount with it: the
	// policy that guards it may go too (binding first, as kubectl would).
	if err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, PolicyName, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete validatingadmissionpolicybinding %s: %w", PolicyName, err))
	}
	if err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, PolicyName, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete validatingadmissionpolicy %s: %w", PolicyName, err))
	}
	// Delete the DaemonSets first so their pods go at once, even where the
	// namespace controller is slow.
	for _, name := range []string{AgentName, TargetName} {
		if err := cs.AppsV1().DaemonSets(Namespace).Delete(ctx, name, opts); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete daemonset %s/%s: %w", Namespace, name, err))
		}
	}
	if err := cs.CoreV1().Namespaces().Delete(ctx, Namespace, opts); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete namespace %s: %w", Namespace, err))
	}
	if len(errs) > 0 || !wait {
		return errors.Join(errs...)
	}
	for {
		_, err := cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s still terminating: %w", Namespace, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// WaitReady waits, within ctx, until the agent DaemonSet has a ready pod on
// every node it is scheduled to (or on want nodes when not zero) and
// returns the ready count.
func WaitReady(ctx context.Context, cs kubernetes.Interface, want int) (int, error) {
	for {
		ds, err := cs.AppsV1().DaemonSets(Namespace).Get(ctx, AgentName, metav1.GetOptions{})
		if err == nil {
			target := int(ds.Status.DesiredNumberScheduled)
			if want > 0 {
				target = want
			}
			if target > 0 && int(ds.Status.NumberReady) >= target && ds.Status.ObservedGeneration >= ds.Generation {
				return int(ds.Status.NumberReady), nil
			}
		}
		select {
		case <-ctx.Done():
			ready := 0
			if ds != nil {
				ready = int(ds.Status.NumberReady)
			}
			return ready, fmt.Errorf("agent daemonset %s/%s: %d ready: %w", Namespace, AgentName, ready, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
