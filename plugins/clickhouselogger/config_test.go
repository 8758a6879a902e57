package clickhouselogger

import "testing"

func TestHeaderVar(t *testing.T) {
	for in, want := range map[string]string{"X-Tenant-ID": "http_x_tenant_id", "x-edge-consumer": "http_x_edge_consumer", "Org": "http_org"} {
		if got := HeaderVar(in); got != want {
			t.Errorf("HeaderVar(%q): got %q, want %q", in, got, want)
		}
	}
}
