package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/apisix-edge/edge-runner/testbed"
	"github.com/apisix-edge/edge-runner/testbed/backing"
)

// TestCHLIngestThroughRunner: the real binary serves the ingest listener
// from its start; the captured http-logger batches (default entries, and
// log_format entries with 401s and 429s) are taken, and SIGTERM flushes
// their rows (flush_interval far away) before the runner exits.
func TestCHLIngestThroughRunner(t *testing.T) {
	t.Parallel()
	ch := chlCH(t)
	port, err := backing.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	e := chlStart(t, chlSection(ch.NativeAddr(), fmt.Sprintf("  flush_interval: 1m\n  batch_size: 5000\n  ingest: {listen: \"127.0.0.1:%d\"}\n", port)),
		testbed.RunnerOptions{NoRespawn: true})
	url := fmt.Sprintf("http://127.0.0.1:%d/apisix/http-logger?", port)
	post := func(file, ctype string) {
		t.Helper()
		body, err := os.ReadFile(filepath.Join("../../shared/apisix-http-logger", file))
		if err != nil {
			t.Fatal(err)
		}
		for {
			resp, err := http.Post(url, ctype, bytes.NewReader(body))
			if err != nil { // the listener binds in the background
				time.Sleep(20 * time.Millisecond)
				continue
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: got %d %s, want 200", file, resp.StatusCode, msg)
			}
			return
		}
	}
	post("default-entry.json", "application/json")
	post("rejected-requests.txt", "text/plain")
	resp, err := http.Get(e.admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Plugins struct {
			CHL struct {
				QueueRows int64 `json:"queue_rows"`
				Ingest    struct {
					Received uint64 `json:"entries_received"`
					Enqueued uint64 `json:"entries_enqueued"`
				} `json:"ingest"`
			} `json:"clickhouselogger"`
		} `json:"plugins"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Plugins.CHL; c.Ingest.Received != 12 || c.Ingest.Enqueued != 12 || c.QueueRows != 12 {
		t.Fatalf("got /status %+v, want 12 entries received and enqueued, 12 rows pending", c)
	}
	exited := make(chan testbed.ExitInfo, 1)
	e.r.OnExit(func(x testbed.ExitInfo) { exited <- x })
	if err := e.r.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	x := <-exited
	if x.State == nil || x.State.ExitCode() != 0 {
		t.Errorf("got exit %v, want 0", x.State)
	}
	if got := chlCount(ch, "edge_access_log"); got != 12 {
		t.Errorf("got %d rows after SIGTERM, want the 12 ingested", got)
	}
}
