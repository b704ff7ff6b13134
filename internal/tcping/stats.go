package tcping

import (
	"math"
	"sort"
	"time"
)

// Stats are the order statistics of a set of round-trip times, in
// milliseconds (the unit ping, paping and mtr print).
type Stats struct {
	Count int     `json:"count"`
	Min   float64 `json:"minMs"`
	Avg   float64 `json:"avgMs"`
	Max   float64 `json:"maxMs"`
	Stdev float64 `json:"stdevMs"`
	P50   float64 `json:"p50Ms"`
	P90   float64 `json:"p90Ms"`
	P99   float64 `json:"p99Ms"`
}

// Ms converts a duration to float milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ComputeStats returns min/avg/max, the population standard deviation and
// the nearest-rank 50th, 90th and 99th percentiles of rtts. An empty input
// gives a zero Stats.
func ComputeStats(rtts []time.Duration) Stats {
	if len(rtts) == 0 {
		return Stats{}
	}
	ms := make([]float64, len(rtts))
	var sum float64
	for i, d := range rtts {
		ms[i] = Ms(d)
		sum += ms[i]
	}
	sort.Float64s(ms)
	n := float64(len(ms))
	avg := sum / n
	var sq float64
	for _, v := range ms {
		sq += (v - avg) * (v - avg)
	}
	return Stats{
		Count: len(ms),
		Min:   ms[0],
		Avg:   avg,
		Max:   ms[len(ms)-1],
		Stdev: math.Sqrt(sq / n),
		P50:   percentile(ms, 50),
		P90:   percentile(ms, 90),
		P99:   percentile(ms, 99),
	}
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}
