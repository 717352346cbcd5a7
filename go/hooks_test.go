package longrun_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	longrun "example.invalid/longrun/go"
)

type delivery struct {
	header http.Header
	body   []byte
}

// A real server's hook reaches a real receiver that verifies it; then the same delivery,
// changed, is refused for each reason.
func TestAHookReachesAReceiverThatVerifiesIt(t *testing.T) {
	deliveries := make(chan delivery, 8)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := longrun.VerifyWebhook(hookSecret, r.Header, body, 0); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
		deliveries <- delivery{r.Header.Clone(), body}
	}))
	defer receiver.Close()
	ctx := context.Background()
	c := newClient(t, hookURL)
	run, err := c.Submit(ctx, "echo", map[string]any{"a": 1}, longrun.WithHook(receiver.URL+"/hook"), longrun.WithHookEvents(longrun.HookEnded))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, run); err != nil {
		t.Fatal(err)
	}
	var d delivery
	select {
	case d = <-deliveries:
	case <-time.After(60 * time.Second): // a bound on a broken server, not a synchronisation
		t.Fatal("no delivery")
	}
	if err := longrun.VerifyWebhook(hookSecret, d.header, d.body, 0); err != nil {
		t.Fatalf("the real delivery: %v", err)
	}
	if !strings.Contains(string(d.body), run.ID) {
		t.Fatalf("the payload does not name the run: %s", d.body)
	}
	rejected := func(what string, secret string, header http.Header, body []byte, tolerance time.Duration) {
		t.Helper()
		var e *longrun.Error
		err := longrun.VerifyWebhook(secret, header, body, tolerance)
		if !errors.Is(err, longrun.ErrWebhookRejected) || !errors.As(err, &e) || e.Kind != longrun.KindWebhookRejected {
			t.Fatalf("%s: %v", what, err)
		}
	}
	rejected("a tampered body", hookSecret, d.header, []byte(strings.Replace(string(d.body), `"a"`, `"b"`, 1)), 0)
	rejected("another secret", "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VydmVy", d.header, d.body, 0)
	stale := d.header.Clone()
	stale.Set("Webhook-Timestamp", strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10))
	rejected("a stale timestamp", hookSecret, stale, d.body, 0)
	rejected("a stale timestamp's signature", hookSecret, stale, d.body, 2*time.Hour)
	missing := d.header.Clone()
	missing.Del("Webhook-Signature")
	rejected("no signature", hookSecret, missing, d.body, 0)
	if err := longrun.VerifyWebhook("whsec_%%", d.header, d.body, 0); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a bad secret: %v", err)
	}
	if _, err := c.Submit(ctx, "echo", nil, longrun.WithHook("ftp://example.com/x")); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("a bad hook URL: %v", err)
	}
	if _, err := c.Submit(ctx, "echo", nil, longrun.WithHook(receiver.URL), longrun.WithHookEvents("some")); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("bad hook events: %v", err)
	}
}

func TestADeadlineEndsTheRunCanceled(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	run, err := c.Submit(ctx, "sleep", map[string]any{"ms": 3_600_000}, longrun.WithDeadline(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	canceledByDeadline := func(what string, err error) {
		t.Helper()
		var e *longrun.Error
		var value struct{ Reason string }
		if !errors.Is(err, longrun.ErrCanceled) || !errors.As(err, &e) || json.Unmarshal(e.Value, &value) != nil || value.Reason != "deadline" {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err = c.Wait(ctx, run)
	canceledByDeadline("submit", err)
	_, err = c.Call(ctx, "sleep", map[string]any{"ms": 3_600_000}, longrun.WithDeadline(200*time.Millisecond))
	canceledByDeadline("call", err)
	for _, bad := range []time.Duration{0, -time.Second, 365 * 24 * time.Hour} {
		if _, err := c.Submit(ctx, "echo", nil, longrun.WithDeadline(bad)); !errors.Is(err, longrun.ErrInvalidArgument) {
			t.Fatalf("deadline %v: %v", bad, err)
		}
	}
}

func TestWaitReturnsTheEndedRunAndCallItsValue(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	run, err := c.Submit(ctx, "echo", map[string]any{"a": 1}, longrun.WithWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The server held the submit until the run ended: it is over before any follow.
	if s, err := c.Status(ctx, run); err != nil || s.State != longrun.StateSuccess {
		t.Fatalf("status: %+v %v", s, err)
	}
	value, err := c.Call(ctx, "echo", map[string]any{"b": 2})
	if err != nil || string(value) != `{"b":2}` {
		t.Fatalf("call: %s %v", value, err)
	}
	if _, err := c.Call(ctx, "fail", nil); !errors.Is(err, longrun.ErrRunFailed) {
		t.Fatalf("call fail: %v", err)
	}
	for _, bad := range []time.Duration{0, 61 * time.Second} {
		if _, err := c.Submit(ctx, "echo", nil, longrun.WithWait(bad)); !errors.Is(err, longrun.ErrInvalidArgument) {
			t.Fatalf("wait %v: %v", bad, err)
		}
	}
}

func TestTheBytesStreamDownloadsWholeAndMatchesItsSHA256(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	run, err := c.Submit(ctx, "bytes", map[string]any{"n": 1_000_000, "chunk": 65_536})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Stream(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	hash := sha256.New()
	n, err := io.Copy(hash, stream)
	if err != nil || n != 1_000_000 {
		t.Fatalf("copied %d bytes: %v", n, err)
	}
	value, err := c.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	var result struct {
		N      int64
		SHA256 string
	}
	if err := json.Unmarshal(value, &result); err != nil || result.N != n || result.SHA256 != hex.EncodeToString(hash.Sum(nil)) {
		t.Fatalf("result %s (%v), streamed %x", value, err, hash.Sum(nil))
	}
	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
	// A run without a stream: ErrNotFound from the first Read.
	echo, err := c.Submit(ctx, "echo", nil, longrun.WithWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	none, err := c.Stream(ctx, echo)
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	if _, err := io.ReadAll(none); !errors.Is(err, longrun.ErrNotFound) {
		t.Fatalf("no stream: %v", err)
	}
}
