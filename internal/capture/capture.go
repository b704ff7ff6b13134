// Package capture records packets at several points at once (an interface
// in a network namespace, on this node) into one pcapng file with one
// interface block per point, filtered in the kernel by a tcpdump-syntax
// filter compiled to classic BPF, and bounded by count, duration and size.
// It also analyses captures the way an expert reads them (analyze.go).
//
// Each point is an AF_PACKET socket with a TPACKET_V3 ring, opened inside
// the point's network namespace and bound to its interface; kernel drops
// come from PACKET_STATISTICS.
package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/afpacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/vishvananda/netlink"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Defaults of a capture.
const (
	DefaultSnaplen     = 262144
	DefaultMaxBytes    = 100 << 20 // never write more than this unless told
	DefaultBufferBytes = 32 << 20  // kernel ring per point
)

// ErrNoInterface is returned (wrapped) when a point's interface does not exist.
var ErrNoInterface = errors.New("no such interface")

// Point is one place to capture: an interface in a network namespace on a node.
type Point struct {
	Node       string `json:"node"`           // node name; "" = this machine's hostname
	Netns      string `json:"netnsPath"`      // namespace path; "" = current
	NetnsLabel string `json:"netns"`          // how the namespace was named (name, pod ns/name, pid:N)
	Iface      string `json:"iface"`          // device name inside that namespace
	Pod        string `json:"pod,omitempty"`  // pod ns/name when the point is a pod's
	Note       string `json:"note,omitempty"` // free text for the interface description
}

// Label is the point's name in files and reports: node/netns/device.
func (p Point) Label() string {
	ns := p.NetnsLabel
	if ns == "" {
		ns = "host"
	}
	return p.nodeName() + "/" + ns + "/" + p.Iface
}

func (p Point) nodeName() string {
	if p.Node != "" {
		return p.Node
	}
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}

// Description is the pcapng interface description of the point.
func (p Point) Description() string {
	s := fmt.Sprintf("node %s, netns %s, device %s", p.nodeName(), nsOrHost(p.NetnsLabel), p.Iface)
	if p.Pod != "" {
		s += ", pod " + p.Pod
	}
	if p.Note != "" {
		s += ", " + p.Note
	}
	return s
}

func nsOrHost(s string) string {
	if s == "" {
		return "host"
	}
	return s
}

// Config describes a capture.
type Config struct {
	Points   []Point
	Filter   string        // tcpdump filter expression; "" = everything
	Snaplen  int           // bytes kept per packet (default 262144)
	Count    int           // stop after this many packets in all; 0 = no count bound
	Duration time.Duration // stop after this long; 0 = no time bound
	MaxBytes int64         // stop before the file would exceed this (default 100 MiB)
	// BufferBytes is the kernel ring per point (tcpdump -B), default 32 MiB.
	BufferBytes int
	Out         io.Writer // pcapng output; nil = no file
	// OnPacket, if set, sees every packet kept (for a live text display);
	// data is only valid during the call.
	OnPacket func(point int, ci gopacket.CaptureInfo, data []byte)
}

// PointStats is what one point saw.
type PointStats struct {
	Point        Point  `json:"point"`
	Label        string `json:"label"`
	LinkType     string `json:"linkType"`
	Compiler     string `json:"filterCompiler"` // builtin or tcpdump
	Captured     uint64 `json:"captured"`       // packets read from the ring
	Written      uint64 `json:"written"`        // packets kept (file / display)
	KernelSeen   uint64 `json:"kernelSeen"`     // packets the filter accepted (PACKET_STATISTICS tp_packets)
	KernelDrops  uint64 `json:"kernelDrops"`    // dropped because the ring was full (tp_drops)
	QueueFreezes uint64 `json:"queueFreezes"`   // TPACKET_V3 ring freezes
}

// Result summarises a finished capture.
type Result struct {
	Points  []PointStats `json:"points"`
	Packets uint64       `json:"packets"`
	Bytes   int64        `json:"bytes"`   // pcapng bytes written
	Stopped string       `json:"stopped"` // count, duration, size, interrupted or error
	Filter  string       `json:"filter"`
	Started time.Time    `json:"started"`
	Ended   time.Time    `json:"ended"`
}

type handle struct {
	point Point
	tp    *afpacket.TPacket
	lt    layers.LinkType
	stats PointStats
	// attached is when the filter was attached; earlier packets are unfiltered.
	attached time.Time
	early    uint64 // unfiltered packets skipped
}

// Session is a running capture.
type Session struct {
	cfg     Config
	handles []*handle
	done    chan struct{}
	cancel  context.CancelFunc
	result  Result
	errMu   sync.Mutex
	err     error
	stopped atomic.Value // string

	// The writer side, shared by the points' readers under wmu: each reader
	// writes straight from its ring (no copy, no hand-off between threads).
	wmu     sync.Mutex
	w       *pcapgo.NgWriter
	cw      *countingWriter
	bw      *bufio.Writer
	n       uint64 // packets kept
	written int64  // bytes the file will have
	reserve int64  // room kept for the statistics blocks
}

// fail records the first error and stops the capture.
func (s *Session) fail(err error) {
	s.errMu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.errMu.Unlock()
	s.stop("error")
}

// Start opens every point (a ring bound to the interface inside its
// namespace, the compiled filter attached) and starts recording. When Start
// returns, packets are being captured at every point. Wait for the result.
func Start(ctx context.Context, cfg Config) (*Session, error) {
	if len(cfg.Points) == 0 {
		return nil, errors.New("capture needs at least one point (--iface)")
	}
	if cfg.Snaplen <= 0 {
		cfg.Snaplen = DefaultSnaplen
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.BufferBytes <= 0 {
		cfg.BufferBytes = DefaultBufferBytes
	}
	if cfg.Count < 0 || cfg.Duration < 0 {
		return nil, errors.New("count and duration must not be negative")
	}
	s := &Session{cfg: cfg, done: make(chan struct{})}
	for _, p := range cfg.Points {
		h, err := openPoint(ctx, p, cfg)
		if err != nil {
			s.closeAll()
			return nil, err
		}
		s.handles = append(s.handles, h)
	}
	if cfg.Out != nil {
		// A large buffer between the pcapng writer (4 KiB of its own) and
		// the file: one write system call per MiB, not per 30 packets.
		s.bw = bufio.NewWriterSize(cfg.Out, 1<<20)
		s.cw = &countingWriter{w: s.bw}
		var err error
		s.w, err = newWriter(s.cw, s.handles, cfg)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("write pcapng header: %w", err)
		}
		s.written = s.cw.n                          // the header blocks
		s.reserve = int64(isbSize * len(s.handles)) // the statistics blocks at the end
	}
	var rctx context.Context
	var cancel context.CancelFunc
	if cfg.Duration > 0 {
		rctx, cancel = context.WithTimeout(ctx, cfg.Duration)
	} else {
		rctx, cancel = context.WithCancel(ctx)
	}
	s.cancel = cancel
	s.result = Result{Filter: cfg.Filter, Started: time.Now()}
	var wg sync.WaitGroup
	for i, h := range s.handles {
		wg.Add(1)
		go func() { defer wg.Done(); s.read(rctx, i, h) }()
	}
	go func() { wg.Wait(); s.finish(rctx) }()
	return s, nil
}

// ringGeometry splits a ring of about size bytes into TPACKET_V3 blocks:
// 1 MiB blocks for large rings, 256 KiB ones (at least 4) for small ones,
// so that the kernel always has a free block while one is being read.
func ringGeometry(size int) (block, blocks int) {
	block = 1 << 20
	if size < 8<<20 {
		block = 256 << 10
	}
	return block, max(4, size/block)
}

func openPoint(ctx context.Context, p Point, cfg Config) (*handle, error) {
	h := &handle{point: p}
	block, blocks := ringGeometry(cfg.BufferBytes)
	err := namespace.Do(p.Netns, func() error {
		link, err := netlink.LinkByName(p.Iface)
		if err != nil {
			return fmt.Errorf("capture point %s: %w %q in netns %s", p.Label(), ErrNoInterface, p.Iface, nsOrHost(p.NetnsLabel))
		}
		switch link.Attrs().EncapType {
		case "ether", "loopback":
			h.lt = layers.LinkTypeEthernet
		case "none":
			h.lt = layers.LinkTypeRaw
		default:
			return fmt.Errorf("capture point %s: link type %q not supported", p.Label(), link.Attrs().EncapType)
		}
		h.tp, err = afpacket.NewTPacket(
			afpacket.OptInterface(p.Iface),
			afpacket.TPacketVersion3,
			afpacket.OptFrameSize(1<<16), afpacket.OptBlockSize(block), afpacket.OptNumBlocks(blocks),
			afpacket.OptPollTimeout(50*time.Millisecond), afpacket.OptBlockTimeout(10*time.Millisecond))
		if err != nil {
			return fmt.Errorf("capture point %s: open packet socket: %w", p.Label(), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	prog, by, err := CompileFilter(ctx, cfg.Filter, h.lt, cfg.Snaplen)
	h.stats.Compiler = by
	if err != nil {
		h.tp.Close()
		return nil, err
	}
	if err := h.tp.SetBPF(prog); err != nil {
		h.tp.Close()
		return nil, fmt.Errorf("capture point %s: attach filter: %w", p.Label(), err)
	}
	// Packets that reached the ring between bind and attach were not
	// filtered: read skips everything stamped before this instant.
	h.attached = time.Now()
	_, _, _ = h.tp.SocketStats()
	h.stats = PointStats{Point: p, Label: p.Label(), LinkType: h.lt.String(), Compiler: by}
	return h, nil
}

func newWriter(w io.Writer, hs []*handle, cfg Config) (*pcapgo.NgWriter, error) {
	host, _ := os.Hostname()
	opts := pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "netdoctor capture",
		Comment: fmt.Sprintf("captured on %s, filter %q", host, cfg.Filter),
	}}
	intf := func(h *handle) pcapgo.NgInterface {
		return pcapgo.NgInterface{Name: h.point.Label(), Description: h.point.Description(), Filter: cfg.Filter,
			OS: runtime.GOOS, LinkType: h.lt, SnapLength: uint32(cfg.Snaplen), TimestampResolution: 9}
	}
	ng, err := pcapgo.NewNgWriterInterface(w, intf(hs[0]), opts)
	if err != nil {
		return nil, err
	}
	for _, h := range hs[1:] {
		if _, err := ng.AddInterface(intf(h)); err != nil {
			return nil, err
		}
	}
	return ng, ng.Flush()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func (s *Session) read(ctx context.Context, i int, h *handle) {
	pollErrs := 0
	for ctx.Err() == nil {
		data, ci, err := h.tp.ZeroCopyReadPacketData()
		if err != nil {
			switch {
			case errors.Is(err, afpacket.ErrTimeout):
				continue
			case errors.Is(err, afpacket.ErrPoll):
				// POLLERR: the socket has an error, typically the interface
				// went away (pod deleted). Give it a moment, then give up.
				if pollErrs++; pollErrs < 20 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				s.fail(fmt.Errorf("capture point %s: socket error (interface removed?): %w", h.point.Label(), err))
				return
			}
			s.fail(fmt.Errorf("capture point %s: read: %w", h.point.Label(), err))
			return
		}
		pollErrs = 0
		if ci.Timestamp.Before(h.attached) {
			h.early++
			continue
		}
		h.stats.Captured++
		ci.InterfaceIndex = i
		if !s.keep(i, ci, data) {
			return
		}
	}
}

// keep writes one packet (and shows it); false when the capture is over.
func (s *Session) keep(i int, ci gopacket.CaptureInfo, data []byte) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.stopped.Load() != nil {
		return false
	}
	if s.w != nil {
		// An enhanced packet block is 32 bytes of header and trailer plus padded data.
		size := int64(32 + (len(data)+3)&^3)
		if s.written+size+s.reserve > s.cfg.MaxBytes {
			s.stop("size")
			return false
		}
		if err := s.w.WritePacket(ci, data); err != nil {
			s.fail(fmt.Errorf("write packet: %w", err))
			return false
		}
		s.written += size
	}
	if s.cfg.OnPacket != nil {
		s.cfg.OnPacket(i, ci, data)
	}
	s.handles[i].stats.Written++
	s.n++
	if s.cfg.Count > 0 && s.n >= uint64(s.cfg.Count) {
		s.stop("count")
		return false
	}
	return true
}

func (s *Session) stop(why string) {
	s.stopped.CompareAndSwap(nil, why)
	s.cancel()
}

// finish runs when every reader has returned: statistics, the closing
// blocks, the flush.
func (s *Session) finish(ctx context.Context) {
	defer close(s.done)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.result.Packets = s.n
	if ctx.Err() != nil && s.stopped.Load() == nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			s.stopped.CompareAndSwap(nil, "duration")
		} else {
			s.stopped.CompareAndSwap(nil, "interrupted")
		}
	}
	s.result.Ended = time.Now()
	for i, h := range s.handles {
		st, st3, err := h.tp.SocketStats()
		if err == nil {
			seen := uint64(st.Packets() + st3.Packets())
			h.stats.KernelSeen = seen - min(h.early, seen)
			h.stats.KernelDrops = uint64(st.Drops() + st3.Drops())
			h.stats.QueueFreezes = uint64(st3.QueueFreezes())
		}
		if s.w != nil {
			_ = s.w.WriteInterfaceStats(i, pcapgo.NgInterfaceStatistics{
				LastUpdate: s.result.Ended, StartTime: s.result.Started, EndTime: s.result.Ended,
				PacketsReceived: h.stats.KernelSeen, PacketsDropped: h.stats.KernelDrops,
			})
		}
		s.result.Points = append(s.result.Points, h.stats)
	}
	if s.w != nil {
		err := s.w.Flush()
		if err == nil {
			err = s.bw.Flush()
		}
		if err != nil {
			s.fail(fmt.Errorf("flush pcapng: %w", err))
		}
		s.result.Bytes = s.cw.n
	}
}

// isbSize is the size of the interface statistics block written per point
// at the end: 24 bytes of block, four 12-byte options and the end marker.
const isbSize = 24 + 4*12 + 4

// Stop ends the capture early (as Ctrl-C does).
func (s *Session) Stop() { s.stop("interrupted") }

// Wait blocks until the capture ends by count, duration, size or Stop/ctx,
// and returns the result.
func (s *Session) Wait() (*Result, error) {
	<-s.done
	s.cancel()
	s.closeAll()
	if v := s.stopped.Load(); v != nil {
		s.result.Stopped = v.(string)
	}
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return &s.result, s.err
}

func (s *Session) closeAll() {
	for _, h := range s.handles {
		if h.tp != nil {
			h.tp.Close()
		}
	}
}
