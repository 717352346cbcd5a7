package longrun

// #include "longrun.h"
import "C"

import (
	"context"
	"encoding/json"
	"iter"
	"sync"
	"unsafe"
)

// Publication is one publication of a topic (spec §28.5).
type Publication struct {
	// Topic is the topic it was published to (for a pattern, the one that matched).
	Topic string
	// Offset is dense per topic: a jump means publications left the server's history before
	// a lost subscription came back.
	Offset uint64
	Data   json.RawMessage
}

// SubscribeOption sets up one Subscribe.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	since *uint64 // nil: from now
}

// FromOffset replays one topic from this offset (what the server still holds), then goes on
// live. A pattern has no offsets: with one it is ErrInvalidArgument.
func FromOffset(offset uint64) SubscribeOption {
	return func(o *subscribeOptions) { o.since = &offset }
}

// Subscription is a subscription to a topic or pattern, held by the server from the moment
// Subscribe returned. Read it with Publications; Close unsubscribes.
type Subscription struct {
	// Offset is the topic's next offset when it subscribed (0 for a pattern).
	Offset uint64
	// Recovered is false when FromOffset asked for publications the server no longer holds.
	Recovered bool

	mu     sync.Mutex // held while a Publications loop reads; Close takes it to free the handle
	handle *C.longrun_subscription
	// Done once Close has begun: it stops a loop blocked on the next publication.
	closing      context.Context
	startClosing context.CancelFunc
}

// Subscribe subscribes to topic (a dotted name like "chat.room", or a pattern with * and ?,
// like "chat.*") over the client's WebSocket, whatever its transport, and returns once the
// server holds the subscription: nothing published after that is missed. The feeds "_runs"
// and "_runs.OBJECT" announce every run created, started and ended. A bad topic is ErrInvalidArgument.
// The subscription does not need the Client to stay open.
func (c *Client) Subscribe(ctx context.Context, topic string, opts ...SubscribeOption) (*Subscription, error) {
	var o subscribeOptions
	for _, opt := range opts {
		opt(&o)
	}
	s := &Subscription{}
	err := c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		tp, tn := cstr(topic)
		var since *C.uint64_t
		if o.since != nil {
			offset := C.uint64_t(*o.since)
			since = &offset
		}
		var offset C.uint64_t
		var recovered C.bool
		code := C.longrun_client_subscribe(h, tp, tn, since, intr, &s.handle, &offset, &recovered, cerr)
		s.Offset, s.Recovered = uint64(offset), bool(recovered)
		return code
	})
	if err != nil {
		return nil, err
	}
	s.closing, s.startClosing = context.WithCancel(context.Background())
	return s, nil
}

// Publications yields the subscription's publications in order, each once, resumed by the
// core from the next offset after the connection is lost. It ends when the subscription is
// closed; an error is yielded once, as the last item. Cancelling ctx stops it (yielding the
// context's error) and leaves the subscription open for a later loop: nothing is lost.
func (s *Subscription) Publications(ctx context.Context) iter.Seq2[Publication, error] {
	return func(yield func(Publication, error) bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.handle == nil {
			return
		}
		loopCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(s.closing, cancel)()
		intr, release := interruptible(loopCtx)
		defer release()
		for {
			var next C.longrun_next
			var topic, data C.longrun_buf
			var offset C.uint64_t
			var cerr *C.longrun_error
			code := C.longrun_subscription_next(s.handle, -1, intr, &next, &topic, &offset, &data, &cerr)
			if code != C.LONGRUN_CODE_OK {
				if code == C.LONGRUN_CODE_INTERRUPTED && ctx.Err() == nil {
					C.longrun_error_free(cerr)
					return // closed
				}
				yield(Publication{}, failure(ctx, code, cerr))
				return
			}
			if next != C.LONGRUN_NEXT_EVENTS {
				return // over (no timeout was given, so never pending)
			}
			p := Publication{
				Topic:  C.GoStringN((*C.char)(unsafe.Pointer(topic.ptr)), C.int(topic.len)),
				Offset: uint64(offset),
				Data:   C.GoBytes(unsafe.Pointer(data.ptr), C.int(data.len)),
			}
			C.longrun_buf_free(&topic)
			C.longrun_buf_free(&data)
			if !yield(p, nil) {
				return
			}
		}
	}
}

// Close unsubscribes; a Publications loop in progress ends. Close may be called more than once.
func (s *Subscription) Close() error {
	s.startClosing()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handle != nil {
		C.longrun_subscription_free(s.handle)
		s.handle = nil
	}
	return nil
}

// Publish publishes data (marshalled to JSON) to topic and returns its offset. A topic
// starting with "_" is the server's: ErrInvalidArgument.
func (c *Client) Publish(ctx context.Context, topic string, data any) (uint64, error) {
	body, err := json.Marshal(data)
	if err != nil {
		return 0, &Error{Kind: KindInvalidArgument, Message: "invalid argument: " + err.Error()}
	}
	var offset C.uint64_t
	err = c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		tp, tn := cstr(topic)
		dp, dn := cbytes(body)
		return C.longrun_client_publish(h, tp, tn, dp, dn, intr, &offset, cerr)
	})
	return uint64(offset), err
}
