package longrun

// #include "longrun.h"
import "C"

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"
	"unsafe"
)

// Stream opens the run's byte stream (spec §27) as an io.ReadCloser: live while the run goes
// on, every byte once and in order, resumed by the core after a disconnect from the count of
// bytes received; Read returns io.EOF once the run has ended and every byte was read. A run
// without a stream is ErrNotFound (from the first Read). Cancelling ctx stops a blocked Read
// (with the context's error). Close it when done; it does not need the Client to stay open.
func (c *Client) Stream(ctx context.Context, run Run) (io.ReadCloser, error) {
	var stream *C.longrun_stream
	err := c.call(ctx, &run, func(h *C.longrun_client, r *C.longrun_run, _ *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		return C.longrun_client_stream(h, r, &stream, cerr)
	})
	if err != nil {
		return nil, err
	}
	return &byteStream{ctx: ctx, handle: stream}, nil
}

type byteStream struct {
	mu     sync.Mutex
	ctx    context.Context
	handle *C.longrun_stream // nil once closed
	rest   []byte            // what the last chunk had beyond what the last Read took
	err    error             // final: io.EOF or the stream's error
}

func (s *byteStream) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.rest) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.handle == nil {
			return 0, errClosedStream
		}
		if err := s.ctx.Err(); err != nil {
			return 0, contextError(s.ctx)
		}
		s.err = s.next()
	}
	n := copy(p, s.rest)
	s.rest = s.rest[n:]
	return n, nil
}

// next reads one chunk into rest; a non-nil error is final: io.EOF at the end, the stream's
// error, or the context's (the stream's context is done for good).
func (s *byteStream) next() error {
	intr, release := interruptible(s.ctx)
	defer release()
	var next C.longrun_next
	var buf C.longrun_buf
	var cerr *C.longrun_error
	code := C.longrun_stream_next(s.handle, -1, intr, &next, &buf, &cerr)
	if code != C.LONGRUN_CODE_OK {
		return failure(s.ctx, code, cerr)
	}
	defer C.longrun_buf_free(&buf)
	if next != C.LONGRUN_NEXT_EVENTS {
		return io.EOF // the end (no timeout was given, so never pending)
	}
	s.rest = C.GoBytes(unsafe.Pointer(buf.ptr), C.int(buf.len))
	return nil
}

var errClosedStream = &Error{Kind: KindInvalidArgument, Message: "invalid argument: the stream is closed"}

// Close releases the stream and its connection. Close may be called more than once.
func (s *byteStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handle != nil {
		C.longrun_stream_free(s.handle)
		s.handle = nil
	}
	return nil
}

// DefaultWebhookTolerance is how far a delivery's webhook-timestamp may be from now when
// VerifyWebhook is given a tolerance of 0 (Standard Webhooks' recommendation).
const DefaultWebhookTolerance = 5 * time.Minute

// VerifyWebhook checks a response hook's delivery on the receiving side: secret is the
// server's --hook-secret (whsec_…), header the request's headers, body its bytes exactly as
// received, tolerance how far webhook-timestamp may be from now (0: DefaultWebhookTolerance).
// nil means authentic. An error matching ErrWebhookRejected means a header is missing, the
// timestamp is out of the tolerance (a replay) or no signature matches (another secret, or a
// changed body): answer 4xx and ignore the delivery. A malformed secret is ErrInvalidArgument.
//
//	func hook(w http.ResponseWriter, r *http.Request) {
//		body, _ := io.ReadAll(r.Body)
//		if err := longrun.VerifyWebhook(secret, r.Header, body, 0); err != nil {
//			http.Error(w, "bad signature", http.StatusBadRequest)
//			return
//		}
//		// … act on body: {"type": "run.ended", "data": {"id": …, "state": …, "result": …}}
//	}
func VerifyWebhook(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	if header == nil {
		header = http.Header{}
	}
	headers, err := json.Marshal(header)
	if err != nil {
		return &Error{Kind: KindInvalidArgument, Message: "invalid argument: " + err.Error()}
	}
	ms := int64(-1)
	if tolerance < 0 {
		return &Error{Kind: KindInvalidArgument, Message: "invalid argument: a webhook tolerance cannot be negative"}
	}
	if tolerance > 0 {
		ms = tolerance.Milliseconds()
	}
	sp, sn := cstr(secret)
	hp, hn := cbytes(headers)
	bp, bn := cbytes(body)
	var cerr *C.longrun_error
	if code := C.longrun_verify_webhook(sp, sn, hp, hn, bp, bn, C.int64_t(ms), &cerr); code != C.LONGRUN_CODE_OK {
		return failure(context.Background(), code, cerr)
	}
	return nil
}
