package finding

import (
	"slices"
	"testing"
)

func TestReportHelpers(t *testing.T) {
	r := NewReport([]Finding{
		{ID: "mtu-mismatch", Severity: Critical},
		{ID: "node-config-drift", Severity: Info},
		{ID: "service-no-endpoints", Severity: Warning},
		{ID: "mtu-mismatch", Severity: Critical},
	}, []Check{{ID: "ip-forward-disabled", Status: Pass}, {ID: "mtu-mismatch", Status: Fail}})
	if got, want := r.ProblemIDs(), []string{"mtu-mismatch", "mtu-mismatch", "service-no-endpoints"}; !slices.Equal(got, want) {
		t.Errorf("ProblemIDs = %q, want %q (info left out, sorted, repeats kept)", got, want)
	}
	if c, ok := r.Check("mtu-mismatch"); !ok || c.Status != Fail {
		t.Errorf("Check(mtu-mismatch) = %+v, %v", c, ok)
	}
	if _, ok := r.Check("no-such-check"); ok {
		t.Error("Check of an unknown ID found one")
	}
	if r.ExitCode() != 1 || NewReport(nil, nil).ExitCode() != 0 {
		t.Errorf("exit codes %d / %d, want 1 with problems and 0 without", r.ExitCode(), NewReport(nil, nil).ExitCode())
	}
}
