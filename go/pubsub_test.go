package longrun_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
	"time"

	longrun "example.invalid/longrun/go"
)

func topic(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + "." + hex.EncodeToString(b)
}

func subscribe(t *testing.T, c *longrun.Client, topic string, opts ...longrun.SubscribeOption) *longrun.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	s, err := c.Subscribe(ctx, topic, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// next is the subscription's next publication, within the guard.
func next(t *testing.T, s *longrun.Subscription) longrun.Publication {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for p, err := range s.Publications(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatal("the subscription ended")
	return longrun.Publication{}
}

func TestSubscribeIsReadyAndPublicationsComeInOrder(t *testing.T) {
	ctx := context.Background()
	tp := topic("orders")
	c := newClient(t, serverURL)
	ws := newClient(t, serverURL, longrun.WithTransport(longrun.TransportWebSocket))
	if off, err := c.Publish(ctx, tp, "before"); err != nil || off != 0 {
		t.Fatal(off, err)
	}
	s := subscribe(t, c, tp)
	if s.Offset != 1 || !s.Recovered {
		t.Fatalf("ack %d %v", s.Offset, s.Recovered)
	}
	for i := 0; i < 5; i++ {
		publisher := c
		if i%2 == 1 {
			publisher = ws
		}
		off, err := publisher.Publish(ctx, tp, map[string]int{"i": i})
		if err != nil || off != uint64(i+1) {
			t.Fatal(off, err)
		}
	}
	// One loop across several publications, and loops after it: nothing lost between them.
	var got []longrun.Publication
	loopCtx, cancel := context.WithTimeout(ctx, guard)
	defer cancel()
	for p, err := range s.Publications(loopCtx) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
		if len(got) == 3 {
			break
		}
	}
	got = append(got, next(t, s), next(t, s))
	for i, p := range got {
		var data struct{ I int }
		if err := json.Unmarshal(p.Data, &data); err != nil {
			t.Fatal(err)
		}
		if p.Topic != tp || p.Offset != uint64(i+1) || data.I != i {
			t.Fatalf("publication %d: %+v", i, p)
		}
	}
}

func TestFromOffsetReplaysAndAnUnknownTopicIsNotRecovered(t *testing.T) {
	ctx := context.Background()
	tp := topic("log")
	c := newClient(t, serverURL)
	for i := 0; i < 4; i++ {
		if _, err := c.Publish(ctx, tp, i); err != nil {
			t.Fatal(err)
		}
	}
	s := subscribe(t, c, tp, longrun.FromOffset(2))
	if s.Offset != 4 || !s.Recovered {
		t.Fatalf("ack %d %v", s.Offset, s.Recovered)
	}
	if p := next(t, s); p.Offset != 2 || string(p.Data) != "2" {
		t.Fatalf("%+v", p)
	}
	if p := next(t, s); p.Offset != 3 {
		t.Fatalf("%+v", p)
	}
	gone := subscribe(t, c, topic("never"), longrun.FromOffset(3))
	if gone.Recovered {
		t.Fatal("a topic the server never held was recovered")
	}
}

func TestAPatternAndTheRunFeed(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	room := topic("chat")
	s := subscribe(t, c, room+".*")
	if _, err := c.Publish(ctx, room+".lobby", "hi"); err != nil {
		t.Fatal(err)
	}
	if p := next(t, s); p.Topic != room+".lobby" || p.Offset != 0 || string(p.Data) != `"hi"` {
		t.Fatalf("%+v", p)
	}
	feed := subscribe(t, c, "_runs.echo")
	run, err := c.Submit(ctx, "echo", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for len(states) < 2 {
		var data struct{ ID, State string }
		if err := json.Unmarshal(next(t, feed).Data, &data); err != nil {
			t.Fatal(err)
		}
		if data.ID == run.ID {
			states = append(states, data.State)
		}
	}
	if states[0] != "queued" || states[1] != "success" {
		t.Fatal(states)
	}
}

func TestBadTopicsAndTokens(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	if _, err := c.Subscribe(ctx, "no..dots"); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "a.*", longrun.FromOffset(0)); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "_runs", 1); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatal(err)
	}
	anonymous := newClient(t, authURL)
	if _, err := anonymous.Subscribe(ctx, "t"); !errors.Is(err, longrun.ErrUnauthorized) {
		t.Fatal(err)
	}
	// Tenants each have their own topics.
	mine := newClient(t, authURL, longrun.WithToken(authToken))
	other := newClient(t, authURL, longrun.WithToken(otherToken))
	s := subscribe(t, mine, "shared.name")
	if _, err := other.Publish(ctx, "shared.name", "not for you"); err != nil {
		t.Fatal(err)
	}
	if _, err := mine.Publish(ctx, "shared.name", "yours"); err != nil {
		t.Fatal(err)
	}
	if p := next(t, s); string(p.Data) != `"yours"` {
		t.Fatalf("%+v", p)
	}
}

func TestCloseAndTheContextEndABlockedLoop(t *testing.T) {
	c := newClient(t, serverURL)
	s := subscribe(t, c, topic("quiet"))
	// A cancelled context ends the loop with its error, and the subscription goes on.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		for _, err := range s.Publications(ctx) {
			done <- err
			return
		}
		done <- nil
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	case <-time.After(guard):
		t.Fatal("the loop did not stop")
	}
	// Close ends a loop in progress, without an error.
	go func() {
		for _, err := range s.Publications(context.Background()) {
			done <- err
			return
		}
		done <- nil
	}()
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(guard):
		t.Fatal("Close did not end the loop")
	}
}
