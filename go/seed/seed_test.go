// Package seed runs the seed implementation's own Go client (factorysh/go-longrun v0.1.0,
// unchanged, from the module proxy) against the reference server, the flow of its README and
// client_test.go: POST with `Accept: text/event-stream`, follow the 303, read SSE with its
// `client.Longrun` reader until a terminal state. Its parser returns an event at every blank
// line, so a data-less block ended by one (the `retry` hint, a keep-alive) reads as an error:
// spec/PROTOCOL.md §7.1 and §23.
package seed

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/factorysh/go-longrun/client"
)

var serverURL string

// TestMain starts `longrun serve` (LONGRUN_BIN, else the workspace's debug build) with a
// 100 ms keep-alive, so a half-second run's stream carries several keep-alive comments. (The
// SDK module's TestMain does the same; this module cannot import that one's test files.)
func TestMain(m *testing.M) {
	bin := os.Getenv("LONGRUN_BIN")
	if bin == "" {
		bin = "../../target/debug/longrun"
	}
	cmd := exec.Command(bin, "serve", "--store", "memory", "--listen", "127.0.0.1:0", "--keep-alive", "100ms")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the longrun server %s: %v\n(build it with `cargo build -p longrun-cli`, or set LONGRUN_BIN)\n", bin, err)
		os.Exit(1)
	}
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if url, ok := strings.CutPrefix(lines.Text(), "longrun listening on "); ok {
			serverURL = strings.TrimSpace(url)
			break
		}
	}
	if serverURL == "" {
		fmt.Fprintln(os.Stderr, "the longrun server did not say where it listens")
		_ = cmd.Process.Kill()
		os.Exit(1)
	}
	go func() { // keep its stdout drained
		for lines.Scan() {
		}
	}()
	code := m.Run()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	os.Exit(code)
}

// states submits args to object as the seed's README does and returns the states its client
// reads, stopping at the first error it reports.
func states(t *testing.T, object, args string) ([]string, error) {
	t.Helper()
	req, err := http.NewRequest("POST", serverURL+"/"+object+"/", bytes.NewBufferString(args))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req) // follows the 303 to the stream
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d after the redirect, want 200", resp.StatusCode)
	}
	reader, err := client.Longrun(resp)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		evt, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return seen, nil
		}
		if err != nil {
			return seen, err
		}
		seen = append(seen, string(evt.State))
	}
}

func expect(t *testing.T, object, args string, want ...string) {
	t.Helper()
	got, err := states(t, object, args)
	if err != nil {
		t.Fatalf("the seed client failed after %v: %v", got, err)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("the seed client read %v, want %v", got, want)
	}
}

// The seed's client_test.go: one `running` event, then success: exactly three events.
func TestSeedClientReadsQueuedRunningSuccess(t *testing.T) {
	expect(t, "count", `{"n": 1}`, "queued", "running", "success")
}

func TestSeedClientReadsQueuedSuccess(t *testing.T) {
	expect(t, "echo", `{"name": "Charly"}`, "queued", "success")
}

// A quiet half second with a 100 ms keep-alive: the comments between the events read as
// nothing.
func TestSeedClientReadsNoEventForKeepAlives(t *testing.T) {
	expect(t, "sleep", `{"ms": 500}`, "queued", "success")
}
