package install

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

var update = flag.Bool("update", false, "rewrite deploy/netdoctor.yaml from the generated manifests")

// deployFile is the GitOps copy of the manifests.
var deployFile = filepath.Join("..", "..", "deploy", "netdoctor.yaml")

func TestDeployYAMLIsGenerated(t *testing.T) {
	want, err := YAML(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(deployFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(deployFile)
	if err != nil {
		t.Fatalf("read %s: %v (run go test ./internal/install -update)", deployFile, err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the generated manifests: run go test ./internal/install -update", deployFile)
	}
}

func TestLeastPrivilege(t *testing.T) {
	for _, o := range Objects(Options{}) {
		switch x := o.(type) {
		case *rbacv1.ClusterRole:
			for _, r := range x.Rules {
				for _, v := range r.Verbs {
					if v != "get" && v != "list" && v != "watch" {
						t.Errorf("cluster role grants %s on %v", v, r.Resources)
					}
				}
				for _, res := range r.Resources {
					if res == "secrets" || res == "*" {
						t.Errorf("cluster role grants %s", res)
					}
				}
			}
		case *rbacv1.Role:
			for _, r := range x.Rules {
				for _, v := range r.Verbs {
					if v == "delete" || v == "*" {
						t.Errorf("role grants %s", v)
					}
				}
			}
		case *appsv1.DaemonSet:
			for _, c := range x.Spec.Template.Spec.Containers {
				sc := c.SecurityContext
				if sc == nil || sc.Privileged == nil || *sc.Privileged {
					t.Errorf("%s/%s: privileged or unset", x.Name, c.Name)
				}
				if sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 4 {
					t.Errorf("%s/%s: %d capabilities", x.Name, c.Name, len(sc.Capabilities.Add))
				}
			}
			if x.Spec.Template.Spec.PriorityClassName != "system-node-critical" {
				t.Errorf("%s: priority class %q", x.Name, x.Spec.Template.Spec.PriorityClassName)
			}
			if len(x.Spec.Template.Spec.Tolerations) != 1 || x.Spec.Template.Spec.Tolerations[0].Operator != "Exists" {
				t.Errorf("%s: does not tolerate every taint", x.Name)
			}
		}
	}
}
