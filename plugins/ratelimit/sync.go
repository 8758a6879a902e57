package ratelimit

import (
	"net/http"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
)

func (r *RateLimit) syncDecide(c *Conf, w http.ResponseWriter, req pkgHTTP.Request, d *decision, now time.Time, shadow bool) {
}
