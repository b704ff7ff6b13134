// Package tcping measures connectivity to one HOST:PORT the way paping does:
// repeated TCP connects (or UDP request/reply exchanges, or DNS queries),
// each attempt classified as connected, refused, timed out or failed, with
// loss and latency statistics. It can run inside another network namespace.
package tcping

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Mode is what one attempt does.
type Mode string

// Modes of a probe.
const (
	ModeTCP Mode = "tcp" // TCP connect (SYN, SYN-ACK), then close
	ModeUDP Mode = "udp" // send a datagram, wait for a reply
	ModeDNS Mode = "dns" // send a DNS query over UDP, wait for the answer
)

// Outcome classifies one attempt.
type Outcome string

// Outcomes of an attempt. Refused and Timeout are kept apart: a refusal
// (RST, ICMP port unreachable) proves the path works and nothing listens;
// a timeout means packets were lost or silently dropped.
const (
	Connected Outcome = "connected" // TCP handshake done, UDP reply or DNS answer received
	Refused   Outcome = "refused"   // RST to the SYN, or ICMP port unreachable
	Timeout   Outcome = "timeout"   // no answer before the timeout
	Failed    Outcome = "error"     // anything else (unreachable, unexpected reply...)
)

// Options describe a tcping run.
type Options struct {
	Target   string        // HOST:PORT
	Mode     Mode          // tcp (default), udp or dns
	Count    int           // attempts; 0 means until ctx is cancelled
	Interval time.Duration // time between the starts of two attempts
	Timeout  time.Duration // per attempt
	Netns    string        // network namespace path to probe from; "" = current
	Payload  []byte        // UDP: datagram to send
	Expect   []byte        // UDP: the reply must contain these bytes (nil = any reply)
	DNSName  string        // DNS: the name to query
	DNSType  uint16        // DNS: the query type (default A)
}

// Attempt is the result of one probe.
type Attempt struct {
	Seq     int     `json:"seq"`
	Outcome Outcome `json:"outcome"`
	RTT     float64 `json:"rttMs"` // time to the outcome, milliseconds
	// KernelRTT is the handshake round trip the kernel measured (TCP_INFO),
	// free of Go scheduling delays; TCP connects only.
	KernelRTT float64 `json:"kernelRttMs,omitempty"`
	Local     string  `json:"local,omitempty"`   // local address:port used
	Rcode     string  `json:"rcode,omitempty"`   // DNS: response code
	Answers   int     `json:"answers,omitempty"` // DNS: answer records
	Error     string  `json:"error,omitempty"`
}

// Summary counts the attempts; Loss is the share that did not connect.
type Summary struct {
	Sent    int     `json:"sent"`
	OK      int     `json:"ok"`
	Refused int     `json:"refused"`
	Timeout int     `json:"timeout"`
	Errors  int     `json:"errors"`
	Loss    float64 `json:"lossPercent"`
	RTT     Stats   `json:"rtt"` // over successful attempts only
	// KernelRTT are the statistics of the kernel's handshake RTTs (TCP).
	KernelRTT *Stats         `json:"kernelRtt,omitempty"`
	Rcodes    map[string]int `json:"rcodes,omitempty"`
}

// Result is a whole run.
type Result struct {
	Target   string    `json:"target"`
	Address  string    `json:"address"` // resolved IP:port
	Mode     Mode      `json:"mode"`
	Netns    string    `json:"netns,omitempty"`
	Attempts []Attempt `json:"attempts"`
	Summary  Summary   `json:"summary"`
}

// ParseTarget checks a HOST:PORT and returns its parts.
func ParseTarget(target string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(target)
	if err != nil {
		return "", 0, fmt.Errorf("target %q is not HOST:PORT: %w", target, err)
	}
	if h == "" {
		return "", 0, fmt.Errorf("target %q has no host", target)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("target %q: port %q is not a number from 1 to 65535", target, p)
	}
	return h, port, nil
}

func (o *Options) defaults() error {
	if o.Mode == "" {
		o.Mode = ModeTCP
	}
	switch o.Mode {
	case ModeTCP, ModeUDP, ModeDNS:
	default:
		return fmt.Errorf("unknown tcping mode %q", o.Mode)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Count < 0 {
		return fmt.Errorf("count %d is negative", o.Count)
	}
	if o.Mode == ModeDNS {
		if o.DNSName == "" {
			return errors.New("dns mode needs a name to query")
		}
		if o.DNSType == 0 {
			o.DNSType = dns.TypeA
		}
	}
	if o.Mode == ModeUDP && len(o.Payload) == 0 {
		o.Payload = []byte("netdoctor tcping\n")
	}
	return nil
}

// Run probes opts.Target Count times (or until ctx ends), calling onAttempt
// (if not nil) after each attempt, and returns every attempt and the summary.
// A cancelled context ends the run early without error.
func Run(ctx context.Context, opts Options, onAttempt func(Attempt)) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	host, port, err := ParseTarget(opts.Target)
	if err != nil {
		return nil, err
	}
	ip, err := resolve(ctx, opts.Netns, host)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	res := &Result{Target: opts.Target, Address: addr, Mode: opts.Mode, Netns: opts.Netns, Attempts: []Attempt{}}
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for seq := 1; opts.Count == 0 || seq <= opts.Count; seq++ {
		if ctx.Err() != nil {
			break
		}
		a := probeOnce(ctx, opts, addr)
		a.Seq = seq
		if ctx.Err() != nil && a.Outcome != Connected {
			break // interrupted mid-attempt: not a measurement
		}
		res.Attempts = append(res.Attempts, a)
		if onAttempt != nil {
			onAttempt(a)
		}
		if opts.Count != 0 && seq == opts.Count {
			break
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	res.Summary = Summarize(res.Attempts)
	return res, nil
}

// Summarize counts outcomes and computes the statistics of successful attempts.
func Summarize(attempts []Attempt) Summary {
	s := Summary{Sent: len(attempts)}
	var rtts, krtts []time.Duration
	for _, a := range attempts {
		switch a.Outcome {
		case Connected:
			s.OK++
			rtts = append(rtts, time.Duration(a.RTT*float64(time.Millisecond)))
			if a.KernelRTT > 0 {
				krtts = append(krtts, time.Duration(a.KernelRTT*float64(time.Millisecond)))
			}
		case Refused:
			s.Refused++
		case Timeout:
			s.Timeout++
		default:
			s.Errors++
		}
		if a.Rcode != "" {
			if s.Rcodes == nil {
				s.Rcodes = map[string]int{}
			}
			s.Rcodes[a.Rcode]++
		}
	}
	if s.Sent > 0 {
		s.Loss = 100 * float64(s.Sent-s.OK) / float64(s.Sent)
	}
	s.RTT = ComputeStats(rtts)
	if len(krtts) > 0 {
		k := ComputeStats(krtts)
		s.KernelRTT = &k
	}
	return s
}

func resolve(ctx context.Context, netnsPath, host string) (net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return ip, nil
	}
	ips, err := NetnsResolver(netnsPath).LookupIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: no addresses", host)
	}
	return ips[0], nil
}

// NetnsResolver is a resolver whose DNS queries leave from the network
// namespace at path ("" = this one). It reads this machine's resolv.conf and
// hosts file (as nsenter -n does). The resolver runs lookups on goroutines of
// its own, so the namespace is entered where the socket is made, in Dial.
func NetnsResolver(path string) *net.Resolver {
	if path == "" {
		return net.DefaultResolver
	}
	return namespace.Resolver(path)
}

func probeOnce(ctx context.Context, opts Options, addr string) Attempt {
	var a Attempt
	err := namespace.Do(opts.Netns, func() error {
		switch opts.Mode {
		case ModeUDP:
			a = probeUDP(ctx, opts, addr)
		case ModeDNS:
			a = probeDNS(ctx, opts, addr)
		default:
			a = probeTCP(ctx, opts, addr)
		}
		return nil
	})
	if err != nil {
		a = Attempt{Outcome: Failed, Error: err.Error()}
	}
	return a
}

// probeTCP connects once. It runs on the thread that namespace.Do locked,
// so the socket is created in the target namespace.
func probeTCP(ctx context.Context, opts Options, addr string) Attempt {
	d := net.Dialer{Timeout: opts.Timeout, Control: namespace.Control(opts.Netns)}
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	rtt := time.Since(start)
	a := Attempt{RTT: Ms(rtt)}
	if err != nil {
		a.Outcome, a.Error = classify(err)
		return a
	}
	a.Outcome = Connected
	a.Local = c.LocalAddr().String()
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) {
				if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.Rtt > 0 {
					a.KernelRTT = float64(info.Rtt) / 1000
				}
			})
		}
		// RST instead of FIN: no TIME_WAIT pile-up on either side over many attempts.
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	return a
}

func probeUDP(ctx context.Context, opts Options, addr string) Attempt {
	d := net.Dialer{Timeout: opts.Timeout, Control: namespace.Control(opts.Netns)}
	start := time.Now()
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		o, msg := classify(err)
		return Attempt{Outcome: o, Error: msg, RTT: Ms(time.Since(start))}
	}
	defer func() { _ = c.Close() }()
	a := Attempt{Local: c.LocalAddr().String()}
	deadline := start.Add(opts.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(opts.Payload); err != nil {
		a.Outcome, a.Error = classify(err)
		a.RTT = Ms(time.Since(start))
		return a
	}
	buf := make([]byte, 65536)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	for {
		n, err := c.Read(buf)
		a.RTT = Ms(time.Since(start))
		if err != nil {
			if a.Outcome == Failed {
				return a // the only replies were unexpected ones
			}
			a.Outcome, a.Error = classify(err)
			return a
		}
		if opts.Expect == nil || bytes.Contains(buf[:n], opts.Expect) {
			a.Outcome = Connected
			return a
		}
		// A reply without the expected bytes: keep waiting for the right one
		// until the deadline, but remember what came.
		a.Error = fmt.Sprintf("unexpected reply of %d bytes", n)
		a.Outcome = Failed
		if time.Now().After(deadline) {
			return a
		}
	}
}

func probeDNS(ctx context.Context, opts Options, addr string) Attempt {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(opts.DNSName), opts.DNSType)
	c := dns.Client{Net: "udp", Timeout: opts.Timeout, Dialer: &net.Dialer{Timeout: opts.Timeout, Control: namespace.Control(opts.Netns)}}
	start := time.Now()
	r, _, err := c.ExchangeContext(ctx, m, addr)
	a := Attempt{RTT: Ms(time.Since(start))}
	if err != nil {
		a.Outcome, a.Error = classify(err)
		return a
	}
	a.Outcome = Connected
	a.Rcode = dns.RcodeToString[r.Rcode]
	a.Answers = len(r.Answer)
	return a
}

// classify maps a dial/read error to an outcome.
func classify(err error) (Outcome, string) {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused, "connection refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout, "timed out"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return Failed, "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return Failed, "network unreachable"
	}
	return Failed, err.Error()
}
