package config

// JWKS is the jwks section, used by the jwtcache plugin. Every field documents its
// default; applyDefaults sets them and validate checks them, each problem
// naming its field as "jwks.<key>".
type JWKS struct{}

func (x *JWKS) applyDefaults() {}

func (x *JWKS) validate() []error { return nil }
