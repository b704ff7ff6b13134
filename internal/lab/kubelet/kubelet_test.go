package kubelet

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netdoctor/netdoctor/internal/testutil"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"NODE_NAME": "node1", "A": "x"}
	tests := []struct{ in, want string }{
		{"--hostname-override=$(NODE_NAME)", "--hostname-override=node1"},
		{"$(A)$(A)", "xx"},
		{"$$(A)", "$(A)"},
		{"$(MISSING)", "$(MISSING)"},
		{"$(unterminated", "$(unterminated"},
		{"cost $5", "cost $5"},
		{"end$", "end$"},
	}
	for _, tt := range tests {
		if got := Expand(tt.in, env); got != tt.want {
			t.Errorf("Expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	f.Add("--x=$(NODE_NAME)$$(Y)$")
	f.Fuzz(func(t *testing.T, s string) {
		got := Expand(s, map[string]string{"NODE_NAME": "n"})
		if !strings.Contains(s, "$") && got != s {
			t.Fatalf("text without $ changed: %q -> %q", s, got)
		}
	})
}

func TestProgramFor(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"}}
	env := map[string]string{"NODE_NAME": "node2"}
	tests := []struct {
		name string
		c    corev1.Container
		want string
	}{
		{"kube-proxy", corev1.Container{Image: "registry.k8s.io/kube-proxy:v1.37.2",
			Command: []string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"}},
			"/k8s kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=node2"},
		{"coredns", corev1.Container{Image: "registry.k8s.io/coredns/coredns:v1.15.0", Args: []string{"-conf", "/etc/coredns/Corefile"}},
			"/k8s coredns -conf /etc/coredns/Corefile"},
		{"netdoctor default", corev1.Container{Image: "ghcr.io/netdoctor/netdoctor:v1"}, "/self agent"},
		{"netdoctor args", corev1.Container{Image: "netdoctor@sha256:abc", Command: []string{"netdoctor"}, Args: []string{"agent", "--node=$(NODE_NAME)"}},
			"/self agent --node=node2"},
		{"anything else", corev1.Container{Image: "nginx:1.27", Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
			"/self lab serve --name web-1 --ports 80/TCP,53/UDP"},
		{"registry port is not a tag", corev1.Container{Image: "localhost:5000/kube-proxy"}, "/k8s kube-proxy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ProgramFor(pod, &tt.c, env, "/k8s", "/self")
			if got := strings.Join(append([]string{p.Path}, p.Args...), " "); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResolvConf(t *testing.T) {
	ndots := "2"
	tests := []struct {
		name string
		spec corev1.PodSpec
		want string
	}{
		{"cluster first", corev1.PodSpec{}, "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n"},
		{"host network uses the node's", corev1.PodSpec{HostNetwork: true}, "nameserver 198.18.0.53\n"},
		{"cluster first with host net", corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet},
			"search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n"},
		{"default", corev1.PodSpec{DNSPolicy: corev1.DNSDefault}, "nameserver 198.18.0.53\n"},
		{"none with config", corev1.PodSpec{DNSPolicy: corev1.DNSNone, DNSConfig: &corev1.PodDNSConfig{
			Nameservers: []string{"198.18.0.99"}, Searches: []string{"example.test"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &ndots}, {Name: "edns0"}}}},
			"search example.test\nnameserver 198.18.0.99\noptions ndots:2 edns0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: tt.spec}
			if got := ResolvConf(p, "198.19.0.10", "cluster.local", []string{"198.18.0.53"}); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestContainerEnv(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"app": "web"}}}
	c := &corev1.Container{Name: "c", Env: []corev1.EnvVar{
		{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
		{Name: "GREETING", Value: "on $(NODE_NAME)"},
		{Name: "FROM_CM", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}}},
	}}
	lookup := func(kind, name, key string) (string, bool) { return kind + "/" + name + "/" + key, true }
	env, err := ContainerEnv(pod, c, FieldValues{PodIP: "198.18.128.5", NodeName: "node1"}, "198.19.0.1", 443, lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"NODE_NAME": "node1", "POD_IP": "198.18.128.5", "APP": "web", "GREETING": "on node1",
		"FROM_CM": "configmap/cm/k", "KUBERNETES_SERVICE_HOST": "198.19.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOSTNAME": "p"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	bad := &corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nope"}}}}}
	if _, err := ContainerEnv(pod, bad, FieldValues{}, "", 0, nil); err == nil {
		t.Error("unsupported field reference accepted")
	}
}

func TestIPAM(t *testing.T) {
	m := &IPAM{Dir: t.TempDir(), Subnet: netip.MustParsePrefix("198.18.129.0/29")}
	var got []string
	for _, owner := range []string{"a", "b", "c", "d", "e"} {
		a, err := m.Allocate(owner)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != "198.18.129.2 198.18.129.3 198.18.129.4 198.18.129.5 198.18.129.6" {
		t.Fatalf("allocated %v", got)
	}
	if _, err := m.Allocate("f"); err == nil {
		t.Fatal("a /29 gave a sixth address (.7 is broadcast)")
	}
	if a, _ := m.Allocate("c"); a.String() != "198.18.129.4" {
		t.Fatalf("owner c got %s on reallocation", a)
	}
	m.Release("b")
	// A new IPAM on the same directory (a restarted kubelet) sees the same allocations.
	m2 := &IPAM{Dir: m.Dir, Subnet: m.Subnet}
	if a, err := m2.Allocate("f"); err != nil || a.String() != "198.18.129.3" {
		t.Fatalf("after release got %s, %v", a, err)
	}
}

func TestParseMount(t *testing.T) {
	tests := []struct {
		in      string
		want    Mount
		wantErr bool
	}{
		{"/a:/b", Mount{Source: "/a", Target: "/b"}, false},
		{"/a:/b:ro", Mount{Source: "/a", Target: "/b", ReadOnly: true}, false},
		{"/a", Mount{}, true},
		{"/a:/b:rw", Mount{}, true},
	}
	for _, tt := range tests {
		got, err := ParseMount(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMount(%q) = %+v, %v", tt.in, got, err)
		}
		if err == nil && got.String() != tt.in {
			t.Errorf("round trip %q -> %q", tt.in, got.String())
		}
	}
}

func FuzzParseMount(f *testing.F) {
	f.Add("/a:/b:ro")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMount(s)
		if err == nil {
			if back, err := ParseMount(m.String()); err != nil || back != m {
				t.Fatalf("round trip of %q: %+v, %v", s, back, err)
			}
		}
	})
}

// TestMain lets the test binary act as `netdoctor lab podexec` for TestExecInMountNamespace.
func TestMain(m *testing.M) {
	if os.Getenv("NDLAB_TEST_PODEXEC") == "1" {
		mt, _ := ParseMount(os.Getenv("NDLAB_TEST_MOUNT"))
		err := ExecInMountNamespace([]Mount{mt}, []string{"cat", "/etc/resolv.conf"})
		_, _ = os.Stderr.WriteString(err.Error())
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// TestExecInMountNamespace runs a program that sees a pod's resolv.conf at /etc/resolv.conf
// while the host's file stays what it was.
func TestExecInMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	before, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Skipf("skipped: no /etc/resolv.conf on this machine: %v", err)
	}
	src := filepath.Join(t.TempDir(), "resolv.conf")
	want := "search default.svc.cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n"
	if err := os.WriteFile(src, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NDLAB_TEST_PODEXEC=1", "NDLAB_TEST_MOUNT="+src+":/etc/resolv.conf:ro")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("podexec: %v (%s)", err, out)
	}
	if string(out) != want {
		t.Fatalf("program saw %q, want %q", out, want)
	}
	after, _ := os.ReadFile("/etc/resolv.conf")
	if string(after) != string(before) {
		t.Fatal("the host's /etc/resolv.conf changed")
	}
}
