package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/testutil"
)

// RunCapture's bounds: it refuses an unbounded capture, stops at the size
// the result may carry and says so, and its interface blocks name the node.
func TestRunCaptureBounds(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireProgram(t, "ip")
	lab := newToolsLab(t)
	a := &Agent{Node: "cap-node", Netns: testutil.Path(lab.node)}
	ctx := context.Background()
	for _, tc := range []struct {
		spec CaptureSpec
		msg  string
	}{
		{CaptureSpec{Points: []CapturePoint{{Iface: "tl-n0"}}}, "so that the capture ends"},
		{CaptureSpec{Count: 1}, "no capture point"},
		{CaptureSpec{Points: []CapturePoint{{Iface: "tl-n0"}}, Duration: time.Hour}, "more than"},
		{CaptureSpec{Points: []CapturePoint{{Iface: "nope0"}}, Count: 1}, "no such interface"},
	} {
		if _, err := a.RunCapture(ctx, &tc.spec); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: error %v, want %q", tc.spec, err, tc.msg)
		}
	}
	type out struct {
		r   *CaptureResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := a.RunCapture(ctx, &CaptureSpec{Points: []CapturePoint{{Iface: "tl-n0"}}, Filter: "udp port 47125", Duration: 20 * time.Second, MaxBytes: 4000})
		done <- out{r, err}
	}()
	time.Sleep(500 * time.Millisecond)
	c, err := namespace.ListenPacket(ctx, testutil.Path(lab.pod), "udp", "198.18.90.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	payload := []byte(strings.Repeat("x", 500))
	var got out
	for i := 0; i < 400; i++ {
		_, _ = c.WriteTo(payload, &net.UDPAddr{IP: net.ParseIP("198.18.90.1"), Port: 47125})
		select {
		case got = <-done:
			i = 400
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got.r == nil && got.err == nil {
		got = <-done
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	r := got.r
	if !r.Truncated || r.Capture.Stopped != "size" || len(r.Pcapng) > 4000 || r.Capture.Packets == 0 {
		t.Errorf("truncated %v stopped %q, %d bytes for %d packets; want stopped by size under 4000 bytes", r.Truncated, r.Capture.Stopped, len(r.Pcapng), r.Capture.Packets)
	}
	if !strings.Contains(string(r.Pcapng), "cap-node/host/tl-n0") {
		t.Error("the interface block does not name the node")
	}
	t.Logf("%d packets, %d bytes, stopped by %s", r.Capture.Packets, len(r.Pcapng), r.Capture.Stopped)
}
