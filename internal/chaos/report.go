package chaos

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	}
}

func fmtStatus(m map[int]int64) string {
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	parts := make([]string, 0, len(codes))
	for _, c := range codes {
		parts = append(parts, strconv.Itoa(c)+":"+strconv.FormatInt(m[c], 10))
	}
	return strings.Join(parts, " ")
}

func fmtRL(m map[string]int64) string {
	return fmt.Sprintf("redis:%d degraded:%d none:%d", m[rlRedis], m[rlDegraded], m[rlNone])
}

func (r *Result) verdict() string {
	switch {
	case r.Err != nil:
		return "ERROR"
	case r.Pass():
		return "PASS"
	default:
		return "FAIL"
	}
}

func (r *Result) recoveryCell() string {
	if len(r.Recovery) == 0 {
		return "n/a"
	}
	parts := make([]string, len(r.Recovery))
	for i, x := range r.Recovery {
		parts[i] = x.String()
	}
	return strings.Join(parts, ", ")
}

func (r *Result) rowsCell() string {
	l := r.Log
	return fmt.Sprintf("%d/%d/%d/%d (table %d)", l.Enqueued, l.Inserted, l.dropped(), l.Spooled, r.TableRows)
}

func (r *Result) tokensCell() string {
	t := r.Total
	return fmt.Sprintf("%d/%d (forged %d/%d)", t.TokensOK, t.TokensRejected, t.ForgedOK, t.ForgedRejected)
}

// Verbose adds the runner's output tail to the details of a failed
// scenario (it is always shown for a scenario that could not run).
var Verbose bool

// columns of the matrix.
var columns = []string{"#", "scenario", "status (all phases)", "X-RateLimit-Status", "healthy p50/p99",
	"fault p50/p99", "after p50/p99", "recovery", "log rows enq/ins/drop/spool", "tokens ok/refused", "verdict"}

func (r *Result) cells() []string {
	lat := func(s Stats) string { return fmtDur(s.P50) + " / " + fmtDur(s.P99) }
	return []string{strconv.Itoa(r.ID), r.Name, fmtStatus(r.Total.Status), fmtRL(r.Total.RL), lat(r.Healthy),
		lat(r.Fault), lat(r.After), r.recoveryCell(), r.rowsCell(), r.tokensCell(), r.verdict()}
}

// WriteTable prints the matrix as an aligned table, then each scenario's
// rules with their outcome.
func WriteTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(columns, "\t"))
	for _, r := range results {
		fmt.Fprintln(tw, strings.Join(r.cells(), "\t"))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "%d. %s: %s (%s)\n   expected: %s\n", r.ID, r.Name, r.verdict(), fmtDur(r.Elapsed), r.Expect)
		writeDetail(w, r, "   ")
	}
}

func writeDetail(w io.Writer, r *Result, indent string) {
	if r.Err != nil {
		fmt.Fprintf(w, "%serror: %v\n", indent, r.Err)
	}
	if Verbose && r.Series != "" && !r.Pass() {
		fmt.Fprintf(w, "%sload per 100 ms from 0.5 s before the fault:\n%s", indent, r.Series)
	}
	if r.RunnerOutput != "" && (r.Err != nil || Verbose) {
		fmt.Fprintf(w, "%srunner output (tail):\n%s\n", indent, r.RunnerOutput)
	}
	fmt.Fprintf(w, "%sphases: healthy %d req, fault %d req over %s (p99 after its first second %s), after %d req\n",
		indent, r.Healthy.Requests, r.Fault.Requests, fmtDur(r.FaultLength), fmtDur(r.SettledP99), r.After.Requests)
	l := r.Log
	fmt.Fprintf(w, "%slog: logged %d, enqueued %d, inserted %d, dropped %s, spooled %d, replayed %d, pending %d, inherited %d, table %d\n",
		indent, r.Total.Logged, l.Enqueued, l.Inserted, fmtDropped(l.Dropped), l.Spooled, l.Replayed, l.pending(), l.SpoolInherited, r.TableRows)
	for _, rc := range r.Recovery {
		fmt.Fprintf(w, "%srecovery %s = %s\n", indent, rc, rc.Def)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "%snote: %s\n", indent, n)
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s[%s] %s: %s\n", indent, mark, c.Rule, c.Got)
	}
}

// WriteMarkdown prints the matrix as a markdown table followed by each
// scenario's rules and outcomes.
func WriteMarkdown(w io.Writer, results []*Result) {
	fmt.Fprintln(w, "| "+strings.Join(columns, " | ")+" |")
	seps := make([]string, len(columns))
	for i := range seps {
		seps[i] = "---"
	}
	fmt.Fprintln(w, "|"+strings.Join(seps, "|")+"|")
	for _, r := range results {
		c := r.cells()
		for i := range c {
			c[i] = strings.ReplaceAll(c[i], "|", "\\|")
		}
		fmt.Fprintln(w, "| "+strings.Join(c, " | ")+" |")
	}
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "### %d. %s: %s\n\nExpected: %s\n\n```\n", r.ID, r.Name, r.verdict(), r.Expect)
		writeDetail(w, r, "")
		fmt.Fprintln(w, "```")
		fmt.Fprintln(w)
	}
}

// Failed counts the results that did not pass.
func Failed(results []*Result) int {
	n := 0
	for _, r := range results {
		if !r.Pass() {
			n++
		}
	}
	return n
}

// fmtDropped prints the non-zero drop reasons, or 0.
func fmtDropped(m map[string]int64) string {
	var parts []string
	for k, v := range m {
		if v != 0 {
			parts = append(parts, k+":"+strconv.FormatInt(v, 10))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
