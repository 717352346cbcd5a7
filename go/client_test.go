package longrun_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	longrun "example.invalid/longrun/go"
)

// guard bounds a test that would otherwise hang: it is a deadlock detector, not a timing check.
const guard = 30 * time.Second

func newClient(t *testing.T, url string, opts ...longrun.Option) *longrun.Client {
	t.Helper()
	c, err := longrun.NewClient(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sleeping(t *testing.T, c *longrun.Client) longrun.Run {
	t.Helper()
	run, err := c.Submit(context.Background(), "sleep", map[string]any{"ms": 3600000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Cancel(context.Background(), run) })
	return run
}

func TestQuickstart(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	run, err := c.Submit(ctx, "count", map[string]any{"n": 3})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for ev, err := range c.Follow(ctx, run) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID != uint64(len(states)) {
			t.Fatalf("event %d after %d events", ev.ID, len(states))
		}
		states = append(states, string(ev.State))
	}
	if got := strings.Join(states, " "); got != "queued running running running success" {
		t.Fatalf("states: %s", got)
	}
	again, err := longrun.RunFromURL(run.URL)
	if err != nil || again != run {
		t.Fatalf("RunFromURL: %+v, %v", again, err)
	}
	n := 0
	for ev, err := range c.FollowFrom(ctx, again, 2) {
		if err != nil || ev.ID != uint64(3+n) {
			t.Fatalf("FollowFrom: %+v %v", ev, err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("FollowFrom(2) gave %d events", n)
	}
	v, err := c.Wait(ctx, run)
	if err != nil || string(v) != `{"n":3}` {
		t.Fatalf("Wait: %s %v", v, err)
	}
	ok, err := c.Exists(ctx, run)
	if !ok || err != nil {
		t.Fatalf("Exists: %v %v", ok, err)
	}
	st, err := c.Status(ctx, run)
	if err != nil || st != (longrun.RunStatus{State: longrun.StateSuccess, LastEventID: 4}) {
		t.Fatalf("Status: %+v %v", st, err)
	}
	out, err := c.Cancel(ctx, run)
	if err != nil || out != (longrun.CancelOutcome{AlreadyEnded: true, State: longrun.StateSuccess}) {
		t.Fatalf("Cancel: %+v %v", out, err)
	}
}

// Every uint64 is a cursor, passed to the core as it is: one above math.MaxInt64 is past the
// end of the run, not read as "from the start" (which would replay every event).
func TestSinceTakesEveryUint64AsACursor(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	run, err := c.Submit(ctx, "count", map[string]any{"n": 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, run); err != nil {
		t.Fatal(err)
	}
	for _, cursor := range []uint64{math.MaxInt64 + 1, math.MaxUint64} {
		for ev, err := range c.Follow(ctx, run, longrun.Since(cursor)) {
			if err != nil {
				t.Fatalf("Since(%d): %v", cursor, err)
			}
			t.Fatalf("Since(%d) gave event %d: the cursor was not taken as given", cursor, ev.ID)
		}
	}
}

func TestCancellingTheContextStopsABlockedFollow(t *testing.T) {
	c := newClient(t, serverURL)
	run := sleeping(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var seen []uint64
	go func() {
		for ev, err := range c.Follow(ctx, run) {
			if err != nil {
				done <- err
				return
			}
			seen = append(seen, ev.ID)
			cancel() // after the queued event the follow blocks: nothing more comes
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("expected context.Canceled, got %v", err)
		}
	case <-time.After(guard):
		t.Fatal("the follow did not stop when its context was cancelled")
	}
	if len(seen) != 1 || seen[0] != 0 {
		t.Fatalf("events before the cancel: %v", seen)
	}
	// The run goes on: cancelling a context is not cancelling the run.
	st, err := c.Status(context.Background(), run)
	if err != nil || st.State != longrun.StateQueued {
		t.Fatalf("after the follow stopped: %+v %v", st, err)
	}
}

func TestCancellingTheContextStopsABlockedWait(t *testing.T) {
	c, run, connected := sleepingThrough(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Wait(ctx, run)
		done <- err
	}()
	// Cancel once the wait has connected: it is blocked inside its call then.
	select {
	case <-connected:
	case err := <-done:
		t.Fatalf("the wait ended before it connected: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || errors.Is(err, longrun.ErrTimeout) {
			t.Fatalf("expected context.Canceled, got %v", err)
		}
	case <-time.After(guard):
		t.Fatal("the wait did not stop when its context was cancelled")
	}
}

// reportingProxy is a TCP proxy to the server that closes connected when the first
// connection through it is accepted: a call made through it is blocked inside the client once
// connected is closed (the run it waits on has nothing more to say).
func reportingProxy(t *testing.T) (url string, connected <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	first := make(chan struct{})
	go func() {
		once := false
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			if !once {
				once = true
				close(first)
			}
			go func() {
				defer down.Close()
				up, err := net.Dial("tcp", strings.TrimPrefix(serverURL, "http://"))
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, down); up.Close() }()
				_, _ = io.Copy(down, up)
			}()
		}
	}()
	return "http://" + ln.Addr().String(), first
}

// sleepingThrough is a run that never ends, and a client that reaches it through a
// reportingProxy.
func sleepingThrough(t *testing.T) (*longrun.Client, longrun.Run, <-chan struct{}) {
	t.Helper()
	url, connected := reportingProxy(t)
	direct := sleeping(t, newClient(t, serverURL))
	c := newClient(t, url)                      // closed at the end; closing twice is fine
	run, err := c.Run(direct.Object, direct.ID) // the same run, on the proxy's origin
	if err != nil {
		t.Fatal(err)
	}
	return c, run, connected
}

func TestCloseStopsABlockedWait(t *testing.T) {
	c, run, connected := sleepingThrough(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Wait(context.Background(), run)
		done <- err
	}()
	select {
	case <-connected:
	case err := <-done:
		t.Fatalf("the wait ended before it connected: %v", err)
	}
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case err := <-done:
		if !errors.Is(err, longrun.ErrInvalidArgument) || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("expected the client-closed error, got %v", err)
		}
	case <-time.After(guard):
		t.Fatal("the wait did not stop when its client was closed")
	}
	select {
	case <-closed:
	case <-time.After(guard):
		t.Fatal("Close did not return")
	}
	if _, err := c.Status(context.Background(), run); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a call after Close: expected the client-closed error, got %v", err)
	}
	c.Close() // twice is fine
	direct := newClient(t, serverURL)
	same, err := direct.Run(run.Object, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := direct.Status(context.Background(), same); err != nil || st.State.Terminal() {
		t.Fatalf("closing a client must not end its runs: %v %v", st, err)
	}
}

func TestAContextDeadlineIsATimeoutAndTheRunGoesOn(t *testing.T) {
	c := newClient(t, serverURL)
	run := sleeping(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Wait(ctx, run)
	var e *longrun.Error
	if !errors.Is(err, longrun.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &e) || e.Kind != longrun.KindTimeout {
		t.Fatalf("expected a Timeout that is also DeadlineExceeded, got %v", err)
	}
	// A done context stops a call before it starts, too.
	if _, err := c.Submit(ctx, "echo", nil); !errors.Is(err, longrun.ErrTimeout) {
		t.Fatalf("submit with an expired context: %v", err)
	}
	st, err := c.Status(context.Background(), run)
	if err != nil || st.State != longrun.StateQueued {
		t.Fatalf("the run should go on: %+v %v", st, err)
	}
}

func TestErrorsMapByKind(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)

	_, err := c.Submit(ctx, "nope", nil)
	var e *longrun.Error
	if !errors.Is(err, longrun.ErrNotFound) || !errors.As(err, &e) || e.Status != 404 || e.Kind != longrun.KindNotFound {
		t.Fatalf("unknown object: %#v", err)
	}
	var problem struct{ Type string }
	if json.Unmarshal(e.Problem, &problem) != nil || problem.Type != "urn:longrun:problem:unknown-object" {
		t.Fatalf("problem: %s", e.Problem)
	}
	if errors.Is(err, longrun.ErrGone) {
		t.Fatal("NotFound matches ErrGone")
	}

	run, err := c.Submit(ctx, "fail", map[string]any{"message": "boom"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Wait(ctx, run)
	var failed *longrun.RunFailedError
	if !errors.As(err, &failed) || !errors.Is(err, longrun.ErrRunFailed) || !strings.Contains(string(failed.Value), "boom") {
		t.Fatalf("failed run: %v", err)
	}
	if !errors.As(err, &e) || e.Kind != longrun.KindRunFailed || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("a RunFailedError unwraps to its *Error: %v", err)
	}

	run = sleeping(t, c)
	if out, err := c.Cancel(ctx, run); err != nil || out.AlreadyEnded {
		t.Fatalf("cancel: %+v %v", out, err)
	}
	_, err = c.Wait(ctx, run)
	if !errors.Is(err, longrun.ErrCanceled) || !errors.As(err, &e) || string(e.Value) != `{"reason":"client"}` {
		t.Fatalf("canceled run: %v", err)
	}

	_, err = c.Submit(ctx, "count", map[string]any{"n": -1})
	if !errors.Is(err, longrun.ErrInvalidArgument) || !errors.As(err, &e) || e.Status != 422 {
		t.Fatalf("bad arguments: %v", err)
	}
	if _, err := c.Submit(ctx, "echo", []int{1}); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("arguments that are not an object: %v", err)
	}
	if _, err := c.Submit(ctx, "echo", map[string]any{"f": func() {}}); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("arguments that do not encode: %v", err)
	}
	if _, err := c.Submit(ctx, "ech\xff", nil); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("an object name that is not UTF-8: %v", err)
	}
	if _, err := longrun.NewClient("not a url"); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a bad base URL: %v", err)
	}
	if _, err := longrun.RunFromURL("http://h/count/not-an-id"); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a bad run URL: %v", err)
	}
	if _, err := c.Wait(ctx, longrun.Run{}); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a zero Run: %v", err)
	}
	other, _ := longrun.RunFromURL("http://elsewhere.invalid/echo/" + run.ID)
	if _, err := c.Exists(ctx, other); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a run on another server: %v", err)
	}
	missing, _ := c.Run("echo", "00000000-0000-4000-8000-000000000000")
	if ok, err := c.Exists(ctx, missing); ok || err != nil {
		t.Fatalf("exists on a missing run: %v %v", ok, err)
	}
	if _, err := c.Status(ctx, missing); !errors.Is(err, longrun.ErrNotFound) {
		t.Fatalf("status on a missing run: %v", err)
	}

	// Ephemeral: dropped the moment it ends, so afterwards it is gone.
	run, err = c.Submit(ctx, "ephemeral", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, run); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exists(ctx, run); !errors.Is(err, longrun.ErrGone) {
		t.Fatalf("an ended ephemeral run: %v", err)
	}

	// Nothing listens there: a transport error, once reconnecting is not allowed.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	d := newClient(t, dead, longrun.WithReconnect(longrun.Reconnect{MaxAttempts: 0}))
	if _, err := d.Submit(ctx, "echo", nil); !errors.Is(err, longrun.ErrTransport) {
		t.Fatalf("no server: %v", err)
	}
	deadRun, _ := d.Run("echo", run.ID)
	for _, err := range d.Follow(ctx, deadRun) {
		if !errors.Is(err, longrun.ErrTransport) {
			t.Fatalf("follow with no server: %v", err)
		}
	}

	closed, _ := longrun.NewClient(serverURL)
	closed.Close()
	if _, err := closed.Submit(ctx, "echo", nil); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a closed client: %v", err)
	}
}

func TestManyGoroutinesShareOneClient(t *testing.T) {
	c := newClient(t, serverURL)
	ctx := context.Background()
	const workers = 24
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 5 + w
			run, err := c.Submit(ctx, "count", map[string]any{"n": n})
			if err != nil {
				errs <- err
				return
			}
			next := uint64(0)
			for ev, err := range c.Follow(ctx, run, longrun.Via(longrun.Transport(1+w%2))) {
				if err != nil || ev.ID != next {
					errs <- fmt.Errorf("worker %d: event %+v after %d: %v", w, ev, next, err)
					return
				}
				next++
			}
			if next != uint64(n+2) {
				errs <- fmt.Errorf("worker %d: %d events", w, next)
				return
			}
			v, err := c.Wait(ctx, run)
			if err != nil || string(v) != fmt.Sprintf(`{"n":%d}`, n) {
				errs <- fmt.Errorf("worker %d: wait %s %v", w, v, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// cuttingProxy forwards TCP connections to the server, cutting the first connections
// (server→client) after the planned numbers of bytes; later ones pass untouched.
type cuttingProxy struct {
	addr  string
	plan  []int
	conns atomic.Int64
	cuts  atomic.Int64
}

func startProxy(t *testing.T, target string, plan []int) *cuttingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &cuttingProxy{addr: ln.Addr().String(), plan: plan}
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(p.conns.Add(1)) - 1
			budget := -1
			if n < len(p.plan) {
				budget = p.plan[n]
			}
			go p.serve(down, target, budget)
		}
	}()
	return p
}

func (p *cuttingProxy) serve(down net.Conn, target string, budget int) {
	defer down.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, down); up.Close() }()
	if budget < 0 {
		_, _ = io.Copy(down, up)
		return
	}
	if n, _ := io.CopyN(down, up, int64(budget)); n == int64(budget) {
		p.cuts.Add(1)
	}
}

func TestResumeThroughACuttingProxyIsExactlyOnceInOrder(t *testing.T) {
	const n = 60
	for _, tc := range []struct {
		name      string
		transport longrun.Transport
	}{{"sse", longrun.TransportSSE}, {"poll", longrun.TransportPoll}} {
		t.Run(tc.name, func(t *testing.T) {
			target := strings.TrimPrefix(serverURL, "http://")
			// Cut inside the head, and at several points in bodies.
			proxy := startProxy(t, target, []int{40, 700, 1500, 2600})
			c := newClient(t, "http://"+proxy.addr,
				longrun.WithReconnect(longrun.Reconnect{MaxAttempts: 20, InitialDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}))
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			run, err := c.Submit(ctx, "count", map[string]any{"n": n, "interval_ms": 2})
			for err != nil && proxy.conns.Load() <= int64(len(proxy.plan)) {
				run, err = c.Submit(ctx, "count", map[string]any{"n": n, "interval_ms": 2}) // a cut submit
			}
			if err != nil {
				t.Fatal(err)
			}
			next := uint64(0)
			for ev, err := range c.Follow(ctx, run, longrun.Via(tc.transport)) {
				if err != nil {
					t.Fatalf("after %d events: %v", next, err)
				}
				if ev.ID != next {
					t.Fatalf("event %d where %d was due", ev.ID, next)
				}
				if ev.ID >= 1 && ev.ID <= n {
					var v struct{ I uint64 }
					if json.Unmarshal(ev.Value, &v) != nil || v.I != ev.ID {
						t.Fatalf("event %d has the value %s", ev.ID, ev.Value)
					}
				}
				next++
			}
			if next != n+2 {
				t.Fatalf("%d events, expected %d", next, n+2)
			}
			if proxy.cuts.Load() < 2 {
				t.Fatalf("only %d connections were cut: the test did not exercise resume", proxy.cuts.Load())
			}
		})
	}
}

// A server with tenants: the token lets a tenant in, none or an unknown one is ErrUnauthorized,
// a token without the scope ErrForbidden, another tenant's run ErrNotFound.
func TestTokensAndTenants(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, authURL, longrun.WithToken(authToken))
	run, err := c.Submit(ctx, "echo", map[string]any{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Wait(ctx, run); err != nil || string(v) != `{"a":1}` {
		t.Fatalf("wait: %s %v", v, err)
	}
	for _, anon := range []*longrun.Client{newClient(t, authURL), newClient(t, authURL, longrun.WithToken("lrt_nobody"))} {
		_, err := anon.Submit(ctx, "echo", nil)
		var e *longrun.Error
		if !errors.Is(err, longrun.ErrUnauthorized) || !errors.As(err, &e) || e.Status != 401 || e.Kind != longrun.KindUnauthorized {
			t.Fatalf("no token: %#v", err)
		}
		var problem struct{ Type string }
		if json.Unmarshal(e.Problem, &problem) != nil || problem.Type != "urn:longrun:problem:unauthorized" {
			t.Fatalf("problem: %s", e.Problem)
		}
		if strings.Contains(err.Error(), "lrt_nobody") {
			t.Fatalf("the token is in the message: %v", err)
		}
		if _, err := anon.Exists(ctx, run); !errors.Is(err, longrun.ErrUnauthorized) {
			t.Fatalf("exists without a token: %v", err)
		}
	}
	reader := newClient(t, authURL, longrun.WithToken(readToken))
	if ok, err := reader.Exists(ctx, run); err != nil || !ok {
		t.Fatalf("a reader reads: %v %v", ok, err)
	}
	_, err = reader.Submit(ctx, "echo", nil)
	var e *longrun.Error
	if !errors.Is(err, longrun.ErrForbidden) || !errors.As(err, &e) || e.Status != 403 || errors.Is(err, longrun.ErrUnauthorized) {
		t.Fatalf("a reader submits: %#v", err)
	}
	other := newClient(t, authURL, longrun.WithToken(otherToken))
	if ok, err := other.Exists(ctx, run); err != nil || ok {
		t.Fatalf("another tenant's run: %v %v", ok, err)
	}
}

// The same idempotency key gets the same run; other arguments with it are refused; a bad key
// is refused by the client.
func TestIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, authURL, longrun.WithToken(authToken))
	key := fmt.Sprintf("go-%d", time.Now().UnixNano())
	first, err := c.Submit(ctx, "echo", map[string]any{"a": 1}, longrun.WithIdempotencyKey(key))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Submit(ctx, "echo", map[string]any{"a": 1}, longrun.WithIdempotencyKey(key))
	if err != nil || again.ID != first.ID {
		t.Fatalf("again: %+v %v (first %+v)", again, err, first)
	}
	_, err = c.Submit(ctx, "echo", map[string]any{"a": 2}, longrun.WithIdempotencyKey(key))
	var e *longrun.Error
	if !errors.Is(err, longrun.ErrInvalidArgument) || !errors.As(err, &e) || e.Status != 422 || !strings.Contains(string(e.Problem), "idempotency-key-reused") {
		t.Fatalf("other arguments: %#v", err)
	}
	for _, bad := range []string{"", "has space", strings.Repeat("k", 256)} {
		if _, err := c.Submit(ctx, "echo", nil, longrun.WithIdempotencyKey(bad)); !errors.Is(err, longrun.ErrInvalidArgument) {
			t.Fatalf("key %q: %v", bad, err)
		}
	}
	plain, err := c.Submit(ctx, "echo", map[string]any{"a": 1})
	if err != nil || plain.ID == first.ID {
		t.Fatalf("without a key: %+v %v", plain, err)
	}
}
