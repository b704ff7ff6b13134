// Package serve is the lab's stand-in for any container image it has no program for: a small
// server that listens on the container's ports and answers with the pod's name. TCP ports
// speak HTTP (any path; a plain TCP client may also just connect), UDP ports echo the pod name.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Port is one port to listen on.
type Port struct {
	Number   int
	Protocol string // TCP or UDP
}

// ParsePorts parses "80/TCP,53/UDP" (protocol defaults to TCP).
func ParsePorts(s string) ([]Port, error) {
	var out []Port
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		num, proto, _ := strings.Cut(strings.TrimSpace(f), "/")
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %q: not a port number", f)
		}
		proto = strings.ToUpper(proto)
		if proto == "" {
			proto = "TCP"
		}
		if proto != "TCP" && proto != "UDP" {
			return nil, fmt.Errorf("port %q: protocol must be TCP or UDP", f)
		}
		out = append(out, Port{Number: n, Protocol: proto})
	}
	return out, nil
}

// Reply is what the server answers: "pod NAME\n".
func Reply(name string) string { return "pod " + name + "\n" }

// Run listens on bind (default all addresses) at each port and serves until ctx ends. With no
// ports it waits for ctx (a container with no ports still runs).
func Run(ctx context.Context, name, bind string, ports []Port) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(ports))
	for _, p := range ports {
		addr := net.JoinHostPort(bind, strconv.Itoa(p.Number))
		switch p.Protocol {
		case "TCP":
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on tcp %s: %w", addr, err)
			}
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Content-Type", "text/plain")
					_, _ = w.Write([]byte(Reply(name)))
				}),
				ReadHeaderTimeout: 5 * time.Second,
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
					errc <- err
				}
			}()
			go func() { <-ctx.Done(); _ = srv.Close() }()
		case "UDP":
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("listen on udp %s: %w", addr, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 2048)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo([]byte(Reply(name)), from)
				}
			}()
			go func() { <-ctx.Done(); _ = pc.Close() }()
		}
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	wg.Wait()
	return nil
}
