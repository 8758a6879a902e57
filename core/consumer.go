package core

// ConsumerHeader is the upstream request header that carries the verified
// JWT subject ("sub") from the jwtcache plugin to the plugins after it and
// to the upstream. jwtcache always deletes a client-sent value first, so on
// a route where jwtcache runs earlier in the chain the value can be trusted:
// the ratelimit key "consumer" and the clickhouselogger consumer column read
// it.
const ConsumerHeader = "X-Edge-Consumer"
