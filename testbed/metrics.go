package testbed

import (
	"bufio"
	"strconv"
	"strings"
)

// ParseMetrics reads a Prometheus text exposition (a runner's /metrics) into
// series → value, each series as printed, e.g.
// `apisix_edge_ratelimit_decisions_total{outcome="allowed"}`. Comments and
// lines without a numeric value are skipped.
func ParseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}
