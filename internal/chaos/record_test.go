package chaos

import (
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
)

func TestRecoveredAt(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int, ok bool) sample {
		s := sample{at: t0.Add(time.Duration(ms) * time.Millisecond), rl: rlRedis}
		if !ok {
			s.rl = rlDegraded
		}
		return s
	}
	good := func(b []sample) bool { return countWhere(b, func(s sample) bool { return s.rl == rlDegraded }) == 0 }
	tests := []struct {
		name   string
		ss     []sample
		want   time.Duration
		wantOK bool
	}{
		{"good from the start", []sample{at(10, true), at(150, true)}, 0, true},
		{"recovers in the third interval", []sample{at(10, false), at(120, false), at(230, true), at(350, true)}, 200 * time.Millisecond, true},
		{"relapse moves recovery later", []sample{at(10, true), at(120, false), at(230, true)}, 200 * time.Millisecond, true},
		{"empty intervals are skipped", []sample{at(10, false), at(520, true)}, 500 * time.Millisecond, true},
		{"never", []sample{at(10, true), at(120, false)}, 0, false},
		{"no samples", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := recoveredAt(tt.ss, t0, 100*time.Millisecond, good)
			if ok != tt.wantOK || (ok && got.Sub(t0) != tt.want) {
				t.Errorf("got %v %v, want %v %v", got.Sub(t0), ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	var ss []sample
	for i := 1; i <= 100; i++ {
		ss = append(ss, sample{latency: time.Duration(i) * time.Millisecond, status: 200, rl: rlRedis, kind: kindValid, logged: true})
	}
	ss = append(ss, sample{latency: time.Millisecond, status: 401, rl: rlNone, kind: kindForged})
	st := summarize(ss)
	if st.Requests != 101 || st.Status[200] != 100 || st.Status[401] != 1 || st.RL[rlRedis] != 100 {
		t.Errorf("counts: got %d requests, status %v, rl %v", st.Requests, st.Status, st.RL)
	}
	if st.TokensOK != 100 || st.ForgedRejected != 1 || st.ForgedOK != 0 || st.Logged != 100 {
		t.Errorf("tokens/logged: got ok %d forged %d/%d logged %d, want 100, 0/1, 100", st.TokensOK, st.ForgedOK, st.ForgedRejected, st.Logged)
	}
	if st.P50 != 50*time.Millisecond || st.P99 != 99*time.Millisecond || st.Max != 100*time.Millisecond {
		t.Errorf("latency: got p50 %v p99 %v max %v, want 50ms 99ms 100ms", st.P50, st.P99, st.Max)
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP apisix_edge_jwt_verifications_total x
apisix_edge_jwt_verifications_total{outcome="accepted",reason="ok"} 12
apisix_edge_jwt_verifications_total{outcome="rejected",reason="bad_signature"} 3
apisix_edge_jwt_verifications_total{outcome="rejected",reason="expired"} 4
apisix_edge_jwt_verifications_totally_other 100
`
	tests := []struct {
		sel  string
		want float64
	}{{`outcome="accepted"`, 12}, {`outcome="rejected"`, 7}, {"", 19}}
	for _, tt := range tests {
		if got := metricValue(testbed.ParseMetrics(text), "apisix_edge_jwt_verifications_total", tt.sel); got != tt.want {
			t.Errorf("metricValue(%q): got %v, want %v", tt.sel, got, tt.want)
		}
	}
}
