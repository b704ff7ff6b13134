package namespace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DialFunc is the signature of net.Dialer.DialContext, as http.Transport,
// net.Resolver, client-go's rest.Config.Dial and grpc expect it.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ErrWrongNamespace is returned (wrapped) when a socket was about to be
// connected or bound from a network namespace other than the intended one.
var ErrWrongNamespace = errors.New("socket is in the wrong network namespace")

// Dialer returns a DialContext function whose sockets are created inside the
// network namespace at path, on a thread locked into it, whatever goroutine
// calls it. Use it wherever the dial happens on goroutines the caller does
// not control: http.Transport (its dials run on goroutines of its own),
// net.Resolver.Dial, client-go's rest.Config.Dial. (miekg/dns's Client takes
// a *net.Dialer, not a function: dial with this and wrap the conn in a
// dns.Conn instead.)
//
// base supplies the timeout, keep-alive and local address (nil: the zero
// Dialer). Its Resolver and FallbackDelay are ignored: the address must be
// a literal IP and port, because Go's resolver and Happy Eyeballs run on other
// goroutines, outside the namespace; resolve names with Resolver(path) first.
//
// Every socket is checked before it is connected: if the kernel says it
// belongs to another namespace than path's, the dial fails with
// ErrWrongNamespace and no packet is sent. path "" means the caller's current
// namespace, unchecked.
func Dialer(path string, base *net.Dialer) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if path == "" {
			if base == nil {
				base = &net.Dialer{}
			}
			return base.DialContext(ctx, network, address)
		}
		if err := requireLiteral(address); err != nil {
			return nil, fmt.Errorf("dial %s %s in network namespace %s: %w", network, address, path, err)
		}
		want, err := inode(path)
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
		}
		d := copyDialer(base)
		d.ControlContext = chainControl(d.ControlContext, d.Control, path, want)
		d.Control = nil
		var c net.Conn
		err = Do(path, func() error {
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s %s in network namespace %s: %w", network, address, path, err)
		}
		return c, nil
	}
}

// Resolver returns a pure-Go resolver whose DNS queries leave from the
// network namespace at path ("" = net.DefaultResolver). It reads this
// machine's resolv.conf and hosts file, as `nsenter --net` does.
func Resolver(path string) *net.Resolver {
	if path == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: Dialer(path, nil)}
}

// Listen opens a listener (tcp, tcp4, tcp6, unix) inside the network
// namespace at path on a locked thread, checking the socket's namespace
// before it is bound. address must be a literal IP and port.
func Listen(ctx context.Context, path, network, address string) (net.Listener, error) {
	lc, err := listenConfig(path, network, address)
	if err != nil {
		return nil, err
	}
	var l net.Listener
	err = Do(path, func() error {
		var err error
		l, err = lc.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in network namespace %s: %w", network, address, path, err)
	}
	return l, nil
}

// ListenPacket is Listen for packet sockets (udp, udp4, udp6, ip:PROTO).
func ListenPacket(ctx context.Context, path, network, address string) (net.PacketConn, error) {
	lc, err := listenConfig(path, network, address)
	if err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err = Do(path, func() error {
		var err error
		pc, err = lc.ListenPacket(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in network namespace %s: %w", network, address, path, err)
	}
	return pc, nil
}

func listenConfig(path, network, address string) (*net.ListenConfig, error) {
	lc := &net.ListenConfig{}
	if path == "" {
		return lc, nil
	}
	if network != "unix" && network != "unixpacket" && network != "unixgram" {
		if err := requireLiteral(address); err != nil {
			return nil, fmt.Errorf("listen %s %s in network namespace %s: %w", network, address, path, err)
		}
	}
	want, err := inode(path)
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	check := chainControl(nil, nil, path, want)
	lc.Control = func(network, address string, c syscall.RawConn) error {
		return check(context.Background(), network, address, c)
	}
	return lc, nil
}

// CheckSocket reports an error wrapping ErrWrongNamespace unless the socket
// fd belongs to the network namespace at path. Use it on raw sockets made
// with unix.Socket before sending.
func CheckSocket(fd int, path string) error {
	want, err := inode(path)
	if err != nil {
		return err
	}
	return checkFD(fd, path, want)
}

type nsID struct{ dev, ino uint64 }

func inode(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	return nsID{st.Dev, st.Ino}, nil
}

// checkFD asks the kernel which namespace the socket lives in (SIOCGSKNS,
// Linux 4.9+) and compares it with want.
func checkFD(fd int, path string, want nsID) error {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return fmt.Errorf("ask the network namespace of socket %d (SIOCGSKNS): %w", fd, err)
	}
	defer func() { _ = unix.Close(nsfd) }()
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return fmt.Errorf("stat the network namespace of socket %d: %w", fd, err)
	}
	if got := (nsID{st.Dev, st.Ino}); got != want {
		return fmt.Errorf("%w: made in namespace inode %d, want %s (inode %d)", ErrWrongNamespace, got.ino, path, want.ino)
	}
	return nil
}

func chainControl(next func(context.Context, string, string, syscall.RawConn) error,
	old func(string, string, syscall.RawConn) error, path string, want nsID) func(context.Context, string, string, syscall.RawConn) error {
	return func(ctx context.Context, network, address string, c syscall.RawConn) error {
		var cerr error
		if err := c.Control(func(fd uintptr) { cerr = checkFD(int(fd), path, want) }); err != nil {
			return err
		}
		if cerr != nil {
			return cerr
		}
		switch {
		case next != nil:
			return next(ctx, network, address, c)
		case old != nil:
			return old(network, address, c)
		}
		return nil
	}
}

func copyDialer(base *net.Dialer) *net.Dialer {
	if base == nil {
		return &net.Dialer{}
	}
	d := *base
	d.Resolver = nil
	d.FallbackDelay = -1 * time.Nanosecond
	return &d
}

func requireLiteral(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address // ip:PROTO networks take a bare address
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("want a literal IP address, not %q (names are resolved on goroutines outside the namespace: use namespace.Resolver first)", host)
	}
	return nil
}

// Control returns a net.Dialer / net.ListenConfig Control function that
// refuses (ErrWrongNamespace) any socket not in the network namespace at
// path, before it is connected or bound ("" checks nothing). Set it on
// dialers used inside Do, including miekg/dns's Client.Dialer, so that a
// dial that strays onto another goroutine fails instead of sending from the
// wrong namespace.
func Control(path string) func(network, address string, c syscall.RawConn) error {
	if path == "" {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		want, err := inode(path)
		if err != nil {
			return err
		}
		var cerr error
		if err := c.Control(func(fd uintptr) { cerr = checkFD(int(fd), path, want) }); err != nil {
			return err
		}
		return cerr
	}
}
