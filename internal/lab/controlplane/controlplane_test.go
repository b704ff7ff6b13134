package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{StateDir: "/tmp/x"}.WithDefaults()
	tests := []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no state dir", func(c *Config) { c.StateDir = "" }, "state directory"},
		{"loopback advertise", func(c *Config) { c.AdvertiseIP = "127.0.0.1" }, "loopback"},
		{"bad advertise", func(c *Config) { c.AdvertiseIP = "nope" }, "not an IPv4"},
		{"bad service cidr", func(c *Config) { c.ServiceCIDR = "198.19.0.0" }, "service CIDR"},
		{"bad cluster cidr", func(c *Config) { c.ClusterCIDR = "x" }, "cluster CIDR"},
		{"overlap", func(c *Config) { c.ServiceCIDR = "198.18.128.0/20" }, "overlaps"},
		{"mask too small", func(c *Config) { c.NodeCIDRMaskSize = 16 }, "does not fit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	if ok.AdvertiseIP != "198.18.0.2" || ok.ServiceCIDR != "198.19.0.0/16" || ok.ClusterCIDR != "198.18.128.0/17" || ok.NodeCIDRMaskSize != 24 {
		t.Fatalf("defaults do not follow the lab address plan: %+v", ok)
	}
}

func TestMergeArgs(t *testing.T) {
	tests := []struct {
		name        string
		base, extra []string
		want        []string
	}{
		{"none", []string{"--a=1", "--b=2"}, nil, []string{"--a=1", "--b=2"}},
		{"replace", []string{"--a=1", "--b=2"}, []string{"--a=9"}, []string{"--b=2", "--a=9"}},
		{"add", []string{"--a=1"}, []string{"--c"}, []string{"--a=1", "--c"}},
		{"slice flag replaced, not appended", []string{"--controllers=*", "--x=1"}, []string{"--controllers=*,-nodeipam"}, []string{"--x=1", "--controllers=*,-nodeipam"}},
		{"prefix is not the same flag", []string{"--cluster-cidr=a", "--cluster-cidr-extra=b"}, []string{"--cluster-cidr=c"}, []string{"--cluster-cidr-extra=b", "--cluster-cidr=c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MergeArgs(tt.base, tt.extra); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("MergeArgs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	cp := &ControlPlane{Config: Config{StateDir: "/s"}.WithDefaults()}
	tests := []struct {
		component string
		want      []string
	}{
		{Etcd, []string{"--listen-client-urls=http://127.0.0.1:2379", "--data-dir=/s/etcd"}},
		{APIServer, []string{"--advertise-address=198.18.0.2", "--bind-address=198.18.0.2", "--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=198.19.0.0/16", "--client-ca-file=/s/pki/ca.crt", "--service-account-signing-key-file=/s/pki/sa.key"}},
		{ControllerManager, []string{"--allocate-node-cidrs=true", "--cluster-cidr=198.18.128.0/17", "--node-cidr-mask-size=24",
			"--leader-elect=false", "--root-ca-file=/s/pki/ca.crt", "--service-account-private-key-file=/s/pki/sa.key", "--controllers=*"}},
		{Scheduler, []string{"--kubeconfig=/s/kubeconfigs/scheduler.conf", "--leader-elect=false"}},
	}
	for _, tt := range tests {
		t.Run(tt.component, func(t *testing.T) {
			args, err := cp.Args(tt.component)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !contains(args, w) {
					t.Errorf("%s args lack %s: %v", tt.component, w, args)
				}
			}
		})
	}
	if _, err := cp.Args("kubelet"); err == nil {
		t.Fatal("want error for unknown component")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestPKIAndKubeconfigs(t *testing.T) {
	dir := t.TempDir()
	cp := &ControlPlane{Config: Config{StateDir: dir}.WithDefaults(), Server: "https://198.18.0.2:6443"}
	for _, d := range []string{cp.Config.pkiDir(), cp.Config.kubeconfigDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := cp.writePKI(); err != nil {
		t.Fatal(err)
	}
	ca, err := loadCA(cp.Config.pkiDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	// The serving certificate is valid for every name nodes and pods use for the API server.
	serving := readCert(t, filepath.Join(cp.Config.pkiDir(), "apiserver.crt"))
	for _, name := range []string{"198.18.0.2", "198.19.0.1", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if _, err := serving.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("serving certificate not valid for %s: %v", name, err)
		}
	}

	// Kubeconfigs authenticate with client certificates of the right user and groups.
	node, err := cp.NodeKubeconfig("node1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path   string
		user   string
		groups []string
	}{
		{filepath.Join(dir, "kubeconfigs", "admin.conf"), "kubernetes-admin", []string{"system:masters"}},
		{cp.ComponentKubeconfig("controller-manager"), "system:kube-controller-manager", nil},
		{cp.ComponentKubeconfig("scheduler"), "system:kube-scheduler", nil},
		{cp.ComponentKubeconfig("kube-proxy"), "system:kube-proxy", nil},
		{node, "system:node:node1", []string{"system:nodes"}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			rc, err := clientcmd.BuildConfigFromFlags("", tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != cp.Server {
				t.Errorf("server %s, want %s", rc.Host, cp.Server)
			}
			block, _ := pem.Decode(rc.CertData)
			if block == nil {
				t.Fatal("no client certificate")
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("client certificate does not chain to the lab CA: %v", err)
			}
			if cert.Subject.CommonName != tt.user || !reflect.DeepEqual(cert.Subject.Organization, tt.groups) {
				t.Errorf("subject %s %v, want %s %v", cert.Subject.CommonName, cert.Subject.Organization, tt.user, tt.groups)
			}
			if string(rc.CAData) != string(ca.CertPEM) {
				t.Error("kubeconfig does not trust the lab CA")
			}
		})
	}
	st, err := os.Stat(filepath.Join(cp.Config.pkiDir(), "sa.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("service account key: %v, %v", st, err)
	}
	// The service account key is an RSA key the API server can load.
	b, _ := os.ReadFile(filepath.Join(cp.Config.pkiDir(), "sa.key"))
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "RSA PRIVATE KEY" {
		t.Fatal("sa.key is not a PEM RSA private key")
	} else if _, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKubeProxyManifests(t *testing.T) {
	objs := KubeProxyManifests("198.18.128.0/17", "nftables")
	var cm *corev1.ConfigMap
	var ds *appsv1.DaemonSet
	var crb *rbacv1.ClusterRoleBinding
	for _, o := range objs {
		switch v := o.(type) {
		case *corev1.ConfigMap:
			cm = v
		case *appsv1.DaemonSet:
			ds = v
		case *rbacv1.ClusterRoleBinding:
			crb = v
		}
	}
	if cm == nil || ds == nil || crb == nil || len(objs) != 4 {
		t.Fatalf("manifests: %d objects, configmap %v daemonset %v binding %v", len(objs), cm != nil, ds != nil, crb != nil)
	}
	var conf map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["config.conf"]), &conf); err != nil {
		t.Fatalf("config.conf is not YAML: %v", err)
	}
	if conf["kind"] != "KubeProxyConfiguration" || conf["clusterCIDR"] != "198.18.128.0/17" || conf["mode"] != "nftables" {
		t.Fatalf("config.conf: %v", conf)
	}
	if cc := conf["clientConnection"].(map[string]any); cc["kubeconfig"] != "/var/lib/kube-proxy/kubeconfig.conf" {
		t.Fatalf("config.conf kubeconfig: %v", cc)
	}
	if !strings.Contains(cm.Data["kubeconfig.conf"], "server: https://198.18.0.2:6443") ||
		!strings.Contains(cm.Data["kubeconfig.conf"], "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token") {
		t.Fatalf("kubeconfig.conf:\n%s", cm.Data["kubeconfig.conf"])
	}
	if crb.RoleRef.Name != "system:node-proxier" || crb.Subjects[0].Name != "kube-proxy" || crb.Subjects[0].Namespace != "kube-system" {
		t.Fatalf("binding: %+v", crb)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || c.Image != KubeProxyImage ||
		!reflect.DeepEqual(c.Command, []string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"}) ||
		c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" || spec.ServiceAccountName != "kube-proxy" {
		t.Fatalf("daemonset pod spec: %+v", spec)
	}
	cp := &ControlPlane{Config: Config{ClusterCIDR: "10.9.0.0/16"}, Server: "https://198.18.0.9:6443"}
	for _, o := range cp.KubeProxyManifests("iptables") {
		if m, ok := o.(*corev1.ConfigMap); ok && (!strings.Contains(m.Data["config.conf"], "clusterCIDR: 10.9.0.0/16") ||
			!strings.Contains(m.Data["kubeconfig.conf"], "198.18.0.9")) {
			t.Fatalf("control plane's kube-proxy manifests ignore its config:\n%s", m.Data["config.conf"])
		}
	}
}

func TestCoreDNSManifests(t *testing.T) {
	objs := CoreDNSManifests("", "")
	var cm *corev1.ConfigMap
	var dep *appsv1.Deployment
	var svc *corev1.Service
	for _, o := range objs {
		switch v := o.(type) {
		case *corev1.ConfigMap:
			cm = v
		case *appsv1.Deployment:
			dep = v
		case *corev1.Service:
			svc = v
		}
	}
	if cm == nil || dep == nil || svc == nil {
		t.Fatal("missing coredns objects")
	}
	cf := cm.Data["Corefile"]
	for _, want := range []string{"kubernetes cluster.local in-addr.arpa ip6.arpa", "forward . 198.18.0.53", "errors", "health", "ready", "cache 30", "loop", "reload"} {
		if !strings.Contains(cf, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, cf)
		}
	}
	if strings.Contains(cf, "resolv.conf") {
		t.Error("Corefile forwards to the host's resolver")
	}
	if *dep.Spec.Replicas != 2 || dep.Spec.Template.Spec.Containers[0].Image != CoreDNSImage || dep.Spec.Template.Spec.PriorityClassName != "system-cluster-critical" {
		t.Fatalf("deployment: %+v", dep.Spec)
	}
	if svc.Name != "kube-dns" || svc.Spec.ClusterIP != "198.19.0.10" || len(svc.Spec.Ports) < 2 ||
		svc.Spec.Ports[0].Protocol != corev1.ProtocolUDP || svc.Spec.Ports[1].Protocol != corev1.ProtocolTCP || svc.Spec.Ports[0].Port != 53 {
		t.Fatalf("service: %+v", svc.Spec)
	}
	custom := CoreDNSManifests("198.19.0.53", "198.18.0.99")
	for _, o := range custom {
		if m, ok := o.(*corev1.ConfigMap); ok && !strings.Contains(m.Data["Corefile"], "forward . 198.18.0.99") {
			t.Fatal("upstream not used")
		}
		if s, ok := o.(*corev1.Service); ok && s.Spec.ClusterIP != "198.19.0.53" {
			t.Fatal("service IP not used")
		}
	}
}

func TestApplyCreatesThenUpdates(t *testing.T) {
	cs := fake.NewClientset()
	ctx := context.Background()
	objs := append(KubeProxyManifests("198.18.128.0/17", "iptables"), CoreDNSManifests("", "")...)
	if err := Apply(ctx, cs, objs); err != nil {
		t.Fatal(err)
	}
	// Applying again with another mode updates in place.
	if err := Apply(ctx, cs, KubeProxyManifests("198.18.128.0/17", "nftables")); err != nil {
		t.Fatal(err)
	}
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["config.conf"], "mode: nftables") {
		t.Fatalf("kube-proxy configmap after update: %v %v", cm, err)
	}
	if _, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, "system:coredns", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, cs, []runtime.Object{&corev1.Pod{}}); err == nil {
		t.Fatal("want error for unsupported kind")
	}
}

func TestFindK8sBin(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, K8sBinName)
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(K8sBinEnv, bin)
	if got, err := FindK8sBin(); err != nil || got != bin {
		t.Fatalf("FindK8sBin = %q, %v", got, err)
	}
	t.Setenv(K8sBinEnv, filepath.Join(dir, "missing"))
	if _, err := FindK8sBin(); err == nil || !strings.Contains(err.Error(), "make labbins") {
		t.Fatalf("want error naming make labbins, got %v", err)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	_, err := Start(context.Background(), Config{StateDir: t.TempDir(), AdvertiseIP: "127.0.0.1", K8sBin: "/bin/true"})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("want loopback refusal, got %v", err)
	}
	_, err = Start(context.Background(), Config{StateDir: t.TempDir(), K8sBin: "/nonexistent/netdoctor-k8s"})
	if err == nil || !strings.Contains(err.Error(), "make labbins") {
		t.Fatalf("want missing binary error, got %v", err)
	}
}

func TestCorefileWithKubeconfig(t *testing.T) {
	got := CorefileWithKubeconfig(Corefile("cluster.local", "198.18.0.53"), "/s/coredns.conf", "lab")
	want := "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       kubeconfig /s/coredns.conf lab\n       pods insecure\n"
	if !strings.Contains(got, want) {
		t.Fatalf("kubeconfig line not inside the kubernetes block:\n%s", got)
	}
	if strings.Count(got, "kubeconfig") != 1 {
		t.Fatalf("want exactly one kubeconfig line:\n%s", got)
	}
	id := ServiceAccountIdentity("kube-system", "coredns")
	if id.User != "system:serviceaccount:kube-system:coredns" || !contains(id.Groups, "system:serviceaccounts:kube-system") {
		t.Fatalf("service account identity: %+v", id)
	}
}
