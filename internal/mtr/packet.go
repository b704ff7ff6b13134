package mtr

import (
	"encoding/binary"
	"errors"
	"net"
)

// ICMP types netdoctor's trace reads.
const (
	icmpEchoReply    = 0
	icmpUnreachable  = 3
	icmpEchoRequest  = 8
	icmpTimeExceeded = 11
)

// Reply is one ICMP message decoded from a raw socket (outer IPv4 header
// included), reduced to what matching a probe needs.
type Reply struct {
	From     net.IP // who sent the ICMP message
	Type     uint8
	Code     uint8
	Proto    uint8  // protocol of the quoted probe (1, 6, 17); for echo replies 1
	InnerDst net.IP // destination of the quoted probe (nil for echo replies)
	// For an echo reply or a quoted echo request: ID and Seq. For quoted
	// UDP or TCP: SrcPort and DstPort.
	ID, Seq          uint16
	SrcPort, DstPort uint16
}

var errShort = errors.New("packet too short")

// ParseReply decodes an IPv4 packet carrying ICMP: echo replies and errors
// (time exceeded, unreachable) quoting an IPv4 header and the first 8 bytes
// of the probe. Other ICMP messages return ok=false.
func ParseReply(pkt []byte) (r Reply, ok bool, err error) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return r, false, errors.New("not an IPv4 packet")
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || len(pkt) < ihl+8 {
		return r, false, errShort
	}
	if pkt[9] != 1 {
		return r, false, nil
	}
	r.From = net.IP(append([]byte(nil), pkt[12:16]...))
	icmp := pkt[ihl:]
	r.Type, r.Code = icmp[0], icmp[1]
	switch r.Type {
	case icmpEchoReply:
		r.Proto = 1
		r.ID = binary.BigEndian.Uint16(icmp[4:6])
		r.Seq = binary.BigEndian.Uint16(icmp[6:8])
		return r, true, nil
	case icmpTimeExceeded, icmpUnreachable:
	default:
		return r, false, nil
	}
	inner := icmp[8:]
	if len(inner) < 20 || inner[0]>>4 != 4 {
		return r, false, errShort
	}
	iihl := int(inner[0]&0x0f) * 4
	if iihl < 20 || len(inner) < iihl+8 {
		return r, false, errShort
	}
	r.Proto = inner[9]
	r.InnerDst = net.IP(append([]byte(nil), inner[16:20]...))
	l4 := inner[iihl:]
	switch r.Proto {
	case 1:
		if l4[0] != icmpEchoRequest {
			return r, false, nil
		}
		r.ID = binary.BigEndian.Uint16(l4[4:6])
		r.Seq = binary.BigEndian.Uint16(l4[6:8])
	case 6, 17:
		r.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		r.DstPort = binary.BigEndian.Uint16(l4[2:4])
	default:
		return r, false, nil
	}
	return r, true, nil
}

// echoRequest builds an ICMP echo request of total ICMP length n (>= 8).
func echoRequest(id, seq uint16, n int) []byte {
	if n < 8 {
		n = 8
	}
	b := make([]byte, n)
	b[0] = icmpEchoRequest
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	for i := 8; i < n; i++ {
		b[i] = byte(i)
	}
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
