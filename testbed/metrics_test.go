package testbed

import "testing"

func TestParseMetrics(t *testing.T) {
	got := ParseMetrics(`# HELP apisix_edge_x_total X.
# TYPE apisix_edge_x_total counter
apisix_edge_x_total{outcome="allowed"} 12
apisix_edge_queue_rows 3.5
garbage
not_a_number NaNx
`)
	want := map[string]float64{`apisix_edge_x_total{outcome="allowed"}`: 12, "apisix_edge_queue_rows": 3.5}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
}
