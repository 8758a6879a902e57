// Package core holds what every plugin of the runner shares: strict conf
// decoding with errors that name the field and the rule, the plugin guard
// that turns invalid confs and panics into each plugin's failure policy,
// backing-service status, throttled logging and the metrics namespace.
package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"
)

// FieldError is one problem in a conf: which field, and which rule it breaks.
type FieldError struct {
	// Field is the JSON or YAML path of the field, such as "limit" or
	// "redis.timeout". Empty when the problem is the document itself.
	Field string
	// Rule says what the field must be, such as "must be > 0".
	Rule string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Rule
	}
	return e.Field + ": " + e.Rule
}

// Fieldf returns a *FieldError for field with a formatted rule.
func Fieldf(field, format string, args ...any) error {
	return &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

// Problems flattens err (possibly built with errors.Join) into one message
// per problem, in order. It is what `go-runner validate` prints.
func Problems(err error) []string {
	if err == nil {
		return nil
	}
	var out []string
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		out = append(out, e.Error())
	}
	walk(err)
	return out
}

// DecodeStrict decodes one JSON object into the struct pointed to by v,
// field by field, so that every problem names its field: unknown fields,
// wrong types, bad durations, trailing data and an empty document. Nested
// struct fields are decoded the same way, with dotted paths. All problems are
// returned together (errors.Join of *FieldError).
func DecodeStrict(data []byte, v any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return &FieldError{Rule: "conf is empty: want a JSON object"}
	}
	if data[0] != '{' {
		return &FieldError{Rule: "conf must be a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return jsonFieldError("", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return &FieldError{Rule: "unexpected data after the JSON object"}
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("decode conf: want a pointer to a struct, got %T", v)
	}
	return errors.Join(decodeFields("", raw, rv.Elem())...)
}

func decodeFields(prefix string, raw map[string]json.RawMessage, sv reflect.Value) []error {
	fields := jsonFields(sv.Type())
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		idx, ok := fields[k]
		if !ok {
			errs = append(errs, &FieldError{Field: prefix + k, Rule: "unknown field"})
			continue
		}
		fv := sv.Field(idx)
		path := prefix + k
		if fv.Kind() == reflect.Struct && !implementsUnmarshaler(fv) {
			var nested map[string]json.RawMessage
			if err := json.Unmarshal(raw[k], &nested); err != nil || nested == nil {
				errs = append(errs, &FieldError{Field: path, Rule: "must be an object"})
				continue
			}
			errs = append(errs, decodeFields(path+".", nested, fv)...)
			continue
		}
		if err := json.Unmarshal(raw[k], fv.Addr().Interface()); err != nil {
			errs = append(errs, jsonFieldError(path, err))
		}
	}
	return errs
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func implementsUnmarshaler(v reflect.Value) bool {
	return v.Addr().Type().Implements(unmarshalerType)
}

// jsonFields maps JSON names to field indexes of struct type t.
func jsonFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			tagName, _, _ := strings.Cut(tag, ",")
			if tagName == "-" {
				continue
			}
			if tagName != "" {
				name = tagName
			}
		}
		m[name] = i
	}
	return m
}

func jsonFieldError(field string, err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		if fe.Field == "" {
			return &FieldError{Field: field, Rule: fe.Rule}
		}
		return fe
	case errors.As(err, &typeErr):
		if typeErr.Field != "" && field != "" {
			field += "." + typeErr.Field
		} else if typeErr.Field != "" {
			field = typeErr.Field
		}
		return &FieldError{Field: field, Rule: fmt.Sprintf("must be %s, got JSON %s", jsonKind(typeErr.Type.Kind().String()), typeErr.Value)}
	case errors.As(err, &syntaxErr):
		return &FieldError{Field: field, Rule: fmt.Sprintf("invalid JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return &FieldError{Field: field, Rule: "truncated JSON"}
	}
	return &FieldError{Field: field, Rule: strings.TrimPrefix(err.Error(), "json: ")}
}

func jsonKind(k string) string {
	switch k {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "a list"
	case "map", "struct":
		return "an object"
	}
	return k
}

// Duration is a time.Duration written as a Go duration string ("250ms",
// "1m") in JSON and YAML. Bare numbers are rejected: "5" is ambiguous.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &FieldError{Rule: fmt.Sprintf("must be a duration string such as \"1s\" or \"250ms\", got %s", b)}
	}
	return d.parse(s)
}

// UnmarshalText reads a Go duration string (used by YAML).
func (d *Duration) UnmarshalText(b []byte) error { return d.parse(string(b)) }

// MarshalText writes d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return &FieldError{Rule: fmt.Sprintf("must be a duration string such as \"1s\" or \"250ms\", got %q", s)}
	}
	*d = Duration(v)
	return nil
}
