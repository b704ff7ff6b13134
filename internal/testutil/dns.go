package testutil

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// ServeDNS answers DNS queries on pc until the test ends: a question whose name is a key of
// records gets that record (text in zone-file form, e.g. "web.test. 30 IN A 198.18.0.5"),
// any other NXDOMAIN. pc is usually opened inside a test namespace.
func ServeDNS(t testing.TB, pc net.PacketConn, records map[string]string) {
	t.Helper()
	rrs := make(map[string]dns.RR, len(records))
	for name, text := range records {
		rr, err := dns.NewRR(text)
		if err != nil {
			t.Fatalf("test DNS record %q: %v", text, err)
		}
		rrs[dns.Fqdn(name)] = rr
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if rr, ok := rrs[r.Question[0].Name]; ok && len(r.Question) == 1 {
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
}
