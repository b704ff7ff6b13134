// Package mtr traces the path to a host hop by hop the way mtr does: probes
// (ICMP echo, UDP or TCP SYN) with increasing TTL, replies matched to
// probes by ICMP id/sequence or by port, and per-hop Loss%, Snt, Last, Avg,
// Best, Wrst and StDev, annotated with seed 002's rules for reading them.
// It runs inside another network namespace when asked.
package mtr

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/tcping"
)

// Protocol is the kind of probe.
type Protocol string

// Probe protocols.
const (
	ICMP Protocol = "icmp" // echo requests (mtr's default)
	UDP  Protocol = "udp"  // datagrams to high ports (traceroute's default)
	TCP  Protocol = "tcp"  // SYNs to a port (mtr --tcp)
)

// Options describe a trace.
type Options struct {
	Target   string        // host name or IPv4 address
	Protocol Protocol      // icmp (default), udp or tcp
	Port     int           // tcp: destination port (default 80); udp: first port (default 33434)
	Count    int           // rounds (mtr -c), default 10
	Interval time.Duration // between rounds (mtr -i), default 1s
	Timeout  time.Duration // a probe unanswered this long is lost, default 2s
	MaxHops  int           // mtr -m, default 30
	Size     int           // mtr -s: bytes of the IP packet, default 64
	Netns    string        // network namespace path; "" = current
	Resolve  bool          // reverse-resolve hop addresses (mtr without -n)
}

type probe struct {
	ttl   int
	round int
	sent  time.Time // user-space clock just before the send
	txk   time.Time // kernel software transmit timestamp, when the kernel gave one
	rx    time.Time // when the reply arrived (kernel receive timestamp for ICMP)
	from  net.IP    // who replied; nil = no reply (yet)
	done  bool
	fd    int // tcp: the connecting socket, -1 when closed
}

// rtt is the probe's round trip in milliseconds: kernel transmit to kernel
// receive timestamps when both exist, so that Go scheduling does not count.
func (p *probe) rtt() float64 {
	start := p.sent
	if !p.txk.IsZero() && !p.rx.Before(p.txk) {
		start = p.txk
	}
	return max(0, float64(p.rx.Sub(start))/float64(time.Millisecond))
}

type tracer struct {
	opts   Options
	dst    net.IP
	id     uint16 // icmp echo id
	mu     sync.Mutex
	probes map[uint16]*probe // outstanding probes by match key (reused keys overwrite)
	all    []*probe          // every probe, in send order
	txIDs  map[uint32]*probe // SOF_TIMESTAMPING_OPT_ID counter -> probe
	txNext uint32            // the counter of the next send
	txOK   bool              // transmit timestamps enabled
	icmp   map[int]string
	dest   int // smallest TTL that reached the destination; 0 = not yet
	seq    uint16
	icmpFD int
	udpFD  int
	tcpFD  int // tcp mode: raw TCP socket that sees the destination's SYN-ACK or RST
	udpSrc uint16
}

func (o *Options) defaults() error {
	if o.Protocol == "" {
		o.Protocol = ICMP
	}
	switch o.Protocol {
	case ICMP, UDP, TCP:
	default:
		return fmt.Errorf("unknown trace protocol %q: use icmp, udp or tcp", o.Protocol)
	}
	if o.Count <= 0 {
		o.Count = 10
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.MaxHops <= 0 {
		o.MaxHops = 30
	}
	if o.MaxHops > 255 {
		return fmt.Errorf("max hops %d above 255", o.MaxHops)
	}
	if o.Size == 0 {
		o.Size = 64
	}
	if o.Size < 28 || o.Size > 65000 {
		return fmt.Errorf("packet size %d outside 28..65000", o.Size)
	}
	if o.Port == 0 {
		switch o.Protocol {
		case TCP:
			o.Port = 80
		case UDP:
			o.Port = 33434
		}
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("port %d outside 1..65535", o.Port)
	}
	return nil
}

// Run traces opts.Target. After every round onRound (if not nil) gets the
// report so far, for a live display. A cancelled context ends the trace
// early and returns what was measured.
func Run(ctx context.Context, opts Options, onRound func(*Report)) (*Report, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	dst, err := resolveTarget(ctx, opts)
	if err != nil {
		return nil, err
	}
	t := &tracer{opts: opts, dst: dst, id: uint16(rand.UintN(1 << 16)), probes: map[uint16]*probe{},
		txIDs: map[uint32]*probe{}, icmp: map[int]string{}, seq: uint16(rand.UintN(1 << 16)), icmpFD: -1, udpFD: -1, tcpFD: -1}
	if err := namespace.Do(opts.Netns, t.openSockets); err != nil {
		return nil, err
	}
	defer t.closeSockets()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); t.receive(stop) }()
	if t.tcpFD >= 0 {
		wg.Add(1)
		go func() { defer wg.Done(); t.receiveTCP(stop) }()
	}
	defer func() { close(stop); wg.Wait() }()

	rounds := 0
	var lastSend time.Time
	for r := 0; r < opts.Count && ctx.Err() == nil; r++ {
		limit := opts.MaxHops
		t.mu.Lock()
		if t.dest > 0 {
			limit = t.dest
		}
		t.mu.Unlock()
		for ttl := 1; ttl <= limit && ctx.Err() == nil; ttl++ {
			// Probes of a round are spread over the interval, as mtr does:
			// no burst for routers' ICMP rate limits, and no probe whose
			// timing differs because it alone follows an idle pause.
			if ttl > 1 {
				select {
				case <-ctx.Done():
				case <-time.After(opts.Interval / time.Duration(limit)):
				}
			}
			if err := t.send(ttl, r); err != nil {
				return nil, err
			}
		}
		lastSend = time.Now()
		rounds++
		if onRound != nil {
			onRound(t.report(rounds, false))
		}
		if r < opts.Count-1 { // one round per interval
			select {
			case <-ctx.Done():
			case <-time.After(opts.Interval / time.Duration(limit)):
			}
		}
	}
	// Wait for the last replies (or their timeout).
	deadline := lastSend.Add(opts.Timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil && t.pending(time.Now()) {
		time.Sleep(10 * time.Millisecond)
	}
	rep := t.report(rounds, true)
	if opts.Resolve {
		resolveNames(ctx, opts.Netns, rep)
	}
	return rep, nil
}

func resolveTarget(ctx context.Context, o Options) (net.IP, error) {
	if ip := net.ParseIP(o.Target); ip != nil {
		if ip.To4() == nil {
			return nil, fmt.Errorf("trace %s: only IPv4 is supported for now", o.Target)
		}
		return ip.To4(), nil
	}
	ips, err := tcping.NetnsResolver(o.Netns).LookupIP(ctx, "ip4", o.Target)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", o.Target, err)
	}
	return ips[0].To4(), nil
}

// openSockets runs inside the target namespace.
func (t *tracer) openSockets() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return fmt.Errorf("open raw ICMP socket (needs root or CAP_NET_RAW): %w", err)
	}
	t.icmpFD = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("enable receive timestamps: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set receive timeout: %w", err)
	}
	if t.opts.Protocol == ICMP {
		t.txOK = enableTxTimestamps(fd)
	}
	if t.opts.Protocol == TCP {
		// The destination's answer with a kernel timestamp, as for ICMP
		// (connect's own completion is only seen when Go gets to it).
		if r, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP); err == nil {
			t.tcpFD = r
			_ = unix.SetsockoptInt(r, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
			_ = unix.SetsockoptTimeval(r, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		}
	}
	if t.opts.Protocol == UDP {
		u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open UDP socket: %w", err)
		}
		t.udpFD = u
		if err := unix.Bind(u, &unix.SockaddrInet4{}); err != nil {
			return fmt.Errorf("bind UDP socket: %w", err)
		}
		sa, err := unix.Getsockname(u)
		if err != nil {
			return fmt.Errorf("UDP socket name: %w", err)
		}
		t.udpSrc = uint16(sa.(*unix.SockaddrInet4).Port)
		t.txOK = enableTxTimestamps(u)
	}
	return nil
}

// enableTxTimestamps asks for software transmit timestamps on the error
// queue, numbered per send (SOF_TIMESTAMPING_OPT_ID), without the packet.
func enableTxTimestamps(fd int) bool {
	flags := unix.SOF_TIMESTAMPING_TX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE |
		unix.SOF_TIMESTAMPING_OPT_ID | unix.SOF_TIMESTAMPING_OPT_TSONLY
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags) == nil
}

// sentOK registers a probe that the kernel accepted: it gets the next
// transmit timestamp number. The caller holds t.mu.
func (t *tracer) sentOK(p *probe) {
	if t.txOK {
		t.txIDs[t.txNext] = p
	}
	t.txNext++
}

// readTxTimestamps drains the error queue of fd, attaching transmit
// timestamps to their probes.
func (t *tracer) readTxTimestamps(fd int) {
	buf := make([]byte, 64)
	oob := make([]byte, 256)
	for i := 0; i < 4096; i++ {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			continue
		}
		var ts time.Time
		id, haveID := uint32(0), false
		for _, m := range msgs {
			switch {
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPING && len(m.Data) >= 16:
				ts = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
			case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR && len(m.Data) >= 16:
				if m.Data[4] == unix.SO_EE_ORIGIN_TIMESTAMPING {
					id, haveID = binary.NativeEndian.Uint32(m.Data[12:16]), true
				}
			}
		}
		if !haveID || ts.IsZero() {
			continue
		}
		t.mu.Lock()
		if p := t.txIDs[id]; p != nil {
			p.txk = ts
			delete(t.txIDs, id)
		}
		t.mu.Unlock()
	}
}

func (t *tracer) closeSockets() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.icmpFD >= 0 {
		_ = unix.Close(t.icmpFD)
		t.icmpFD = -1
	}
	if t.udpFD >= 0 {
		_ = unix.Close(t.udpFD)
		t.udpFD = -1
	}
	if t.tcpFD >= 0 {
		_ = unix.Close(t.tcpFD)
		t.tcpFD = -1
	}
	for _, p := range t.probes {
		if p.fd >= 0 {
			_ = unix.Close(p.fd)
			p.fd = -1
		}
	}
}

func (t *tracer) dstAddr(port int) *unix.SockaddrInet4 {
	sa := &unix.SockaddrInet4{Port: port}
	copy(sa.Addr[:], t.dst)
	return sa
}

// send emits one probe with the given TTL.
func (t *tracer) send(ttl, round int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch t.opts.Protocol {
	case ICMP:
		t.seq++
		key := t.seq
		if err := unix.SetsockoptInt(t.icmpFD, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("set TTL %d: %w", ttl, err)
		}
		pkt := echoRequest(t.id, key, t.opts.Size-20)
		p := &probe{ttl: ttl, round: round, fd: -1, sent: time.Now()}
		t.probes[key] = p
		t.all = append(t.all, p)
		if err := unix.Sendto(t.icmpFD, pkt, 0, t.dstAddr(0)); err != nil {
			p.done = true // counted as lost: the kernel refused it (e.g. no route)
			t.noteICMP(ttl, "send: "+err.Error())
		} else {
			t.sentOK(p)
		}
	case UDP:
		t.seq++
		port := uint16(t.opts.Port) + t.seq%1024
		if err := unix.SetsockoptInt(t.udpFD, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("set TTL %d: %w", ttl, err)
		}
		if old := t.probes[port]; old != nil && !old.done {
			old.done = true // port reused while still pending: give up on the old probe
		}
		p := &probe{ttl: ttl, round: round, fd: -1, sent: time.Now()}
		t.probes[port] = p
		t.all = append(t.all, p)
		if err := unix.Sendto(t.udpFD, make([]byte, t.opts.Size-28), 0, t.dstAddr(int(port))); err != nil {
			p.done = true
			t.noteICMP(ttl, "send: "+err.Error())
		} else {
			t.sentOK(p)
		}
	case TCP:
		return t.sendTCP(ttl, round)
	}
	return nil
}

// sendTCP opens a non-blocking socket in the namespace with IP_TTL set, binds
// it to learn its source port (the key ICMP errors quote), and connects.
func (t *tracer) sendTCP(ttl, round int) error {
	var fd int
	var port uint16
	err := namespace.Do(t.opts.Netns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open TCP socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fail := func(what string, err error) error {
		_ = unix.Close(fd)
		return fmt.Errorf("%s for TTL %d probe: %w", what, ttl, err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
		return fail("set TTL", err)
	}
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("socket name", err)
	}
	port = uint16(sa.(*unix.SockaddrInet4).Port)
	p := &probe{ttl: ttl, round: round, fd: fd, sent: time.Now()}
	if old := t.probes[port]; old != nil && old.fd >= 0 {
		_ = unix.Close(old.fd)
		old.fd, old.done = -1, true
	}
	t.probes[port] = p
	t.all = append(t.all, p)
	err = unix.Connect(fd, t.dstAddr(t.opts.Port))
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		t.finishTCP(port, p, err)
		return nil
	}
	go t.waitTCP(port, p, fd)
	return nil
}

// waitTCP waits for the connect to finish: SYN-ACK or RST from the
// destination means the probe reached it.
func (t *tracer) waitTCP(port uint16, p *probe, fd int) {
	deadline := p.sent.Add(t.opts.Timeout)
	for time.Now().Before(deadline) {
		t.mu.Lock()
		done := p.done || p.fd < 0
		t.mu.Unlock()
		if done {
			break // answered (ICMP or raw listener): close below
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, 20)
		if err != nil && !errors.Is(err, unix.EINTR) {
			break
		}
		if n > 0 {
			now := time.Now()
			soerr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			t.mu.Lock()
			if !p.done && p.fd == fd {
				switch unix.Errno(soerr) {
				case 0, unix.ECONNREFUSED:
					t.record(p, t.dst, now)
					t.reached(p.ttl)
					p.done = true
				}
				// Any other error (EHOSTUNREACH after a time exceeded) came
				// from an ICMP message the raw listener matches itself.
			}
			t.mu.Unlock()
			break
		}
	}
	t.mu.Lock()
	if p.fd == fd {
		_ = unix.Close(fd)
		p.fd = -1
	}
	t.mu.Unlock()
}

func (t *tracer) finishTCP(port uint16, p *probe, err error) {
	if p.fd >= 0 {
		_ = unix.Close(p.fd)
		p.fd = -1
	}
	p.done = true
	if errors.Is(err, unix.ECONNREFUSED) {
		t.record(p, t.dst, time.Now())
		t.reached(p.ttl)
		return
	}
	t.noteICMP(p.ttl, fmt.Sprintf("connect (source port %d): %v", port, err))
}

// receive reads ICMP until stop is closed.
func (t *tracer) receive(stop chan struct{}) {
	buf := make([]byte, 1500)
	oob := make([]byte, 128)
	for {
		select {
		case <-stop:
			return
		default:
		}
		t.drainTx()
		n, at, err := recvStamped(t.icmpFD, buf, oob)
		if err != nil {
			continue // EAGAIN after the receive timeout, or EINTR
		}
		r, ok, err := ParseReply(buf[:n])
		if err != nil || !ok {
			continue
		}
		t.match(r, at)
	}
}

// recvStamped reads one packet and its kernel receive timestamp.
func recvStamped(fd int, buf, oob []byte) (int, time.Time, error) {
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
	if err != nil {
		return 0, time.Time{}, err
	}
	at := time.Now()
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
				sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
				nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
				at = time.Unix(sec, nsec)
			}
		}
	}
	return n, at, nil
}

// receiveTCP reads the raw TCP socket until stop is closed and matches the
// destination's SYN-ACK or RST to the probe whose source port it answers.
func (t *tracer) receiveTCP(stop chan struct{}) {
	buf := make([]byte, 1500)
	oob := make([]byte, 128)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, at, err := recvStamped(t.tcpFD, buf, oob)
		if err != nil || n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		if buf[0]>>4 != 4 || n < ihl+14 || !net.IP(buf[12:16]).Equal(t.dst) {
			continue
		}
		tcp := buf[ihl:n]
		sport, dport, flags := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4]), tcp[13]
		if int(sport) != t.opts.Port || (flags&0x12 != 0x12 && flags&0x04 == 0) { // SYN-ACK or RST
			continue
		}
		t.mu.Lock()
		if p := t.probes[dport]; p != nil && at.Sub(p.sent) <= t.opts.Timeout {
			switch {
			case p.from == nil:
				t.record(p, t.dst, at)
				t.reached(p.ttl)
				p.done = true
				if p.fd >= 0 {
					_ = unix.Close(p.fd) // RST (linger 0): the probe is answered
					p.fd = -1
				}
			case p.from.Equal(t.dst) && at.Before(p.rx):
				p.rx = at // connect's completion was seen first, later
			}
		}
		t.mu.Unlock()
	}
}

// drainTx reads the transmit timestamps waiting on the sending socket.
func (t *tracer) drainTx() {
	if !t.txOK {
		return
	}
	switch t.opts.Protocol {
	case ICMP:
		t.readTxTimestamps(t.icmpFD)
	case UDP:
		t.readTxTimestamps(t.udpFD)
	}
}

func (t *tracer) match(r Reply, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var key uint16
	switch {
	case t.opts.Protocol == ICMP && r.Type == icmpEchoReply:
		if r.ID != t.id || !r.From.Equal(t.dst) {
			return
		}
		key = r.Seq
	case r.InnerDst == nil || !r.InnerDst.Equal(t.dst):
		return
	case t.opts.Protocol == ICMP && r.Proto == 1 && r.ID == t.id:
		key = r.Seq
	case t.opts.Protocol == UDP && r.Proto == 17 && r.SrcPort == t.udpSrc:
		key = r.DstPort
	case t.opts.Protocol == TCP && r.Proto == 6 && int(r.DstPort) == t.opts.Port:
		key = r.SrcPort
	default:
		return
	}
	p := t.probes[key]
	if p == nil || p.done {
		return
	}
	if at.Sub(p.sent) > t.opts.Timeout {
		p.done = true // too late: counted as lost, as mtr does
		return
	}
	t.record(p, r.From, at)
	p.done = true
	if p.fd >= 0 {
		_ = unix.Close(p.fd) // stop the SYN retransmissions of a TCP probe
		p.fd = -1
	}
	switch {
	case r.Type == icmpEchoReply:
		t.reached(p.ttl)
	case r.Type == icmpUnreachable && r.From.Equal(t.dst):
		t.reached(p.ttl) // port unreachable from the destination ends a UDP trace
	case r.Type == icmpUnreachable:
		t.icmp[p.ttl] = fmt.Sprintf("ICMP unreachable code %d from %s", r.Code, r.From)
	}
}

// record stores a reply for probe p; the caller holds t.mu.
func (t *tracer) record(p *probe, from net.IP, at time.Time) {
	p.from, p.rx = from, at
}

func (t *tracer) reached(ttl int) {
	if t.dest == 0 || ttl < t.dest {
		t.dest = ttl
	}
}

func (t *tracer) noteICMP(ttl int, s string) { t.icmp[ttl] = s }

// pending reports whether a probe still waits for its reply.
func (t *tracer) pending(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.probes {
		if !p.done && now.Sub(p.sent) < t.opts.Timeout {
			return true
		}
	}
	return false
}

// report builds the per-hop table from every probe sent. When final,
// probes still pending count as lost; otherwise they are left out of Snt.
func (t *tracer) report(rounds int, final bool) *Report {
	if final {
		t.drainTx()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	last := t.dest
	if last == 0 {
		// Not reached: stop after the last hop that answered.
		for _, p := range t.all {
			if p.from != nil {
				last = max(last, p.ttl)
			}
		}
	}
	rep := &Report{Target: t.opts.Target, Address: t.dst.String(), Protocol: string(t.opts.Protocol),
		Size: t.opts.Size, Rounds: rounds, Reached: t.dest > 0, Hops: []Hop{}}
	if t.opts.Protocol == TCP {
		rep.Port = t.opts.Port
	}
	hops := make([]Hop, last)
	for i := range hops {
		hops[i] = Hop{TTL: i + 1, Replies: map[string]int{}, ICMP: t.icmp[i+1]}
	}
	for _, p := range t.all { // in send order: RTTs and Last follow it
		if p.ttl > last {
			continue
		}
		h := &hops[p.ttl-1]
		if p.from != nil {
			h.Sent++
			h.Replies[p.from.String()]++
			h.RTTs = append(h.RTTs, p.rtt())
			continue
		}
		if !final && !p.done && now.Sub(p.sent) < t.opts.Timeout {
			continue // still waiting
		}
		h.Sent++
		h.Lost = append(h.Lost, p.round)
	}
	for i := range hops {
		hops[i].hopStats()
	}
	rep.Hops = hops
	rep.Annotate()
	return rep
}

func resolveNames(ctx context.Context, netnsPath string, rep *Report) {
	r := tcping.NetnsResolver(netnsPath)
	for i := range rep.Hops {
		h := &rep.Hops[i]
		for _, a := range h.Addresses {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			names, err := r.LookupAddr(lctx, a)
			cancel()
			if err == nil && len(names) > 0 {
				h.Names = append(h.Names, names[0])
			} else {
				h.Names = append(h.Names, a)
			}
		}
	}
}
