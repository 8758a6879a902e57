package jwtcache

import (
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// A JWKS or discovery URL may carry a secret: user name and password, an
// access_token in the query, anything in the fragment. Every place that
// shows a URL or an error that may embed one (/status, logs, conf problems)
// goes through redactURL or redactErr.

// redactURL returns raw without userinfo, query and fragment. A URL that
// does not parse is not shown at all.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	u.User = nil
	u.RawQuery, u.ForceQuery = "", false
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// redactedError keeps the chain of err (errors.Is still works) with a
// message that shows no URL secret.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr returns err with every URL in its message redacted. Go's
// url.Error embeds the request URL (net/http masks the password only), and
// wrapping with %w copies that text into every outer message, so the
// message is rewritten as a whole: first the exact URLs of the url.Errors
// in the chain and the known URLs, then any remaining http(s) URL.
func redactErr(err error, known ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	urls := append([]string(nil), known...)
	for e := err; e != nil; {
		var ue *url.Error
		if !errors.As(e, &ue) {
			break
		}
		urls = append(urls, ue.URL)
		e = ue.Err
	}
	msg = redactText(msg, urls...)
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// urlInText finds http(s) URLs in free text, up to a space, a quote or the
// end.
var urlInText = regexp.MustCompile(`(?i)https?://[^\s"'<>]+`)

// redactText removes URL secrets from s: the exact urls given (raw and
// quoted, as %q prints them), then every other http(s) URL it finds.
func redactText(s string, urls ...string) string {
	for _, u := range urls {
		if u == "" {
			continue
		}
		r := redactURL(u)
		s = strings.ReplaceAll(s, strconv.Quote(u), strconv.Quote(r))
		s = strings.ReplaceAll(s, u, r)
	}
	return urlInText.ReplaceAllStringFunc(s, func(m string) string {
		if !strings.ContainsAny(m, "@?#") {
			return m
		}
		return redactURL(m)
	})
}
