package lab

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Sample workloads: a web Deployment and Service in each of these namespaces.
var SampleNamespaces = []string{"default", "shop"}

// SampleName is the name of the sample Deployment and Service.
const SampleName = "web"

// SampleImage is the sample's image; the lab runs its test server for it.
const SampleImage = "nginx:1.27"

// SamplePort is the sample's container and service port.
const SamplePort = 80

// SampleObjects returns the namespace (unless default), the web Deployment (one replica per
// node, spread with a hard topology spread constraint on the hostname) and the web Service.
func SampleObjects(ns string, nodes int) (*corev1.Namespace, *appsv1.Deployment, *corev1.Service) {
	labels := map[string]string{"app": SampleName}
	replicas := int32(nodes)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: SampleName, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: SampleName, Image: SampleImage,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: SamplePort, Protocol: corev1.ProtocolTCP}},
					}},
				},
			},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: SampleName, Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: SamplePort, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}
	var nsObj *corev1.Namespace
	if ns != metav1.NamespaceDefault {
		nsObj = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	}
	return nsObj, dep, svc
}

// ApplySamples creates the sample workloads (existing ones are kept).
func ApplySamples(ctx context.Context, cs kubernetes.Interface, nodes int) error {
	for _, ns := range SampleNamespaces {
		nsObj, dep, svc := SampleObjects(ns, nodes)
		if nsObj != nil {
			if _, err := cs.CoreV1().Namespaces().Create(ctx, nsObj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create namespace %s: %w", ns, err)
			}
		}
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create deployment %s/%s: %w", ns, dep.Name, err)
		}
		if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create service %s/%s: %w", ns, svc.Name, err)
		}
	}
	return nil
}
