package agent

import (
	"context"
	"fmt"
	"net"
)

// ServeTarget is the probe target of the connectivity matrix: it accepts
// TCP connections on addr and closes them at once, serving no data. It
// returns when ctx ends.
func ServeTarget(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for probes on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		_ = l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		_ = c.Close()
	}
}
