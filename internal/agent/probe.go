package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/netdoctor/netdoctor/internal/cluster"
	"github.com/netdoctor/netdoctor/internal/namespace"
	"github.com/netdoctor/netdoctor/internal/tcping"
)

// ProbeTimeout bounds one probe.
const ProbeTimeout = 1500 * time.Millisecond

// probeWorkers is how many probes run at once.
const probeWorkers = 16

// RunProbes runs the probes of a plan, host-netns probes in hostNetns (a
// path; "" = the agent's own namespace) and pod-netns probes in podNetns (a
// path; "" = none found: those probes are skipped with noPodWhy). Each
// probe enters its namespace itself: goroutines do not inherit a thread's
// namespace. Every probe gets a result.
func RunProbes(ctx context.Context, plan []cluster.Probe, hostNetns, podNetns, noPodWhy string) []cluster.ProbeResult {
	out := make([]cluster.ProbeResult, len(plan))
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeWorkers)
	for i, p := range plan {
		if p.Netns == cluster.FromPod && podNetns == "" {
			out[i] = cluster.ProbeResult{ID: p.ID, Status: cluster.ProbeSkipped, Detail: noPodWhy}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ns := hostNetns
			if p.Netns == cluster.FromPod {
				ns = podNetns
			}
			start := time.Now()
			r := runProbe(ctx, p, ns)
			r.ID = p.ID
			if r.Status == cluster.ProbeOK && r.RTTms == 0 {
				r.RTTms = float64(time.Since(start).Microseconds()) / 1000
			}
			out[i] = r
		}()
	}
	wg.Wait()
	return out
}

func runProbe(ctx context.Context, p cluster.Probe, ns string) cluster.ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, 2*ProbeTimeout)
	defer cancel()
	switch p.Kind {
	case cluster.KindPodTCP, cluster.KindClusterIP, cluster.KindEndpoint:
		return tcpProbe(ctx, p.Target, ns)
	case cluster.KindDNSShort, cluster.KindDNSNS, cluster.KindDNSFQDN, cluster.KindDNSExternal, cluster.KindDNSUpstream:
		return dnsProbe(p, ns)
	case cluster.KindPodICMP:
		return icmpProbe(p.Target, 0, false, ns)
	case cluster.KindMTU:
		return icmpProbe(p.Target, p.Size, true, ns)
	case cluster.KindOverlay:
		return udpProbe(p.Target, ns)
	}
	return cluster.ProbeResult{Status: cluster.ProbeError, Detail: "unknown probe kind " + p.Kind}
}

func tcpProbe(ctx context.Context, target, ns string) cluster.ProbeResult {
	res, err := tcping.Run(ctx, tcping.Options{Target: target, Mode: tcping.ModeTCP, Count: 1, Timeout: ProbeTimeout, Interval: time.Millisecond, Netns: ns}, nil)
	if err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: err.Error()}
	}
	if len(res.Attempts) == 0 {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: "interrupted"}
	}
	a := res.Attempts[0]
	switch a.Outcome {
	case tcping.Connected:
		return cluster.ProbeResult{Status: cluster.ProbeOK, RTTms: a.RTT}
	case tcping.Refused:
		return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "TCP connect to " + target + ": connection refused"}
	case tcping.Timeout:
		return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("TCP connect to %s: no answer in %s", target, ProbeTimeout)}
	}
	return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "TCP connect to " + target + ": " + a.Error}
}

func dnsProbe(p cluster.Probe, ns string) cluster.ProbeResult {
	if p.Server == "" {
		return cluster.ProbeResult{Status: cluster.ProbeSkipped, Detail: "no cluster DNS Service"}
	}
	var r cluster.ProbeResult
	err := namespace.Do(ns, func() error {
		c := &dns.Client{Net: "udp", Timeout: ProbeTimeout, Dialer: &net.Dialer{Timeout: ProbeTimeout, Control: namespace.Control(ns)}}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(p.Target), dns.TypeA)
		server := net.JoinHostPort(p.Server, "53")
		if ap, err := netip.ParseAddrPort(p.Server); err == nil {
			server = ap.String()
		}
		resp, rtt, err := c.Exchange(m, server)
		if err != nil {
			r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("query %s at %s: %v", p.Target, p.Server, err)}
			return nil
		}
		var got []string
		for _, a := range resp.Answer {
			if rr, ok := a.(*dns.A); ok {
				got = append(got, rr.A.String())
			}
		}
		switch {
		case resp.Rcode != dns.RcodeSuccess:
			r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("%s at %s: %s", p.Target, p.Server, dns.RcodeToString[resp.Rcode])}
		case len(got) == 0:
			r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("%s at %s: no A record", p.Target, p.Server)}
		case p.Expect != "" && !contains(got, p.Expect):
			r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("%s at %s: answered %v, want %s", p.Target, p.Server, got, p.Expect)}
		default:
			r = cluster.ProbeResult{Status: cluster.ProbeOK, RTTms: float64(rtt.Microseconds()) / 1000}
			if p.Kind == cluster.KindDNSUpstream {
				r.Detail = fmt.Sprintf("%s at %s: %v", p.Target, p.Server, got)
			}
		}
		return nil
	})
	if err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: err.Error()}
	}
	return r
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// udpProbe sends one datagram to the overlay port on a connected socket and
// waits briefly: an ICMP port unreachable shows as ECONNREFUSED. Silence is
// all UDP can give: reported ok as "sent, no ICMP unreachable".
func udpProbe(target, ns string) cluster.ProbeResult {
	var r cluster.ProbeResult
	err := namespace.Do(ns, func() error {
		d := net.Dialer{Timeout: ProbeTimeout, Control: namespace.Control(ns)}
		c, err := d.Dial("udp", target)
		if err != nil {
			r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "udp " + target + ": " + err.Error()}
			return nil
		}
		defer func() { _ = c.Close() }()
		// A VXLAN header with the I flag and VNI 0 and no inner frame: the
		// receiver drops it without a reply. Three datagrams, as ICMP
		// errors are rate limited and one may be suppressed.
		buf := make([]byte, 64)
		for i := 0; i < 3; i++ {
			if _, err := c.Write([]byte{0x08, 0, 0, 0, 0, 0, 0, 0}); err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "udp " + target + ": ICMP port unreachable (rejected)"}
					return nil
				}
				r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "udp send to " + target + ": " + err.Error()}
				return nil
			}
			_ = c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			_, err = c.Read(buf)
			var ne net.Error
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "udp " + target + ": ICMP port unreachable (rejected)"}
				return nil
			case errors.As(err, &ne) && ne.Timeout():
				continue
			case err != nil:
				r = cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "udp " + target + ": " + err.Error()}
				return nil
			default:
				r = cluster.ProbeResult{Status: cluster.ProbeOK, Detail: "answered"}
				return nil
			}
		}
		r = cluster.ProbeResult{Status: cluster.ProbeOK, Detail: "sent, no ICMP unreachable (UDP cannot prove delivery)"}
		return nil
	})
	if err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: err.Error()}
	}
	return r
}

// icmpProbe sends one ICMP echo on a raw socket. With df, the packet has
// the Don't Fragment bit and a total length of size (0 = the path MTU the
// kernel knows for the target, i.e. the outgoing interface's MTU).
func icmpProbe(target string, size int, df bool, ns string) cluster.ProbeResult {
	dst, err := netip.ParseAddr(target)
	if err != nil || !dst.Is4() {
		return cluster.ProbeResult{Status: cluster.ProbeSkipped, Detail: "ICMP probes are IPv4 only here: " + target}
	}
	var r cluster.ProbeResult
	err = namespace.Do(ns, func() error {
		r = icmpEcho(dst, size, df)
		return nil
	})
	if err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: err.Error()}
	}
	return r
}

func icmpEcho(dst netip.Addr, size int, df bool) cluster.ProbeResult {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeError, Detail: "raw ICMP socket: " + err.Error() + " (needs CAP_NET_RAW)"}
	}
	f := os.NewFile(uintptr(fd), "icmp")
	defer func() { _ = f.Close() }()
	sa := &unix.SockaddrInet4{Addr: dst.As4()}
	if err := unix.Connect(fd, sa); err != nil {
		return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: "connect " + dst.String() + ": " + err.Error()}
	}
	what := "ICMP echo to " + dst.String()
	payload := 56
	if df {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE); err != nil {
			return cluster.ProbeResult{Status: cluster.ProbeError, Detail: "set DF: " + err.Error()}
		}
		if size == 0 {
			mtu, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
			if err != nil {
				return cluster.ProbeResult{Status: cluster.ProbeError, Detail: "read path MTU: " + err.Error()}
			}
			size = mtu
		}
		payload = size - 28
		what = fmt.Sprintf("DF ICMP echo of %d bytes to %s", size, dst)
	}
	id := uint16(rand.IntN(65535))
	msg := make([]byte, 8+payload)
	msg[0] = 8
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], 1)
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	start := time.Now()
	if _, err := unix.Write(fd, msg); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: what + ": message too long for the local interface MTU"}
		}
		return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: what + ": " + err.Error()}
	}
	deadline := start.Add(ProbeTimeout)
	buf := make([]byte, 65536)
	var lastErr error
	for {
		left := time.Until(deadline)
		if left <= 0 {
			d := fmt.Sprintf("%s: no reply in %s", what, ProbeTimeout)
			if lastErr != nil {
				d += " (last ICMP error on the socket: " + lastErr.Error() + ")"
			}
			return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: d}
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, err := unix.Read(fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EMSGSIZE) {
				return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: what + ": fragmentation needed on the path (a smaller MTU on the way)"}
			}
			// An ICMP error about another probe to the same address (a UDP
			// port unreachable) is reported on every raw socket connected
			// to it: not about this echo, keep waiting for ours.
			if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) {
				lastErr = err
				continue
			}
			return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: what + ": " + err.Error()}
		}
		if n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		if n < ihl+8 {
			continue
		}
		icmp := buf[ihl:n]
		switch icmp[0] {
		case 0: // echo reply
			if binary.BigEndian.Uint16(icmp[4:]) == id {
				return cluster.ProbeResult{Status: cluster.ProbeOK, RTTms: float64(time.Since(start).Microseconds()) / 1000}
			}
		case 3, 11: // unreachable, time exceeded: is it about our echo?
			if len(icmp) >= 8+20+8 {
				inner := icmp[8:]
				iihl := int(inner[0]&0x0f) * 4
				if len(inner) >= iihl+8 && binary.BigEndian.Uint16(inner[iihl+4:]) == id {
					from := netip.AddrFrom4([4]byte(buf[12:16]))
					if icmp[0] == 3 && icmp[1] == 4 {
						return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("%s: fragmentation needed, next-hop MTU %d (from %s)", what, binary.BigEndian.Uint16(icmp[6:]), from)}
					}
					return cluster.ProbeResult{Status: cluster.ProbeFail, Detail: fmt.Sprintf("%s: ICMP type %d code %d from %s", what, icmp[0], icmp[1], from)}
				}
			}
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = (s & 0xffff) + (s >> 16)
	}
	return ^uint16(s)
}
