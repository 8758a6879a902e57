package jwtcache

import (
	"fmt"
	"strings"
	"testing"
)

func TestCheckJWKSURL(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = ok
	}{
		{"https://kc.example/realms/r/protocol/openid-connect/certs", ""},
		{"http://127.0.0.1:8080/certs", ""},
		{"", "is required"},
		{"https://a/certs#x", "must not have a fragment"},
		{"javascript:alert(1)", `got scheme "javascript"`},
		{"http://[::1", "must be an http or https URL"},
	}
	for _, tt := range tests {
		err := CheckJWKSURL(tt.in)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("CheckJWKSURL(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestInlineProvider(t *testing.T) {
	p := inlineProvider("https://a/certs")
	if p.Name != "inline" || p.RefreshInterval.D() != DefaultJWKSRefreshInterval || p.MaxStale.D() != DefaultJWKSMaxStale || p.SnapshotFile != "" {
		t.Fatalf("got %+v, want every default and no snapshot", p)
	}
}

func ExampleProviderConfig_DiscoveryURL() {
	p := ProviderConfig{Name: "tenant-a", Issuer: "https://kc.example/realms/tenant-a", Discovery: true}
	fmt.Println(p.DiscoveryURL())
	// Output:
	// https://kc.example/realms/tenant-a/.well-known/openid-configuration
}
