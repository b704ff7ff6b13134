package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// PortFillOptions configures RunPortFill.
type PortFillOptions struct {
	// To is the one destination the connections go to.
	To netip.AddrPort
	// Max bounds the connections held (the size of the narrowed port range: it never opens
	// more even if the range is wider than the fault set).
	Max int
	// Log receives a line whenever the number held changes after a pause (nil: none).
	Log io.Writer
}

// RunPortFill is the client of ephemeral-ports-exhausted, run in a node's namespace by
// `netdoctor lab portfill`: it opens TCP connections to To, each with one HTTP/1.1 request
// (so that the server keeps it as an idle keep-alive connection), and holds them, until Max
// are open or connect fails (EADDRNOTAVAIL once the ephemeral ports towards To are used up).
// A connection the server closes is replaced. When ctx ends it resets every connection
// (SO_LINGER 0: no TIME_WAIT left holding ports) and returns.
func RunPortFill(ctx context.Context, o PortFillOptions) error {
	if !o.To.IsValid() {
		return errors.New("port fill: no destination")
	}
	if o.Max <= 0 {
		return fmt.Errorf("port fill: max %d: must be positive", o.Max)
	}
	var (
		mu    sync.Mutex
		conns = map[*net.TCPConn]bool{}
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			_ = c.SetLinger(0)
			_ = c.Close()
		}
	}()
	logged, lastErr := -1, ""
	for ctx.Err() == nil {
		mu.Lock()
		n := len(conns)
		mu.Unlock()
		var err error
		if n < o.Max {
			var c *net.TCPConn
			if c, err = holdOne(ctx, o.To); err == nil {
				mu.Lock()
				conns[c] = true
				mu.Unlock()
				go func() {
					// Blocks until the server closes it (or ctx ends and the deferred close runs).
					_, _ = io.Copy(io.Discard, c)
					mu.Lock()
					if conns[c] {
						delete(conns, c)
						_ = c.Close()
					}
					mu.Unlock()
				}()
				continue
			}
		}
		if o.Log != nil && (n != logged || (err != nil && err.Error() != lastErr)) {
			msg := fmt.Sprintf("portfill: holding %d connections to %s", n, o.To)
			if err != nil {
				msg += "; connect: " + err.Error()
				lastErr = err.Error()
			}
			_, _ = fmt.Fprintln(o.Log, msg)
			logged = n
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

// holdOne opens one connection to dst and makes one keep-alive request on it.
func holdOne(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	c := nc.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", dst.Addr()); err != nil {
		_ = c.Close()
		return nil, err
	}
	buf := make([]byte, 4096)
	if _, err := c.Read(buf); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// NICQueueOptions configures RunNICQueue.
type NICQueueOptions struct {
	// Tap is the name of the TAP device made (the queue nobody drains).
	Tap string
	// QLen is its txqueuelen: the ring frames wait in before they are dropped.
	QLen int
	// To receives the steady stream of UDP packets (a discard port).
	To netip.AddrPort
	// Rate is the number of packets a second.
	Rate int
	// Log receives a line of statistics every ten seconds (nil: none).
	Log io.Writer
}

// RunNICQueue is the process of nic-queue-drops, run in a node's namespace by `netdoctor lab
// nicqueue`: it makes a TAP device and never reads it (every frame sent to it waits in a ring
// of QLen frames, then is dropped and counted as tx_dropped), and sends Rate small UDP packets
// a second to To (the traffic that keeps running). The TAP goes when the process ends.
func RunNICQueue(ctx context.Context, o NICQueueOptions) error {
	if o.Tap == "" || len(o.Tap) >= unix.IFNAMSIZ {
		return fmt.Errorf("nic queue: bad device name %q", o.Tap)
	}
	if o.QLen <= 0 || o.Rate <= 0 || !o.To.IsValid() {
		return fmt.Errorf("nic queue: qlen %d, rate %d, destination %s: need positive numbers and a destination", o.QLen, o.Rate, o.To)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("nic queue: open /dev/net/tun: %w", err)
	}
	defer func() { _ = unix.Close(fd) }()
	ifr, err := unix.NewIfreq(o.Tap)
	if err != nil {
		return fmt.Errorf("nic queue: %w", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("nic queue: make TAP %s: %w", o.Tap, err)
	}
	l, err := netlink.LinkByName(o.Tap)
	if err != nil {
		return fmt.Errorf("nic queue: find %s: %w", o.Tap, err)
	}
	if err := netlink.LinkSetTxQLen(l, o.QLen); err != nil {
		return fmt.Errorf("nic queue: txqueuelen of %s: %w", o.Tap, err)
	}
	// No IPv6 link-local address: the kernel then sends nothing of its own through the TAP
	// (DAD, router solicitations), so its drops are the redirected packets alone. Without
	// IPv6 in the kernel there is nothing to silence.
	if err := netlink.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE); err != nil && o.Log != nil {
		_, _ = fmt.Fprintf(o.Log, "nicqueue: no IPv6 address generation on %s: %v\n", o.Tap, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("nic queue: set %s up: %w", o.Tap, err)
	}
	pc, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		return fmt.Errorf("nic queue: udp socket: %w", err)
	}
	defer func() { _ = pc.Close() }()
	to := net.UDPAddrFromAddrPort(o.To)
	payload := make([]byte, 64)
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	var sent, sendErrs uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-report.C:
			if o.Log != nil {
				var drops uint64
				if l, err := netlink.LinkByName(o.Tap); err == nil && l.Attrs().Statistics != nil {
					drops = l.Attrs().Statistics.TxDropped
				}
				_, _ = fmt.Fprintf(o.Log, "nicqueue: %d packets sent to %s (%d send errors); %s tx_dropped %d\n", sent, o.To, sendErrs, o.Tap, drops)
			}
		case <-tick.C:
			if _, err := pc.WriteTo(payload, to); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				sendErrs++
			} else {
				sent++
			}
		}
	}
}
