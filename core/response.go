package core

// ResponseHeaderVisitor is implemented by the responses the runner's server
// hands to plugins in the post-resp phase: it reads the upstream response
// headers as APISIX sent them without marking the response as changed. (A
// plugin that changes any header makes APISIX send the client only the
// runner's headers, so an observer such as a logger must never do that.)
type ResponseHeaderVisitor interface {
	// VisitHeaders calls fn with each header, name lower-cased as APISIX
	// sends it. The slices are valid during the call only.
	VisitHeaders(fn func(name, value []byte))
}
