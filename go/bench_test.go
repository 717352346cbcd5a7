package longrun_test

// The drain benchmark behind `cargo xtask bench go`: 100,000 small events of one ended `count`
// run, read by this SDK (Rust core, batches over cgo) and by a plain net/http + bufio SSE
// reader, in the same process against the same server. Run it with
//
//	LONGRUN_BENCH=1 go test -run TestDrainBenchmark -v
//
// (or the Benchmark* functions with -bench). Allocations are Go heap allocations; the Rust
// side's are not counted by the Go runtime.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	longrun "example.invalid/longrun/go"
)

const benchEvents = 100000

// benchRun submits the count run once and waits for its end, so that every drain reads the
// same finished log.
func benchRun(tb testing.TB, c *longrun.Client) longrun.Run {
	ctx := context.Background()
	run, err := c.Submit(ctx, "count", map[string]any{"n": benchEvents})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Wait(ctx, run); err != nil {
		tb.Fatal(err)
	}
	return run
}

func drainSDK(tb testing.TB, c *longrun.Client, run longrun.Run) int {
	n := 0
	for ev, err := range c.Follow(context.Background(), run) {
		if err != nil {
			tb.Fatal(err)
		}
		if ev.ID != uint64(n) {
			tb.Fatalf("event %d after %d", ev.ID, n)
		}
		n++
	}
	return n
}

// drainRaw is the peer: the simplest correct Go SSE reader for this stream, producing the
// same Event values (the data copied into its own RawMessage, the state a constant).
func drainRaw(tb testing.TB, hc *http.Client, url string) int {
	return drainRawDecoding(tb, hc, url, false)
}

// drainRawDecoding is drainRaw, also decoding each value with encoding/json when decode is
// set: a reader that parses values, as the Rust core does (it checks every event).
func drainRawDecoding(tb testing.TB, hc *http.Client, url string, decode bool) int {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	res, err := hc.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	r := bufio.NewReaderSize(res.Body, 64*1024)
	n := 0
	var ev longrun.Event
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			tb.Fatalf("after %d events: %v", n, err)
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if ev.State == "" {
				continue // the retry: block
			}
			if ev.ID != uint64(n) {
				tb.Fatalf("event %d after %d", ev.ID, n)
			}
			n++
			if ev.State.Terminal() {
				return n
			}
			ev = longrun.Event{}
		case bytes.HasPrefix(line, []byte("id: ")):
			ev.ID, _ = strconv.ParseUint(string(line[4:]), 10, 64)
		case bytes.HasPrefix(line, []byte("event: ")):
			ev.State = state(line[7:])
		case bytes.HasPrefix(line, []byte("data: ")):
			ev.Value = append([]byte(nil), line[6:]...)
			if decode {
				var v any
				if err := json.Unmarshal(ev.Value, &v); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
}

func state(b []byte) longrun.State {
	for _, s := range []longrun.State{longrun.StateRunning, longrun.StateQueued, longrun.StateSuccess, longrun.StateError, longrun.StateCanceled} {
		if string(b) == string(s) {
			return s
		}
	}
	return longrun.State(b)
}

func BenchmarkFollowSDK(b *testing.B) {
	c, _ := longrun.NewClient(serverURL)
	defer c.Close()
	run := benchRun(b, c)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if drainSDK(b, c, run) != benchEvents+2 {
			b.Fatal("short drain")
		}
	}
}

func BenchmarkFollowNetHTTP(b *testing.B) {
	c, _ := longrun.NewClient(serverURL)
	defer c.Close()
	run := benchRun(b, c)
	hc := &http.Client{}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if drainRaw(b, hc, run.URL) != benchEvents+2 {
			b.Fatal("short drain")
		}
	}
}

type figure struct {
	perSecond, nsPerEvent, allocsPerEvent, bytesPerEvent float64
}

func measure(drain func() int) figure {
	drain() // warm up connections and caches
	const rounds = 5
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	events := 0
	for range rounds {
		events += drain()
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	e := float64(events)
	return figure{
		perSecond:      e / elapsed.Seconds(),
		nsPerEvent:     float64(elapsed.Nanoseconds()) / e,
		allocsPerEvent: float64(after.Mallocs-before.Mallocs) / e,
		bytesPerEvent:  float64(after.TotalAlloc-before.TotalAlloc) / e,
	}
}

func TestDrainBenchmark(t *testing.T) {
	if os.Getenv("LONGRUN_BENCH") == "" {
		t.Skip("a benchmark: run it with LONGRUN_BENCH=1 (cargo xtask bench go)")
	}
	c := newClient(t, serverURL)
	run := benchRun(t, c)
	hc := &http.Client{}
	// Alternate the three, five times, and keep each one's best, so neither is favoured by warm-up.
	var sdk, raw, decoded figure
	for range 5 {
		if f := measure(func() int { return drainRawDecoding(t, hc, run.URL, true) }); f.perSecond > decoded.perSecond {
			decoded = f
		}
		if f := measure(func() int { return drainRaw(t, hc, run.URL) }); f.perSecond > raw.perSecond {
			raw = f
		}
		if f := measure(func() int { return drainSDK(t, c, run) }); f.perSecond > sdk.perSecond {
			sdk = f
		}
	}
	show := func(name string, f figure) {
		fmt.Printf("  %-24s %10.0f events/s  %7.1f ns/event  %6.3f allocs/event  %7.1f B/event\n",
			name, f.perSecond, f.nsPerEvent, f.allocsPerEvent, f.bytesPerEvent)
	}
	fmt.Printf("go: drain %d events of one ended count run (SSE, %s)\n", benchEvents+2, runtime.Version())
	show("longrun Go SDK", sdk)
	show("net/http + bufio SSE", raw)
	show("  + encoding/json value", decoded)
	fmt.Printf("  SDK / net/http + bufio: %.2fx (goal >= 0.8x); SDK / the same + encoding/json: %.2fx\n",
		sdk.perSecond/raw.perSecond, sdk.perSecond/decoded.perSecond)
}
