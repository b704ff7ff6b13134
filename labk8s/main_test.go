package main

import (
	"reflect"
	"testing"
)

func TestPick(t *testing.T) {
	tests := []struct {
		name     string
		argv     []string
		wantName string
		wantArgs []string
		wantOK   bool
	}{
		{"by argv0 basename", []string{"/usr/local/bin/kube-proxy", "--config=x"}, "kube-proxy", []string{"/usr/local/bin/kube-proxy", "--config=x"}, true},
		{"by first argument", []string{"/bin/netdoctor-k8s", "etcd", "--data-dir=d"}, "etcd", []string{"etcd", "--data-dir=d"}, true},
		{"coredns flags", []string{"netdoctor-k8s", "coredns", "-conf", "Corefile"}, "coredns", []string{"coredns", "-conf", "Corefile"}, true},
		{"unknown program", []string{"netdoctor-k8s", "kubelet"}, "", nil, false},
		{"no program", []string{"netdoctor-k8s"}, "", nil, false},
		{"empty argv", nil, "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, args, ok := pick(tt.argv)
			if name != tt.wantName || ok != tt.wantOK || !reflect.DeepEqual(args, tt.wantArgs) {
				t.Fatalf("pick(%q) = %q %q %v, want %q %q %v", tt.argv, name, args, ok, tt.wantName, tt.wantArgs, tt.wantOK)
			}
		})
	}
	if len(names()) != 6 {
		t.Fatalf("programs: %v", names())
	}
}
