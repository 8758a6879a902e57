package core

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCA writes a self-signed CA certificate and returns its path.
func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
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
