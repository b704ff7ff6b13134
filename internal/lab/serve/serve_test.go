package serve

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []Port
		wantErr bool
	}{
		{"", nil, false},
		{"80", []Port{{80, "TCP"}}, false},
		{"80/TCP,53/udp", []Port{{80, "TCP"}, {53, "UDP"}}, false},
		{"0", nil, true},
		{"80/SCTP", nil, true},
		{"x/TCP", nil, true},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err %v", tt.in, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("%q: got %v want %v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%q: got %v want %v", tt.in, got, tt.want)
			}
		}
	}
}

func FuzzParsePorts(f *testing.F) {
	f.Add("80/TCP,53/UDP")
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePorts(s)
		if err == nil {
			for _, p := range ps {
				if p.Number < 1 || p.Number > 65535 {
					t.Fatalf("bad port %v", p)
				}
			}
		}
	})
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func TestServeAnswersWithPodName(t *testing.T) {
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, "web-1", "127.0.0.1", []Port{{port, "TCP"}, {port, "UDP"}}) }()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var body []byte
	for i := 0; i < 50; i++ {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if string(body) != "pod web-1\n" {
		t.Fatalf("HTTP body %q", body)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_, _ = c.Write([]byte("hi"))
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "pod web-1\n" {
		t.Fatalf("UDP reply %q, %v", buf[:n], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
