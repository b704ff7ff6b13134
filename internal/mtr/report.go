package mtr

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Hop is mtr's row for one TTL.
type Hop struct {
	TTL       int            `json:"ttl"`
	Addresses []string       `json:"addresses"`         // responders, most frequent first (ECMP shows several)
	Names     []string       `json:"names,omitempty"`   // reverse names when resolved
	Replies   map[string]int `json:"replies,omitempty"` // replies per responder
	Sent      int            `json:"sent"`              // Snt
	Received  int            `json:"received"`
	Loss      float64        `json:"lossPercent"` // Loss%
	Last      float64        `json:"lastMs"`
	Avg       float64        `json:"avgMs"`
	Best      float64        `json:"bestMs"`
	Worst     float64        `json:"worstMs"` // Wrst
	StDev     float64        `json:"stdevMs"`
	RTTs      []float64      `json:"rttsMs"`                // every reply, in arrival order; lost probes absent
	Lost      []int          `json:"lostRounds,omitempty"`  // rounds whose probe got no reply
	ICMP      string         `json:"icmp,omitempty"`        // unusual ICMP seen (e.g. host unreachable)
	Notes     []string       `json:"annotations,omitempty"` // seed 002's reading rules applied
	RateLimit bool           `json:"rateLimited,omitempty"` // loss here that later hops do not show
	RealLoss  bool           `json:"realLoss,omitempty"`    // loss that persists to the last hop
	HighStDev bool           `json:"highStdev,omitempty"`   // Avg hides the spread: read Best/Wrst
}

// Report is a whole trace.
type Report struct {
	Target   string   `json:"target"`
	Address  string   `json:"address"`
	Protocol string   `json:"protocol"` // icmp, udp or tcp
	Port     int      `json:"port,omitempty"`
	Size     int      `json:"size"`
	Rounds   int      `json:"rounds"`
	Reached  bool     `json:"reached"` // the destination answered at least once
	Hops     []Hop    `json:"hops"`
	Summary  []string `json:"summary"` // the verdict, in words
}

// hopStats fills the mtr columns from the RTTs.
func (h *Hop) hopStats() {
	h.Received = len(h.RTTs)
	h.Loss, h.Last, h.Avg, h.Best, h.Worst, h.StDev = 0, 0, 0, 0, 0, 0
	if h.Sent > 0 {
		h.Loss = 100 * float64(h.Sent-h.Received) / float64(h.Sent)
	}
	if h.Received == 0 {
		return
	}
	h.Best, h.Worst = math.Inf(1), 0
	var sum float64
	for _, v := range h.RTTs {
		sum += v
		h.Best = math.Min(h.Best, v)
		h.Worst = math.Max(h.Worst, v)
	}
	h.Last = h.RTTs[len(h.RTTs)-1]
	h.Avg = sum / float64(h.Received)
	if h.Received > 1 { // sample standard deviation, as mtr
		var sq float64
		for _, v := range h.RTTs {
			sq += (v - h.Avg) * (v - h.Avg)
		}
		h.StDev = math.Sqrt(sq / float64(h.Received-1))
	}
	type kv struct {
		k string
		v int
	}
	var kvs []kv
	for k, v := range h.Replies {
		kvs = append(kvs, kv{k, v})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].v > kvs[j].v || kvs[i].v == kvs[j].v && kvs[i].k < kvs[j].k })
	h.Addresses = h.Addresses[:0]
	for _, e := range kvs {
		h.Addresses = append(h.Addresses, e.k)
	}
}

// lossSignificant says whether loss a (percent of n probes) is clearly more
// than loss b (percent of m probes): more than two standard errors apart and
// at least one lost probe's worth. With few probes nothing is significant.
func lossSignificant(a float64, n int, b float64, m int) bool {
	if n == 0 || a <= b {
		return false
	}
	pa, pb := a/100, b/100
	p := (pa*float64(n) + pb*float64(m)) / float64(n+m)
	se := math.Sqrt(p * (1 - p) * (1/float64(n) + 1/math.Max(float64(m), 1)))
	return pa-pb > 2*se && a-b >= 100/float64(n)
}

// highStDevFloor (ms) keeps scheduling noise of sub-millisecond paths from
// reading as unstable latency.
const highStDevFloor = 1.0

// Annotate applies seed 002's rules for reading mtr:
//   - loss at a hop that later hops do not show is that router limiting (or
//     deprioritising) its own ICMP replies, not loss of forwarded traffic;
//   - loss that persists to the end is real and is judged by the last
//     hop(s); it starts at the first hop from which every later hop loses;
//   - a high StDev means Avg hides the spread: judge by Best and Wrst.
func (r *Report) Annotate() {
	r.Summary = nil
	n := len(r.Hops)
	if n == 0 {
		r.Summary = append(r.Summary, "no hop answered")
		return
	}
	last := &r.Hops[n-1]
	for i := range r.Hops {
		h := &r.Hops[i]
		h.Notes, h.RateLimit, h.RealLoss, h.HighStDev = nil, false, false, false
		if h.Received == 0 && i < n-1 {
			h.Notes = append(h.Notes, "no reply at all: this router does not answer (ICMP disabled or filtered); harmless while later hops answer")
			h.RateLimit = true
			continue
		}
		if h.Loss > 0 && i < n-1 {
			// Smallest loss among later hops that answer.
			minLater, minSent := math.Inf(1), 0
			for j := i + 1; j < n; j++ {
				if r.Hops[j].Received > 0 && r.Hops[j].Loss < minLater {
					minLater, minSent = r.Hops[j].Loss, r.Hops[j].Sent
				}
			}
			if !math.IsInf(minLater, 1) && lossSignificant(h.Loss, h.Sent, minLater, minSent) {
				h.RateLimit = true
				h.Notes = append(h.Notes, fmt.Sprintf("%.0f%% loss here but only %.0f%% at a later hop: this router rate-limits its ICMP replies; not packet loss", h.Loss, minLater))
			}
		}
		if h.Received > 2 && h.StDev >= highStDevFloor && h.StDev > 0.5*h.Avg && h.Worst > 2*h.Best {
			h.HighStDev = true
			h.Notes = append(h.Notes, fmt.Sprintf("high StDev (%.2fms on avg %.2fms): Avg hides the spread; judge by Best %.2fms / Wrst %.2fms", h.StDev, h.Avg, h.Best, h.Worst))
		}
	}
	if !r.Reached {
		r.Summary = append(r.Summary, fmt.Sprintf("destination %s not reached: last answer from hop %d (%s)", r.Address, last.TTL, strings.Join(last.Addresses, ",")))
	}
	if last.Loss > 0 && r.Reached {
		// Real loss begins at the first hop from which every later hop loses
		// too (and not clearly less than the last hop).
		start := n - 1
		for i := n - 2; i >= 0; i-- {
			h := r.Hops[i]
			if h.Loss == 0 || h.Received == 0 || lossSignificant(last.Loss, last.Sent, h.Loss, h.Sent) {
				break
			}
			start = i
		}
		for i := start; i < n; i++ {
			r.Hops[i].RealLoss = true
			r.Hops[i].RateLimit = false
		}
		last.Notes = append(last.Notes, fmt.Sprintf("loss persists to the destination: %.0f%% real loss, starting at hop %d", last.Loss, r.Hops[start].TTL))
		r.Summary = append(r.Summary, fmt.Sprintf("real loss %.0f%% to %s, starting at hop %d (%s)", last.Loss, r.Address, r.Hops[start].TTL, strings.Join(r.Hops[start].Addresses, ",")))
	} else if r.Reached {
		r.Summary = append(r.Summary, fmt.Sprintf("no loss to the destination %s (%d %s)", r.Address, n, plural(n, "hop", "hops")))
	}
	for _, h := range r.Hops {
		if h.RateLimit && h.Received > 0 {
			r.Summary = append(r.Summary, fmt.Sprintf("hop %d (%s): %.0f%% loss is ICMP rate limiting at that router, not loss", h.TTL, strings.Join(h.Addresses, ","), h.Loss))
		}
		if h.HighStDev {
			r.Summary = append(r.Summary, fmt.Sprintf("hop %d: unstable latency, Best %.2fms Wrst %.2fms", h.TTL, h.Best, h.Worst))
		}
	}
}

// Text renders the report like `mtr -r`, with the annotations under the
// hops they concern and the summary after.
func (r *Report) Text(names bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "trace to %s (%s), %s", r.Target, r.Address, r.Protocol)
	if r.Port != 0 {
		fmt.Fprintf(&b, " port %d", r.Port)
	}
	fmt.Fprintf(&b, ", %d bytes, %d rounds\n", r.Size, r.Rounds)
	fmt.Fprintf(&b, "%-4s%-28s %6s %5s %7s %7s %7s %7s %7s\n", "", "HOST", "Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev")
	for _, h := range r.Hops {
		host := "???"
		if len(h.Addresses) > 0 {
			host = h.Addresses[0]
			if names && len(h.Names) > 0 && h.Names[0] != "" {
				host = h.Names[0]
			}
		}
		mark := ""
		switch {
		case h.RealLoss:
			mark = " !"
		case h.RateLimit:
			mark = " ~"
		}
		fmt.Fprintf(&b, "%3d.%-28s %5.1f%% %5d %7.2f %7.2f %7.2f %7.2f %7.2f%s\n", h.TTL, "|-- "+host,
			h.Loss, h.Sent, h.Last, h.Avg, h.Best, h.Worst, h.StDev, mark)
		for _, a := range h.Addresses[min(1, len(h.Addresses)):] {
			fmt.Fprintf(&b, "    |   also %s\n", a)
		}
		if h.ICMP != "" {
			fmt.Fprintf(&b, "    |   %s\n", h.ICMP)
		}
		for _, n := range h.Notes {
			fmt.Fprintf(&b, "    |   note: %s\n", n)
		}
	}
	for _, s := range r.Summary {
		fmt.Fprintf(&b, "=> %s\n", s)
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
