package clickhouselogger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

func fuzzDecoder(t testing.TB) *ingestDecoder {
	cfg := testConfig(t, "  addrs: [\"127.0.0.1:1\"]\n  max_value_bytes: 64\n  ingest: {listen: \"off\", max_entries: 1000, max_field_bytes: 4096, columns: [{name: c1, from: \"entry:c1\"}, {name: c2, from: \"header:x-c2\"}]}\n")
	return newIngestDecoder(&cfg)
}

// TestIngestDecodeCases: the corners of the decoder, one entry each.
func TestIngestDecodeCases(t *testing.T) {
	d := fuzzDecoder(t)
	tests := []struct {
		name, in string
		want     string // the row's fields as formatted below, or "rejected"
	}{
		{"escapes", `{"route_id":"a\"b\\c\/d\u00e9\ud83d\ude00","status":200}`, `a"b\c/dé😀|200|||0|0|0`},
		{"lone surrogate", `{"route_id":"x\ud800y"}`, "x\uFFFDy|0|||0|0|0"},
		{"repeated header", `{"route_id":"r","request":{"headers":{"X-Request-Id":["a","b"],"HOST":"[::1]:9080"}}}`, "r|0|a, b|::1|0|0|0"},
		{"host without port", `{"route_id":"r","request":{"headers":{"host":"example.com"}}}`, "r|0||example.com|0|0|0"},
		{"upstream tries summed", `{"route_id":"r","request_time":"0.050","upstream_response_time":"0.010, 0.020 : 0.005"}`, "r|0|||50|35|15"},
		{"no upstream", `{"route_id":"r","request_time":"0.004","upstream_response_time":"-"}`, "r|0|||4|0|4"},
		{"numbers as numbers", `{"route_id":"r","status":404,"latency":12.6,"upstream_latency":2}`, "r|404|||13|2|11"},
		{"exponent", `{"route_id":"r","latency":1.5e1}`, "r|0|||15|0|15"},
		{"null and bool", `{"route_id":null,"status":"200","x":true,"y":false}`, "|200|||0|0|0"},
		{"value cut at max_value_bytes on a rune", `{"route_id":"` + strings.Repeat("é", 40) + `"}`, strings.Repeat("é", 32) + "|0|||0|0|0"},
		{"status out of range", `{"route_id":"r","status":"1000"}`, "rejected"},
		{"status not a number", `{"route_id":"r","status":"OK"}`, "rejected"},
		{"not an object", `"hello"`, "rejected"},
		{"no known key", `{"foo":1}`, "rejected"},
		{"custom columns", `{"route_id":"r","c1":7,"request":{"headers":{"X-C2":"v2"}}}`, "r|0|||0|0|0|7,v2"},
	}
	for _, tt := range tests {
		rows, st, err := d.decode([]byte(tt.in), 1, nil)
		if err != nil {
			t.Errorf("%s: got error %v, want none", tt.name, err)
			continue
		}
		got := "rejected"
		if len(rows) == 1 {
			r := rows[0]
			got = fmt.Sprintf("%s|%d|%s|%s|%d|%d|%d", r.routeID, r.status, r.requestID, r.host, r.latencyMs, r.upstreamMs, r.apisixMs)
			if len(r.customValues) > 0 && (r.customValues[0] != "" || r.customValues[1] != "") {
				got += "|" + strings.Join(r.customValues, ",")
			}
		} else if st.rejectedTotal() != 1 {
			t.Errorf("%s: got %d rows and %+v, want one row or one rejection", tt.name, len(rows), st)
		}
		if got != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got, tt.want)
		}
	}
}

// FuzzIngestDecode: the decoder never panics, and on input encoding/json
// accepts, it finds the same entries and the same values: every entry is
// a row or a rejection, and a string route_id reads as encoding/json reads
// it (bounded like every kept value).
func FuzzIngestDecode(f *testing.F) {
	for _, name := range []string{"default-entry.json", "log-format.json", "log-format-new-line.txt", "rejected-requests.txt"} {
		f.Add(readFixture(f, name))
	}
	f.Add([]byte(`[{"route_id":"a\u0041\ud83d\ude00","request":{"headers":{"host":["h:1","h2"]}}},5,null,{}]`))
	f.Add([]byte(`{"route_id":"r","upstream_response_time":"0.1, 0.2 : -"}` + "\n" + `{"status":"x"}`))
	f.Add([]byte(`[{"x":[[[{"a":"\\\""}]]]}]`))
	d := fuzzDecoder(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, st, err := d.decode(data, 1, nil)
		for _, r := range rows {
			for _, s := range []string{r.routeID, r.method, r.host, r.path, r.clientIP, r.userAgent, r.requestID, r.tenant, r.consumer, r.upstreamAddr, r.rlStatus} {
				if len(s) > 64 {
					t.Fatalf("a kept value of %d bytes, want at most max_value_bytes (64)", len(s))
				}
			}
			if len(r.customValues) != len(r.customNames) {
				t.Fatalf("custom values %v for names %v", r.customValues, r.customNames)
			}
		}
		// The framing is the decoder's: a body starting with '[' is one
		// array (concat_method json), anything else a sequence of values
		// (new_line).
		if trim := bytes.TrimLeft(data, " \t\r\n"); len(trim) > 0 && trim[0] == '[' {
			if !json.Valid(data) {
				return
			}
		} else if !validSequence(data) {
			return
		}
		if err != nil {
			if errors.Is(err, errTooMany) || strings.Contains(err.Error(), "nested deeper") {
				return
			}
			t.Fatalf("encoding/json accepts the batch, the decoder says %v", err)
		}
		entries := splitEntries(t, data)
		if st.entries != len(entries) || len(rows)+st.rejectedTotal() != len(entries) {
			t.Fatalf("got %d entries (%d rows, %+v), encoding/json finds %d", st.entries, len(rows), st, len(entries))
		}
		// each entry alone: its route_id as encoding/json reads it
		for _, e := range entries {
			var m map[string]any
			if json.Unmarshal(e, &m) != nil {
				continue
			}
			one, _, err := d.decode(e, 1, nil)
			if err != nil || len(one) != 1 {
				continue
			}
			want, ok := m["route_id"].(string)
			if !ok || !utf8.ValidString(want) || !utf8.Valid(e) {
				continue
			}
			if got := one[0].routeID; got != bound(want, 64) {
				t.Fatalf("route_id: got %q, want %q", got, bound(want, 64))
			}
		}
	})
}

// validSequence reports whether data is a sequence of JSON values
// (new_line framing) that encoding/json accepts.
func validSequence(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err != nil {
			return err.Error() == "EOF" && n > 0
		}
		n++
	}
}

// splitEntries returns the entries of a valid batch as encoding/json sees
// them.
func splitEntries(t *testing.T, data []byte) []json.RawMessage {
	trim := bytes.TrimLeft(data, " \t\r\n")
	if len(trim) > 0 && trim[0] == '[' {
		var out []json.RawMessage
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	var out []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return out
		}
		out = append(out, v)
	}
}

// BenchmarkIngestDecode is the ingest's parse cost: a batch of 1000
// default entries shaped like the captured ones (1.6 KB each, a JWT in
// the request headers), and one of log_format entries.
func BenchmarkIngestDecode(b *testing.B) {
	cfg := testConfig(b, "  addrs: [\"127.0.0.1:1\"]\n  ingest: {listen: \"off\"}\n")
	for _, bc := range []struct {
		name string
		body []byte
	}{
		{"default", defaultBatch(b, 1000, "bench")},
		{"log_format", logFormatBatch(b, 1000)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := newIngestDecoder(&cfg)
			rows := make([]row, 0, 1000)
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				var err error
				rows, _, err = d.decode(bc.body, 1, rows[:0])
				if err != nil || len(rows) != 1000 {
					b.Fatalf("got %d rows, %v", len(rows), err)
				}
			}
			// On a shared machine wall time includes waiting for a core;
			// the process's CPU time does not.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*1000), "cpu-ns/entry")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/entry")
		})
	}
}

// cpuTime is the process's user and system CPU time, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// logFormatBatch returns n log_format entries shaped like the captured
// ones, as one JSON array.
func logFormatBatch(t testing.TB, n int) []byte {
	var entries []json.RawMessage
	if err := json.Unmarshal(readFixture(t, "log-format.json"), &entries); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strings.Replace(string(entries[0]), `"cap-format-1"`, fmt.Sprintf(`"lf-%d"`, i), 1))
	}
	b.WriteByte(']')
	return []byte(b.String())
}

// FuzzIngestDecodeLegacy: on any input, valid or not, the decoder finds
// what the decoder it replaced (ingest_legacy_test.go) found: the same
// rows, the same counts, and an error of the same kind.
func FuzzIngestDecodeLegacy(f *testing.F) {
	for _, name := range []string{"default-entry.json", "log-format.json", "log-format-new-line.txt", "rejected-requests.txt"} {
		f.Add(readFixture(f, name))
	}
	f.Add(defaultBatch(f, 3, "fz"))
	f.Add([]byte(`[{"route_id":"a\u0041\ud83d\ude00","request":{"headers":{"host":["h:1","h2"]}}},5,null,{}]`))
	f.Add([]byte(`{"route_id":"r","upstream_response_time":"0.1, 0.2 : -"}` + "\n" + `{"status":"x"}`))
	f.Add([]byte(`[{"x":[[[{"a":"\\\""}]]]}]`))
	f.Add([]byte(`[{"route_id":"r","c1":"v","request":{"headers":{"X-C2":["a",1,true],"X-Edge-Log-Consumer":"x"}},"response":{"headers":{"X-RateLimit-Limit":"10","Retry-After":"3.5"}}}]`))
	ds := legacyPairs(f)
	f.Fuzz(func(t *testing.T, data []byte) { compareLegacy(t, ds, data) })
}

// legacyConfigs are the configurations the decoders are compared under:
// custom columns of every kind, and small bounds.
var legacyConfigs = []string{
	"  addrs: [\"127.0.0.1:1\"]\n  max_value_bytes: 64\n  ingest: {listen: \"off\", max_entries: 1000, max_field_bytes: 4096, columns: [{name: c1, from: \"entry:c1\"}, {name: c2, from: \"header:x-c2\"}, {name: c3, from: \"response_header:x-c3\"}]}\n",
	"  addrs: [\"127.0.0.1:1\"]\n  max_value_bytes: 16\n  ingest: {listen: \"off\", max_entries: 5, max_field_bytes: 256}\n",
}

type legacyPair struct {
	d   *ingestDecoder
	old *legacyDecoder
}

func legacyPairs(t testing.TB) []legacyPair {
	var ds []legacyPair
	for _, c := range legacyConfigs {
		cfg := testConfig(t, c)
		ds = append(ds, legacyPair{newIngestDecoder(&cfg), newLegacyDecoder(&cfg)})
	}
	return ds
}

// compareLegacy fails t unless both decoders of each pair read data alike.
func compareLegacy(t testing.TB, ds []legacyPair, data []byte) {
	t.Helper()
	for k, p := range ds {
		rows, st, err := p.d.decode(data, 7, nil)
		want, wst, werr := p.old.decode(data, 7, nil)
		if (err == nil) != (werr == nil) || errors.Is(err, errTooMany) != errors.Is(werr, errTooMany) || errors.Is(err, errMalformed) != errors.Is(werr, errMalformed) {
			t.Fatalf("config %d, input %q: error %v, the old decoder's %v", k, data, err, werr)
		}
		if err != nil {
			continue // the caller discards the rows
		}
		if st != wst {
			t.Fatalf("config %d, input %q: stats %+v, the old decoder's %+v", k, data, st, wst)
		}
		if len(rows) != len(want) {
			t.Fatalf("config %d, input %q: %d rows, the old decoder found %d", k, data, len(rows), len(want))
		}
		for i := range rows {
			if !reflect.DeepEqual(rows[i], want[i]) {
				t.Fatalf("config %d, input %q: row %d\n got %+v\nwant %+v", k, data, i, rows[i], want[i])
			}
		}
	}
}

// TestIngestDecodeMatchesLegacy is FuzzIngestDecodeLegacy's check on
// inputs made by seeded random edits of the captured batches and of
// hand-written corners (the fuzzer spends most of its time minimizing the
// large seeds): cut, duplicated, deleted or replaced bytes, JSON's
// structural characters, escapes and numbers inserted.
func TestIngestDecodeMatchesLegacy(t *testing.T) {
	ds := legacyPairs(t)
	seeds := [][]byte{
		defaultBatch(t, 2, "m"),
		readFixture(t, "log-format.json"),
		readFixture(t, "log-format-new-line.txt"),
		readFixture(t, "rejected-requests.txt"),
		[]byte(`[{"route_id":"r","c1":"v","request":{"uri":"/a?b","headers":{"X-C2":["a",1,true],"Host":"h:1","X-Edge-Log-Consumer":"x"}},"response":{"status":"204","headers":{"X-RateLimit-Limit":"10","Retry-After":"3.5","x-c3":"z"}}},{"latency":1e2,"upstream_response_time":"0.1, 0.2 : -"}]`),
	}
	pieces := []string{`"`, `\`, `{`, `}`, `[`, `]`, `,`, `:`, ` `, "\n", `\"`, `\u00e9`, `\ud83d\ude00`, `\ud800`, `null`, `true`, `-0.5e3`, `00`, `"route_id":`, `"status":`, `"request":{"headers":{`, `"Host":`, `"x-c2":`, `"c1":`, `1e400`, "\xff", "é"}
	rnd := rand.New(rand.NewPCG(13, 1))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		data := slices.Clone(seeds[rnd.IntN(len(seeds))])
		for range 1 + rnd.IntN(4) {
			at := rnd.IntN(len(data) + 1)
			switch rnd.IntN(5) {
			case 0: // cut
				data = data[:at]
			case 1: // delete a few bytes
				data = append(data[:at], data[min(len(data), at+1+rnd.IntN(8)):]...)
			case 2: // insert a piece
				data = slices.Insert(data, at, []byte(pieces[rnd.IntN(len(pieces))])...)
			case 3: // replace a byte
				if at < len(data) {
					data[at] = byte(rnd.IntN(256))
				}
			case 4: // duplicate a span
				end := min(len(data), at+rnd.IntN(64))
				data = slices.Insert(data, at, data[at:end]...)
			}
		}
		compareLegacy(t, ds, data)
	}
}
