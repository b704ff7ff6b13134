package controlplane

import (
	"fmt"
	"os"
	"path/filepath"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"k8s.io/client-go/tools/clientcmd"
)

// Identity is who a kubeconfig authenticates as: a client certificate's common name (the
// Kubernetes user) and organizations (its groups).
type Identity struct {
	User   string
	Groups []string
}

// Well-known identities of the lab.
var (
	// AdminIdentity is the cluster administrator (group system:masters), as kubeadm's admin.conf.
	AdminIdentity = Identity{User: "kubernetes-admin", Groups: []string{"system:masters"}}
	// ControllerManagerIdentity is kube-controller-manager's own identity.
	ControllerManagerIdentity = Identity{User: "system:kube-controller-manager"}
	// SchedulerIdentity is kube-scheduler's identity.
	SchedulerIdentity = Identity{User: "system:kube-scheduler"}
	// KubeProxyIdentity is bound to the system:node-proxier role by default.
	KubeProxyIdentity = Identity{User: "system:kube-proxy"}
)

// NodeIdentity is the identity of a node's kubelet (authorized by the Node authorizer).
func NodeIdentity(node string) Identity {
	return Identity{User: "system:node:" + node, Groups: []string{"system:nodes"}}
}

// writeKubeconfig writes a kubeconfig for server that trusts caPEM and authenticates with the
// client key pair kp, with embedded data (the file is self-contained).
func writeKubeconfig(path, server string, caPEM []byte, user string, kp *KeyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.CertPEM, ClientKeyData: kp.KeyPEM}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "lab"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

// ServiceAccountIdentity is the identity of a service account (the user name and groups its
// tokens carry), for components run as processes that get a client certificate instead of a
// token: RBAC bindings to the service account then apply as they would in a pod.
func ServiceAccountIdentity(namespace, name string) Identity {
	return Identity{
		User:   "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace},
	}
}
