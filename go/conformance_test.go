package longrun_test

// The spec/conformance scenarios through the Go API (spec/conformance/README.md is the
// contract): `http` steps, and steps on runs that only a skipped step saved, are skipped.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	longrun "example.invalid/longrun/go"
)

// knownFailures lists scenarios this client is expected to fail, by description. A listed
// scenario that passes, or a description that matches no scenario, fails the run.
var knownFailures = map[string]bool{}

const stepTimeout = 60 * time.Second

type scenarioFile struct {
	Description string     `json:"description"`
	Scenarios   []scenario `json:"scenarios"`
}

type scenario struct {
	Description string `json:"description"`
	Steps       []step `json:"steps"`
}

type step struct {
	Op        string                     `json:"op"`
	Object    string                     `json:"object"`
	Args      json.RawMessage            `json:"args"`
	Save      string                     `json:"save"`
	Run       json.RawMessage            `json:"run"`
	Transport string                     `json:"transport"`
	Since     *uint64                    `json:"since"`
	Until     *uint64                    `json:"until"`
	TimeoutMs *int64                     `json:"timeout_ms"`
	Expect    map[string]json.RawMessage `json:"expect"`
}

type errorExpect struct {
	Kind    string          `json:"kind"`
	Status  int             `json:"status"`
	Problem string          `json:"problem"`
	Value   json.RawMessage `json:"value"`
}

type event struct {
	ID    uint64          `json:"id"`
	State string          `json:"state"`
	Value json.RawMessage `json:"value"`
}

func TestConformance(t *testing.T) { conformance(t, serverURL) }

// The same scenarios with a unix:///… base URL.
func TestConformanceOverAUnixSocket(t *testing.T) { conformance(t, unixURL) }

// The same scenarios with every call over one WebSocket (spec §28).
func TestConformanceOverAWebSocket(t *testing.T) {
	conformance(t, serverURL, longrun.WithTransport(longrun.TransportWebSocket))
}

func conformance(t *testing.T, baseURL string, opts ...longrun.Option) {
	files, err := filepath.Glob("../spec/conformance/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files in ../spec/conformance (%v)", err)
	}
	client, err := longrun.NewClient(baseURL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	seen := map[string]bool{}
	var skippedSteps atomic.Int64
	t.Run("scenarios", func(t *testing.T) {
		for _, path := range files {
			if filepath.Base(path) == "schema.json" {
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var file scenarioFile
			if err := json.Unmarshal(data, &file); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			for _, sc := range file.Scenarios {
				if seen[sc.Description] {
					t.Fatalf("%s: the description %q is not unique", path, sc.Description)
				}
				seen[sc.Description] = true
				name := filepath.Base(path) + ": " + sc.Description
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					r := &runner{client: client, saved: map[string]longrun.Run{}, unsaved: map[string]bool{}}
					failure := r.scenario(sc)
					skippedSteps.Add(int64(r.skipped))
					if knownFailures[sc.Description] {
						if failure == "" {
							t.Errorf("passes but is in knownFailures: remove it")
						}
						return
					}
					if failure != "" {
						t.Errorf("%s", failure)
						return
					}
					if r.ran == 0 {
						t.Skip("every step is an http step (or depends on one)")
					}
				})
			}
		}
	})
	for description := range knownFailures {
		if !seen[description] {
			t.Errorf("knownFailures lists %q, which is no scenario: remove it", description)
		}
	}
	t.Logf("%d scenarios; %d http steps (or steps on their runs) skipped", len(seen), skippedSteps.Load())
}

type runner struct {
	client  *longrun.Client
	saved   map[string]longrun.Run
	unsaved map[string]bool // saved by a skipped step
	created []longrun.Run
	ran     int
	skipped int
}

// scenario runs the steps in order; "" when all passed, else which step failed and how.
func (r *runner) scenario(sc scenario) string {
	for i, st := range sc.Steps {
		ran, err := r.step(st)
		if err != nil {
			// Leave no sleep behind.
			for _, run := range r.created {
				ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
				_, _ = r.client.Cancel(ctx, run)
				cancel()
			}
			return fmt.Sprintf("steps[%d] (%s): %v", i, st.Op, err)
		}
		if ran {
			r.ran++
		} else {
			r.skipped++
		}
	}
	return ""
}

// resolve finds the run a step names; ok is false when it was saved by a skipped step.
func (r *runner) resolve(ref json.RawMessage) (run longrun.Run, ok bool, err error) {
	var name string
	if json.Unmarshal(ref, &name) == nil {
		if r.unsaved[name] {
			return run, false, nil
		}
		run, found := r.saved[name]
		if !found {
			return run, false, fmt.Errorf("no run saved as %q", name)
		}
		return run, true, nil
	}
	var named struct{ Object, ID, Like string }
	if err := json.Unmarshal(ref, &named); err != nil {
		return run, false, err
	}
	id := named.ID
	if named.Like != "" {
		if r.unsaved[named.Like] {
			return run, false, nil
		}
		like, found := r.saved[named.Like]
		if !found {
			return run, false, fmt.Errorf("no run saved as %q", named.Like)
		}
		id = like.ID
	}
	run, err = r.client.Run(named.Object, id)
	return run, err == nil, err
}

func (r *runner) step(st step) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if st.Op == "http" {
		if st.Save != "" {
			r.unsaved[st.Save] = true
		}
		return false, nil
	}
	var run longrun.Run
	if st.Op != "submit" {
		var ok bool
		var err error
		if run, ok, err = r.resolve(st.Run); err != nil || !ok {
			return false, err
		}
	}
	var expectErr *errorExpect
	if raw, ok := st.Expect["error"]; ok {
		expectErr = new(errorExpect)
		if err := json.Unmarshal(raw, expectErr); err != nil {
			return false, err
		}
	}
	switch st.Op {
	case "submit":
		var args any
		if st.Args != nil {
			args = st.Args
		}
		got, err := r.client.Submit(ctx, st.Object, args)
		if err == nil {
			r.created = append(r.created, got)
		}
		if done, err := outcome(err, expectErr, got); done {
			return true, err
		}
		if got.Object != st.Object || got.ID == "" {
			return true, fmt.Errorf("submitted to %s, got the run %+v", st.Object, got)
		}
		if st.Save != "" {
			r.saved[st.Save] = got
		}
	case "follow":
		transport := longrun.TransportSSE
		if st.Transport == "poll" {
			transport = longrun.TransportPoll
		}
		opts := []longrun.FollowOption{longrun.Via(transport)}
		if st.Since != nil {
			opts = append(opts, longrun.Since(*st.Since))
		}
		var events []event
		var ferr error
		for ev, err := range r.client.Follow(ctx, run, opts...) {
			if err != nil {
				ferr = err
				break
			}
			events = append(events, event{ev.ID, string(ev.State), ev.Value})
			if st.Until != nil && ev.ID == *st.Until {
				break
			}
		}
		return true, checkFollowed(events, ferr, expectErr, st.Expect)
	case "exists":
		exists, err := r.client.Exists(ctx, run)
		if done, err := outcome(err, expectErr, exists); done {
			return true, err
		}
		var want struct {
			Exists      bool    `json:"exists"`
			State       *string `json:"state"`
			LastEventID *uint64 `json:"last_event_id"`
		}
		if err := unmarshalExpect(st.Expect, &want); err != nil {
			return true, err
		}
		if exists != want.Exists {
			return true, fmt.Errorf("expected exists = %v, got %v", want.Exists, exists)
		}
		if want.State != nil || want.LastEventID != nil {
			status, err := r.client.Status(ctx, run)
			if err != nil {
				return true, fmt.Errorf("status after exists: %w", err)
			}
			if (want.State != nil && *want.State != string(status.State)) ||
				(want.LastEventID != nil && *want.LastEventID != status.LastEventID) {
				return true, fmt.Errorf("expected %v with last event %v, got %+v", deref(want.State), deref(want.LastEventID), status)
			}
		}
	case "cancel":
		got, err := r.client.Cancel(ctx, run)
		if done, err := outcome(err, expectErr, got); done {
			return true, err
		}
		var want struct {
			Outcome string  `json:"outcome"`
			State   *string `json:"state"`
		}
		if err := unmarshalExpect(st.Expect, &want); err != nil {
			return true, err
		}
		switch {
		case want.Outcome == "accepted" && !got.AlreadyEnded:
			// A terminal state stays put, so it can be checked after the reply.
			if want.State != nil && *want.State == "canceled" {
				status, err := r.client.Status(ctx, run)
				if err != nil {
					return true, fmt.Errorf("status after cancel: %w", err)
				}
				if status.State != longrun.StateCanceled {
					return true, fmt.Errorf("accepted, then the run is %s", status.State)
				}
			}
		case want.Outcome == "ended" && got.AlreadyEnded && want.State != nil && *want.State == string(got.State):
		default:
			return true, fmt.Errorf("expected %s (%v), got %+v", want.Outcome, deref(want.State), got)
		}
	case "wait":
		if st.TimeoutMs != nil {
			var cancelWait context.CancelFunc
			ctx, cancelWait = context.WithTimeout(ctx, time.Duration(*st.TimeoutMs)*time.Millisecond)
			defer cancelWait()
		}
		got, err := r.client.Wait(ctx, run)
		if done, err := outcome(err, expectErr, string(got)); done {
			return true, err
		}
		if !jsonEqual(got, st.Expect["value"]) {
			return true, fmt.Errorf("expected the value %s, got %s", st.Expect["value"], got)
		}
	default:
		return false, fmt.Errorf("unknown op %q", st.Op)
	}
	return true, nil
}

func deref[T any](p *T) any {
	if p == nil {
		return "any"
	}
	return *p
}

func unmarshalExpect(expect map[string]json.RawMessage, into any) error {
	data, err := json.Marshal(expect)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, into)
}

// outcome checks a call's error against the expectation: done is true when the step is
// decided here (it failed as expected, or went wrong).
func outcome(err error, want *errorExpect, got any) (done bool, _ error) {
	switch {
	case err == nil && want == nil:
		return false, nil
	case err == nil:
		return true, fmt.Errorf("expected the error %s, got %v", want.Kind, got)
	case want == nil:
		return true, fmt.Errorf("expected success, got %v", err)
	default:
		return true, checkError(err, want)
	}
}

func checkError(err error, want *errorExpect) error {
	var e *longrun.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("expected a longrun error %s, got %T %v", want.Kind, err, err)
	}
	if string(e.Kind) != want.Kind {
		return fmt.Errorf("expected the error %s, got %s: %v", want.Kind, e.Kind, err)
	}
	if want.Status != 0 && e.Status != want.Status {
		return fmt.Errorf("expected status %d, got %d: %v", want.Status, e.Status, err)
	}
	if want.Problem != "" && e.Problem != nil {
		var p struct{ Type string }
		if json.Unmarshal(e.Problem, &p) != nil || p.Type != "urn:longrun:problem:"+want.Problem {
			return fmt.Errorf("expected the problem %s, got %s", want.Problem, e.Problem)
		}
	}
	if want.Value != nil && !jsonEqual(e.Value, want.Value) {
		return fmt.Errorf("expected the value %s, got %s", want.Value, e.Value)
	}
	return nil
}

func checkFollowed(events []event, ferr error, wantErr *errorExpect, expect map[string]json.RawMessage) error {
	got := func() string {
		s := showEvents(events)
		if ferr != nil {
			s += fmt.Sprintf(", then %v", ferr)
		}
		return s
	}
	if wantErr != nil {
		if ferr == nil || len(events) > 0 {
			return fmt.Errorf("expected the error %s, got %s", wantErr.Kind, got())
		}
		return checkError(ferr, wantErr)
	}
	if ferr != nil {
		return fmt.Errorf("expected events, got %s", got())
	}
	if raw, ok := expect["events"]; ok {
		var want []event
		if err := json.Unmarshal(raw, &want); err != nil {
			return err
		}
		if !eventsEqual(events, want) {
			return fmt.Errorf("expected %s\n      got %s", showEvents(want), got())
		}
		return nil
	}
	var want struct {
		Count int     `json:"count"`
		Tail  []event `json:"tail"`
	}
	if err := unmarshalExpect(expect, &want); err != nil {
		return err
	}
	if len(events) != want.Count || len(events) < len(want.Tail) ||
		!eventsEqual(events[len(events)-len(want.Tail):], want.Tail) {
		return fmt.Errorf("expected %d events ending %s, got %d", want.Count, showEvents(want.Tail), len(events))
	}
	for i := 1; i < len(events); i++ {
		if events[i].ID != events[i-1].ID+1 {
			return fmt.Errorf("ids are not dense at %d", events[i].ID)
		}
	}
	return nil
}

func eventsEqual(got, want []event) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].ID != want[i].ID || got[i].State != want[i].State || !jsonEqual(got[i].Value, want[i].Value) {
			return false
		}
	}
	return true
}

func showEvents(events []event) string {
	parts := make([]string, len(events))
	for i, e := range events {
		parts[i] = fmt.Sprintf("%d %s %s", e.ID, e.State, e.Value)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// jsonEqual compares JSON values as the README says: numbers as numbers, objects in any order.
func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if len(a) == 0 {
		a = json.RawMessage("null")
	}
	if len(b) == 0 {
		b = json.RawMessage("null")
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
