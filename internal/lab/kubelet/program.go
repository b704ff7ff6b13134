package kubelet

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Program is what a container runs in the lab: a program and its arguments.
type Program struct {
	Path string
	Args []string
	Kind string // kube-proxy, coredns, netdoctor, serve
}

// ProgramFor maps a container's image to a program on this machine, the lab's "image store":
// kube-proxy images run the real kube-proxy, coredns images real CoreDNS (both from the
// netdoctor-k8s multi-call binary), netdoctor images this binary, anything else the lab's test
// server listening on the container's ports. Command and args are taken from the spec with
// $(VAR) references expanded from env.
func ProgramFor(pod *corev1.Pod, c *corev1.Container, env map[string]string, k8sBin, selfBin string) Program {
	cmd := expandAll(c.Command, env)
	args := expandAll(c.Args, env)
	img := imageName(c.Image)
	switch {
	case strings.HasSuffix(img, "/kube-proxy") || img == "kube-proxy":
		rest := args
		if len(cmd) > 0 {
			rest = append(append([]string{}, cmd[1:]...), args...)
		}
		return Program{Path: k8sBin, Args: append([]string{"kube-proxy"}, rest...), Kind: "kube-proxy"}
	case strings.HasSuffix(img, "/coredns") || img == "coredns":
		rest := args
		if len(cmd) > 0 {
			rest = append(append([]string{}, cmd[1:]...), args...)
		}
		return Program{Path: k8sBin, Args: append([]string{"coredns"}, rest...), Kind: "coredns"}
	case strings.HasSuffix(img, "/netdoctor") || img == "netdoctor":
		rest := args
		if len(cmd) > 0 {
			rest = append(append([]string{}, cmd[1:]...), args...)
		}
		if len(rest) == 0 {
			rest = []string{"agent"}
		}
		return Program{Path: selfBin, Args: rest, Kind: "netdoctor"}
	}
	var ports []string
	for _, p := range c.Ports {
		proto := string(p.Protocol)
		if proto == "" {
			proto = "TCP"
		}
		ports = append(ports, strconv.Itoa(int(p.ContainerPort))+"/"+proto)
	}
	a := []string{"lab", "serve", "--name", pod.Name}
	if len(ports) > 0 {
		a = append(a, "--ports", strings.Join(ports, ","))
	}
	if bind := env["LAB_SERVE_BIND"]; bind != "" {
		a = append(a, "--bind", bind)
	}
	return Program{Path: selfBin, Args: a, Kind: "serve"}
}

// imageName strips the tag and digest: "registry.k8s.io/kube-proxy:v1.37.2" -> "registry.k8s.io/kube-proxy".
func imageName(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	slash := strings.LastIndexByte(image, '/')
	if i := strings.LastIndexByte(image, ':'); i > slash {
		image = image[:i]
	}
	return image
}

// Expand replaces $(VAR) with env's value as Kubernetes does: $$ escapes, unknown references
// stay as written.
func Expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func expandAll(in []string, env map[string]string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = Expand(s, env)
	}
	return out
}

// FieldValues are the values downward-API field references resolve to.
type FieldValues struct {
	PodIP, HostIP, NodeName string
}

// ContainerEnv resolves a container's environment: literal values (with $(VAR) expansion of
// earlier ones), field references, configMap/secret key references from lookup, plus the
// variables every container gets (KUBERNETES_SERVICE_HOST/PORT, HOSTNAME).
func ContainerEnv(pod *corev1.Pod, c *corev1.Container, fv FieldValues, apiHost string, apiPort int,
	lookup func(kind, name, key string) (string, bool)) (map[string]string, error) {
	env := map[string]string{
		"HOSTNAME": pod.Name,
	}
	if apiHost != "" {
		env["KUBERNETES_SERVICE_HOST"] = apiHost
		env["KUBERNETES_SERVICE_PORT"] = strconv.Itoa(apiPort)
		env["KUBERNETES_SERVICE_PORT_HTTPS"] = strconv.Itoa(apiPort)
		env["KUBERNETES_PORT"] = "tcp://" + apiHost + ":" + strconv.Itoa(apiPort)
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = Expand(e.Value, env)
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath, fv)
			if err != nil {
				return nil, fmt.Errorf("env %s of container %s: %w", e.Name, c.Name, err)
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil && lookup != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			if v, ok := lookup("configmap", r.Name, r.Key); ok {
				env[e.Name] = v
			}
		case e.ValueFrom.SecretKeyRef != nil && lookup != nil:
			r := e.ValueFrom.SecretKeyRef
			if v, ok := lookup("secret", r.Name, r.Key); ok {
				env[e.Name] = v
			}
		}
	}
	return env, nil
}

func fieldValue(pod *corev1.Pod, path string, fv FieldValues) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return fv.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return fv.PodIP, nil
	case "status.podIPs":
		return fv.PodIP, nil
	case "status.hostIP", "status.hostIPs":
		return fv.HostIP, nil
	}
	if strings.HasPrefix(path, "metadata.labels['") && strings.HasSuffix(path, "']") {
		return pod.Labels[path[len("metadata.labels['"):len(path)-2]], nil
	}
	if strings.HasPrefix(path, "metadata.annotations['") && strings.HasSuffix(path, "']") {
		return pod.Annotations[path[len("metadata.annotations['"):len(path)-2]], nil
	}
	return "", fmt.Errorf("unsupported field reference %q", path)
}

// EnvList turns an env map into sorted KEY=VALUE pairs.
func EnvList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ResolvConf renders a pod's resolv.conf the way the kubelet does for its DNS policy:
// ClusterFirst (non-hostNetwork) and ClusterFirstWithHostNet use the cluster DNS with the
// namespace search list and ndots:5; Default (and ClusterFirst with hostNetwork) use the node's
// resolver; None uses only dnsConfig. dnsConfig nameservers, searches and options are merged.
func ResolvConf(pod *corev1.Pod, clusterDNS, clusterDomain string, nodeNameservers []string) string {
	var ns, search []string
	opts := map[string]string{}
	var optOrder []string
	setOpt := func(name, val string) {
		if _, ok := opts[name]; !ok {
			optOrder = append(optOrder, name)
		}
		opts[name] = val
	}
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && pod.Spec.HostNetwork {
		policy = corev1.DNSDefault
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		ns = []string{clusterDNS}
		search = []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
		setOpt("ndots", "5")
	case corev1.DNSDefault:
		ns = append(ns, nodeNameservers...)
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		ns = append(ns, dc.Nameservers...)
		search = append(search, dc.Searches...)
		for _, o := range dc.Options {
			v := ""
			if o.Value != nil {
				v = *o.Value
			}
			setOpt(o.Name, v)
		}
	}
	var b strings.Builder
	if len(search) > 0 {
		b.WriteString("search " + strings.Join(search, " ") + "\n")
	}
	for _, n := range ns {
		b.WriteString("nameserver " + n + "\n")
	}
	if len(optOrder) > 0 {
		var parts []string
		for _, o := range optOrder {
			if opts[o] == "" {
				parts = append(parts, o)
			} else {
				parts = append(parts, o+":"+opts[o])
			}
		}
		b.WriteString("options " + strings.Join(parts, " ") + "\n")
	}
	return b.String()
}
