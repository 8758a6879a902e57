package core

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
)

// TLS is the tls subsection of a backing service's section (redis.tls,
// clickhouse.tls).
type TLS struct {
	// Enabled turns TLS on. If false (the default), plain TCP, and the other
	// keys must be empty.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign the server certificates.
	// If empty, the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that require one. If empty, none. Give both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name verified in the server certificate. If empty,
	// the host of each address.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate verification. For tests
	// only. If false, certificates are verified.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Validate checks the subsection of section ("redis", "clickhouse").
func (t TLS) Validate(section string) []error {
	var errs []error
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, Fieldf(section+".tls.key_file", "cert_file and key_file must be given together"))
	}
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.ServerName != "" || t.InsecureSkipVerify) {
		errs = append(errs, Fieldf(section+".tls.enabled", "must be true when other tls settings are given"))
	}
	return errs
}

// CheckAddrs checks the addrs of a backing service's section ("redis",
// "clickhouse"): each must be host:port, and none repeated (failover would
// retry the same server).
func CheckAddrs(section string, addrs []string) []error {
	var errs []error
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			errs = append(errs, Fieldf(fmt.Sprintf("%s.addrs[%d]", section, i), "must be host:port, got %q", a))
			continue
		}
		if slices.Contains(addrs[:i], a) {
			errs = append(errs, Fieldf(fmt.Sprintf("%s.addrs[%d]", section, i), "must not repeat an address, got %q twice", a))
		}
	}
	return errs
}

// Config builds the client TLS config, reading the files now so that a
// wrong path stops the runner at start with a clear error. It returns nil
// when TLS is off.
func (t TLS) Config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice, documented as test-only
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: ca_file %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: load cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
