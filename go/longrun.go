// Package longrun is the Go client of longrun/1: submit long-running calls over HTTP, follow
// their events (Server-Sent Events or long polling) with automatic resume, cancel them, check
// them, wait for their result.
//
// It wraps the project's Rust client core through its C ABI (bindings/c) with cgo, so it
// resumes, reconnects, times out and names errors exactly as every other longrun SDK does.
// Every call takes a context.Context; cancelling it stops a blocked call promptly.
//
//	c, err := longrun.NewClient("http://127.0.0.1:8080", longrun.WithToken(tok))
//	defer c.Close()
//	run, err := c.Submit(ctx, "count", map[string]any{"n": 3})
//	for ev, err := range c.Follow(ctx, run) { … }
//	v, err := c.Wait(ctx, run) // json.RawMessage; *RunFailedError, ErrCanceled, …
package longrun

// #include "longrun.h"
import "C"

import (
	"context"
	"encoding/json"
	"iter"
	"sync"
	"time"
	"unsafe"
)

// State is a run's state, as in its events.
type State string

const (
	StateQueued   State = "queued"
	StateRunning  State = "running"
	StateSuccess  State = "success"
	StateError    State = "error"
	StateCanceled State = "canceled"
)

// Terminal reports whether the state ends a run.
func (s State) Terminal() bool {
	return s == StateSuccess || s == StateError || s == StateCanceled
}

// Event is one event of a run. IDs are dense from 0; a follow delivers each once, in order.
type Event struct {
	ID    uint64
	State State
	// Value is the event's JSON value (null for queued).
	Value json.RawMessage
}

// Run is a handle on a run: its object, id and absolute URL. The URL is the portable resume
// token: RunFromURL rebuilds the Run in another process (or language).
type Run struct {
	Object string
	ID     string
	URL    string
}

// RunFromURL rebuilds a run from its URL, e.g. http://host:8080/count/0f8fad5b-….
func RunFromURL(url string) (Run, error) {
	r, err := cRun(Run{URL: url})
	if err != nil {
		return Run{}, err
	}
	return goRun(r), nil
}

// RunStatus is what the server reports about a run (HEAD).
type RunStatus struct {
	State State
	// LastEventID is the id of the run's newest event.
	LastEventID uint64
}

// CancelOutcome is the answer to a cancel.
type CancelOutcome struct {
	// AlreadyEnded is false when the run is being canceled (or already was): it will end
	// canceled. True when it had already ended in State (success or error); nothing changed.
	AlreadyEnded bool
	State        State
}

// Transport is how a follow reads events.
type Transport int

const (
	// TransportDefault is the client's transport (WithTransport; SSE unless set).
	TransportDefault Transport = iota
	// TransportSSE is Server-Sent Events (falling back to long polling by itself when needed).
	TransportSSE
	// TransportPoll is long polling only.
	TransportPoll
	// TransportWebSocket sends every call over one WebSocket per client (spec §28); as a
	// follow's transport (Via), that follow goes over the client's WebSocket.
	TransportWebSocket
)

// Reconnect is how a follow reconnects after a dropped connection or a 5xx (see WithReconnect).
type Reconnect struct {
	// MaxAttempts is the number of consecutive failed attempts allowed; 0 never reconnects.
	MaxAttempts  uint32
	InitialDelay time.Duration
	MaxDelay     time.Duration
}

// options is the JSON the C ABI takes (longrun_client_new); unset members keep the core's
// defaults.
type options struct {
	Token              *string     `json:"token,omitempty"`
	Headers            [][2]string `json:"headers,omitempty"`
	TimeoutMs          *int64      `json:"timeout_ms,omitempty"`
	Transport          *string     `json:"transport,omitempty"`
	UserAgent          *string     `json:"user_agent,omitempty"`
	PollWaitMs         *int64      `json:"poll_wait_ms,omitempty"`
	IdleTimeoutMs      *int64      `json:"idle_timeout_ms,omitempty"`
	SSEFallbackAfterMs *int64      `json:"sse_fallback_after_ms,omitempty"`
	Reconnect          *reconnect  `json:"reconnect,omitempty"`
}

type reconnect struct {
	MaxAttempts    uint32 `json:"max_attempts"`
	InitialDelayMs int64  `json:"initial_delay_ms"`
	MaxDelayMs     int64  `json:"max_delay_ms"`
}

// Option sets up a Client.
type Option func(*options)

func ms(d time.Duration) *int64 { v := d.Milliseconds(); return &v }

// WithToken sends `Authorization: Bearer <token>` with every request; a server with tenants
// answers a call without a known token with ErrUnauthorized (401), and one the token does not
// allow with ErrForbidden (403). The token is never part of an error's message.
func WithToken(token string) Option { return func(o *options) { o.Token = &token } }

// WithHeader sends a header with every request.
func WithHeader(name, value string) Option {
	return func(o *options) { o.Headers = append(o.Headers, [2]string{name, value}) }
}

// WithTimeout limits one request (submit, cancel, exists; connecting for a follow). Default
// 30 s. It does not limit Wait or Follow as a whole: use the context for that.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.TimeoutMs = ms(d) } }

// WithTransport sets the transport follows use unless told otherwise. Default: SSE.
func WithTransport(t Transport) Option {
	return func(o *options) {
		var name string
		switch t {
		case TransportSSE:
			name = "sse"
		case TransportPoll:
			name = "poll"
		case TransportWebSocket:
			name = "ws"
		default:
			o.Transport = nil
			return
		}
		o.Transport = &name
	}
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(o *options) { o.UserAgent = &ua } }

// WithPollWait sets how long the server may hold one long poll. Default 20 s.
func WithPollWait(d time.Duration) Option { return func(o *options) { o.PollWaitMs = ms(d) } }

// WithIdleTimeout drops and resumes a follow connection on which nothing arrives this long.
// Default 45 s.
func WithIdleTimeout(d time.Duration) Option {
	return func(o *options) { o.IdleTimeoutMs = ms(d) }
}

// WithSSEFallbackAfter switches a follow to long polling when an SSE connection delivers
// nothing this long after opening (a buffering proxy). Default 10 s.
func WithSSEFallbackAfter(d time.Duration) Option {
	return func(o *options) { o.SSEFallbackAfterMs = ms(d) }
}

// WithReconnect sets how follows reconnect. Default: 10 attempts, from 1 s up to 30 s.
func WithReconnect(r Reconnect) Option {
	return func(o *options) {
		o.Reconnect = &reconnect{r.MaxAttempts, r.InitialDelay.Milliseconds(), r.MaxDelay.Milliseconds()}
	}
}

// Client is a longrun/1 client for one server. It is safe for use by many goroutines at once;
// Close it when done.
type Client struct {
	mu     sync.RWMutex // held (read) during calls; Close takes it to free the handle
	handle *C.longrun_client
	// Done once Close has begun: it interrupts the calls in progress, so Close does not wait
	// for a Wait on a run that may never end.
	closing      context.Context
	startClosing context.CancelFunc
}

var errClosed = &Error{Kind: KindInvalidArgument, Message: "invalid argument: the client is closed"}

// NewClient makes a client for the server at url (e.g. http://127.0.0.1:8080, or
// unix:///run/longrun.sock for a server on a unix socket).
func NewClient(url string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	config, err := json.Marshal(o)
	if err != nil {
		return nil, &Error{Kind: KindInvalidArgument, Message: "invalid argument: " + err.Error()}
	}
	up, un := cstr(url)
	cp, cn := cbytes(config)
	var h *C.longrun_client
	var cerr *C.longrun_error
	if code := C.longrun_client_new(up, un, cp, cn, &h, &cerr); code != C.LONGRUN_CODE_OK {
		return nil, failure(context.Background(), code, cerr)
	}
	closing, startClosing := context.WithCancel(context.Background())
	return &Client{handle: h, closing: closing, startClosing: startClosing}, nil
}

// Close releases the client. Calls in progress on it return promptly with an error
// matching ErrInvalidArgument ("the client is closed"), as do calls after Close; the runs
// themselves go on. Follows already started go on too: they hold their own connection.
// Close may be called more than once.
func (c *Client) Close() error {
	c.startClosing()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handle != nil {
		C.longrun_client_free(c.handle)
		c.handle = nil
	}
	return nil
}

// bound is ctx, also cancelled once Close begins.
func (c *Client) bound(ctx context.Context) (context.Context, func()) {
	callCtx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.closing, cancel)
	return callCtx, func() {
		stop()
		cancel()
	}
}

// call runs one blocking C call on a run with the client handle held and ctx wired to an
// interrupt.
func (c *Client) call(ctx context.Context, run *Run, f func(h *C.longrun_client, r *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code) error {
	if err := ctx.Err(); err != nil {
		return contextError(ctx)
	}
	var r *C.longrun_run
	if run != nil {
		var err error
		if r, err = cRun(*run); err != nil {
			return err
		}
		defer C.longrun_run_free(r)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.handle == nil {
		return errClosed
	}
	callCtx, unbind := c.bound(ctx)
	defer unbind()
	intr, release := interruptible(callCtx)
	defer release()
	var cerr *C.longrun_error
	if code := f(c.handle, r, intr, &cerr); code != C.LONGRUN_CODE_OK {
		if code == C.LONGRUN_CODE_INTERRUPTED && ctx.Err() == nil {
			C.longrun_error_free(cerr)
			return errClosed // interrupted by Close, not by the caller's context
		}
		return failure(ctx, code, cerr)
	}
	return nil
}

// Run is a handle on an existing run of this client's server.
func (c *Client) Run(object, id string) (Run, error) {
	var run Run
	err := c.call(context.Background(), nil, func(h *C.longrun_client, _ *C.longrun_run, _ *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		op, on := cstr(object)
		ip, in := cstr(id)
		var r *C.longrun_run
		code := C.longrun_client_run(h, op, on, ip, in, &r, cerr)
		if code == C.LONGRUN_CODE_OK {
			run = goRun(r)
		}
		return code
	})
	return run, err
}

// SubmitOption sets up one Submit (or Call).
type SubmitOption func(*submitOptions)

// submitOptions is the JSON the C ABI takes (longrun_client_submit_with_options), read by the
// core's SubmitOptions: unset members are not sent.
type submitOptions struct {
	IdempotencyKey *string  `json:"idempotency_key,omitempty"`
	DeadlineMs     *float64 `json:"deadline_ms,omitempty"`
	WaitMs         *float64 `json:"wait_ms,omitempty"`
	Hook           *string  `json:"hook,omitempty"`
	HookEvents     *string  `json:"hook_events,omitempty"`
}

func fms(d time.Duration) *float64 { v := float64(d) / float64(time.Millisecond); return &v }

// WithIdempotencyKey sends `Idempotency-Key: key` (1 to 255 visible ASCII characters, e.g. a
// UUID): the server answers a submit that repeats the key with the first submit's run, and
// refuses the key with another object or other arguments (ErrInvalidArgument, status 422).
// With a key, a submit whose connection fails before the reply is sent again with the same
// key (under the client's Reconnect policy); without one it is never sent twice.
func WithIdempotencyKey(key string) SubmitOption {
	return func(o *submitOptions) { o.IdempotencyKey = &key }
}

// WithDeadline sends `Longrun-Deadline`: a run still going d after the submit is stopped and
// ends canceled with {"reason": "deadline"}, queued or running. More than the server's
// maximum (7 days by default), zero or negative is ErrInvalidArgument.
func WithDeadline(d time.Duration) SubmitOption {
	return func(o *submitOptions) { o.DeadlineMs = fms(d) }
}

// WithWait sends `Prefer: wait=N` (1 to 60 s, rounded up): the server holds the submit until
// the run ends, up to d, so the run Submit returns may already be over. Call asks for its
// own wait.
func WithWait(d time.Duration) SubmitOption {
	return func(o *submitOptions) { o.WaitMs = fms(d) }
}

// HookEvents says which events a response hook is sent (`Longrun-Hook-Events`).
type HookEvents string

const (
	// HookEnded sends the run's end only (the server's default).
	HookEnded HookEvents = "ended"
	// HookAll sends every event (coalesced by the server), then the end.
	HookAll HookEvents = "all"
)

// WithHook sends `Longrun-Hook: url`: the server pushes the run's outcome there, an
// http(s):// URL (a signed POST: check it with VerifyWebhook) or unix:///path/to.sock. A
// URL the server refuses is ErrInvalidArgument (400 invalid-hook, 422 hook-refused).
func WithHook(url string) SubmitOption {
	return func(o *submitOptions) { o.Hook = &url }
}

// WithHookEvents sends `Longrun-Hook-Events` (with WithHook).
func WithHookEvents(events HookEvents) SubmitOption {
	return func(o *submitOptions) { e := string(events); o.HookEvents = &e }
}

// submitJSON is the arguments' and options' JSON of a Submit or Call.
func submitJSON(args any, opts []SubmitOption) (body, options []byte, err error) {
	var so submitOptions
	for _, opt := range opts {
		opt(&so)
	}
	if args != nil {
		if body, err = json.Marshal(args); err != nil {
			return nil, nil, &Error{Kind: KindInvalidArgument, Message: "invalid argument: the arguments do not encode to JSON: " + err.Error()}
		}
	}
	if options, err = json.Marshal(so); err != nil {
		return nil, nil, &Error{Kind: KindInvalidArgument, Message: "invalid argument: " + err.Error()}
	}
	return body, options, nil
}

// Submit starts a run of object with args: anything that encodes (encoding/json) to a JSON
// object, or nil for none.
func (c *Client) Submit(ctx context.Context, object string, args any, opts ...SubmitOption) (Run, error) {
	body, options, err := submitJSON(args, opts)
	if err != nil {
		return Run{}, err
	}
	var run Run
	err = c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		op, on := cstr(object)
		ap, an := cbytes(body)
		sp, sn := cbytes(options)
		var r *C.longrun_run
		code := C.longrun_client_submit_with_options(h, op, on, ap, an, sp, sn, intr, &r, cerr)
		if code == C.LONGRUN_CODE_OK {
			run = goRun(r)
		}
		return code
	})
	return run, err
}

// Call submits a run and returns its success value, in one exchange when the run ends within
// the server's wait (`Prefer: wait`), else following it as Wait does. The same outcomes as
// Wait: *RunFailedError, ErrCanceled (e.g. past WithDeadline), ErrTimeout when ctx's
// deadline passes (the run goes on).
func (c *Client) Call(ctx context.Context, object string, args any, opts ...SubmitOption) (json.RawMessage, error) {
	body, options, err := submitJSON(args, opts)
	if err != nil {
		return nil, err
	}
	var value json.RawMessage
	err = c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		op, on := cstr(object)
		ap, an := cbytes(body)
		sp, sn := cbytes(options)
		var buf C.longrun_buf
		code := C.longrun_client_call(h, op, on, ap, an, sp, sn, -1, intr, &buf, cerr)
		if code == C.LONGRUN_CODE_OK {
			value = takeBuf(&buf)
		}
		return code
	})
	return value, err
}

// Cancel asks the server to cancel the run. A run that had already ended (success or error)
// is not an error: the outcome says so.
func (c *Client) Cancel(ctx context.Context, run Run) (CancelOutcome, error) {
	var out C.longrun_cancel_outcome
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		return C.longrun_client_cancel(h, r, intr, &out, cerr)
	})
	if err != nil {
		return CancelOutcome{}, err
	}
	return CancelOutcome{AlreadyEnded: bool(out.already_ended), State: goState(out.state)}, nil
}

// Status reports the run's state and newest event id; a run that does not exist is
// ErrNotFound.
func (c *Client) Status(ctx context.Context, run Run) (RunStatus, error) {
	var out C.longrun_run_status
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		return C.longrun_client_status(h, r, intr, &out, cerr)
	})
	if err != nil {
		return RunStatus{}, err
	}
	return RunStatus{State: goState(out.state), LastEventID: uint64(out.last_event_id)}, nil
}

// Exists reports whether the run exists; a run whose retention has passed is ErrGone.
func (c *Client) Exists(ctx context.Context, run Run) (bool, error) {
	var out C.bool
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		return C.longrun_client_exists(h, r, intr, &out, cerr)
	})
	return bool(out), err
}

// Wait follows the run to its end and returns its success value. A run that ended with an
// error is a *RunFailedError (ErrRunFailed) carrying the event's value; a canceled run is an
// *Error matching ErrCanceled. When ctx's deadline passes, the error matches ErrTimeout (and
// context.DeadlineExceeded); the run itself goes on.
func (c *Client) Wait(ctx context.Context, run Run) (json.RawMessage, error) {
	var value json.RawMessage
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		var buf C.longrun_buf
		code := C.longrun_client_wait(h, r, -1, intr, &buf, cerr)
		if code == C.LONGRUN_CODE_OK {
			value = takeBuf(&buf)
		}
		return code
	})
	return value, err
}

// FollowOption tunes one follow.
type FollowOption func(*followOptions)

type followOptions struct {
	since     *uint64 // nil: from event 0
	transport Transport
}

// Since starts the follow after the event with this id (the cursor: the last id already seen).
// Every uint64 is a cursor, passed to the core as it is.
func Since(cursor uint64) FollowOption {
	return func(o *followOptions) { o.since = &cursor }
}

// Via overrides the client's transport for this follow.
func Via(t Transport) FollowOption { return func(o *followOptions) { o.transport = t } }

// batchMax is how many events at most cross from Rust to Go in one call.
const batchMax = 1024

// Follow yields the run's events from the first, in order, each once, until the terminal
// event; it reconnects and resumes by itself. An error is yielded once, as the last item.
// Cancelling ctx stops it promptly (yielding the context's error). Stopping the loop early
// closes the follow.
func (c *Client) Follow(ctx context.Context, run Run, opts ...FollowOption) iter.Seq2[Event, error] {
	var o followOptions
	for _, opt := range opts {
		opt(&o)
	}
	return func(yield func(Event, error) bool) {
		events, err := c.follow(ctx, run, o)
		if err != nil {
			yield(Event{}, err)
			return
		}
		defer C.longrun_events_free(events)
		intr, release := interruptible(ctx)
		defer release()
		var batch C.longrun_batch
		defer C.longrun_batch_free(&batch)
		for {
			var cerr *C.longrun_error
			if code := C.longrun_events_next(events, batchMax, -1, intr, &batch, &cerr); code != C.LONGRUN_CODE_OK {
				yield(Event{}, failure(ctx, code, cerr))
				return
			}
			if batch.next != C.LONGRUN_NEXT_EVENTS {
				return // the end (no timeout was given, so never pending)
			}
			// One copy of every value in the batch; each event's Value is a slice of it.
			values := C.GoBytes(unsafe.Pointer(batch.values), C.int(batch.values_len))
			for _, ev := range unsafe.Slice(batch.events, batch.len) {
				end := ev.value_offset + ev.value_len
				e := Event{ID: uint64(ev.id), State: goState(ev.state), Value: values[ev.value_offset:end:end]}
				if !yield(e, nil) {
					return
				}
			}
			C.longrun_batch_free(&batch)
		}
	}
}

// FollowFrom follows the run from after the event with id cursor (the last one already
// seen): FollowFrom(ctx, run, n) is Follow(ctx, run, Since(n)).
func (c *Client) FollowFrom(ctx context.Context, run Run, cursor uint64, opts ...FollowOption) iter.Seq2[Event, error] {
	return c.Follow(ctx, run, append([]FollowOption{Since(cursor)}, opts...)...)
}

func (c *Client) follow(ctx context.Context, run Run, o followOptions) (*C.longrun_events, error) {
	var events *C.longrun_events
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, _ *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		var since *C.uint64_t
		if o.since != nil {
			cursor := C.uint64_t(*o.since)
			since = &cursor
		}
		return C.longrun_client_follow(h, r, since, C.int32_t(o.transport), &events, cerr)
	})
	return events, err
}
