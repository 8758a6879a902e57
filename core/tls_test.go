package core

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// writeCA writes a self-signed CA certificate and returns its path.
func writeCA(t *testing.T) string {
	t.Helper()
	cert, _, err := backing.WriteSelfSignedCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestTLSConfig(t *testing.T) {
	ca := writeCA(t)
	notPEM := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	tests := []struct {
		name    string
		tls     TLS
		wantNil bool
		wantErr string
	}{
		{name: "off", tls: TLS{}, wantNil: true},
		{name: "system roots", tls: TLS{Enabled: true, ServerName: "redis.internal"}},
		{name: "own CA", tls: TLS{Enabled: true, CAFile: ca}},
		{name: "missing CA file", tls: TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"}, wantErr: "tls: read ca_file"},
		{name: "CA file without a certificate", tls: TLS{Enabled: true, CAFile: notPEM}, wantErr: "holds no PEM certificate"},
		{name: "missing client key pair", tls: TLS{Enabled: true, CertFile: "/nonexistent/c.pem", KeyFile: "/nonexistent/k.pem"}, wantErr: "tls: load cert_file/key_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.tls.Config()
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("got error %v, want none", err)
			case (c == nil) != tt.wantNil:
				t.Fatalf("got config %v, want nil = %v", c, tt.wantNil)
			case c != nil && (c.ServerName != tt.tls.ServerName || (tt.tls.CAFile != "") != (c.RootCAs != nil)):
				t.Fatalf("got ServerName %q RootCAs set %v, want %q and %v", c.ServerName, c.RootCAs != nil, tt.tls.ServerName, tt.tls.CAFile != "")
			}
		})
	}
}

func TestCheckAddrs(t *testing.T) {
	tests := []struct {
		addrs []string
		want  string // "" = ok
	}{
		{[]string{"a:1", "b:2"}, ""},
		{[]string{"a"}, `redis.addrs[0]: must be host:port, got "a"`},
		{[]string{"a:1", "b:2", "a:1"}, `redis.addrs[2]: must not repeat an address, got "a:1" twice`},
	}
	for _, tt := range tests {
		got := ""
		if errs := CheckAddrs("redis", tt.addrs); len(errs) > 0 {
			got = errs[0].Error()
		}
		if got != tt.want {
			t.Errorf("CheckAddrs(%q): got %q, want %q", tt.addrs, got, tt.want)
		}
	}
}
