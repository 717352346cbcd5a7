package longrun

// #include "longrun.h"
import "C"

import (
	"context"
	"encoding/json"
	"errors"
)

// Kind names what went wrong, with the names of the Rust core's ErrorKind (the names every
// SDK of longrun and the conformance scenarios use).
type Kind string

const (
	KindNotFound        Kind = "NotFound"        // the object or run does not exist (404)
	KindGone            Kind = "Gone"            // the run existed but its retention has passed (410)
	KindCanceled        Kind = "Canceled"        // the run ended canceled (Wait)
	KindRunFailed       Kind = "RunFailed"       // the run ended with an error (Wait)
	KindTimeout         Kind = "Timeout"         // a client-side time limit passed; the run goes on
	KindProtocol        Kind = "Protocol"        // the server answered something longrun/1 does not allow
	KindTransport       Kind = "Transport"       // the network failed and retrying did not help
	KindInvalidArgument Kind = "InvalidArgument" // refused as invalid (4xx), or a bad argument to the client
	KindServer          Kind = "Server"          // the server failed (5xx)
	KindUnauthorized    Kind = "Unauthorized"    // no token, or one the server does not know (401)
	KindForbidden       Kind = "Forbidden"       // the token does not allow this (403)
	KindWebhookRejected Kind = "WebhookRejected" // a hook delivery failed VerifyWebhook
	// KindInternal is a bug in this package or the library under it (a caught panic, a NULL
	// handed to C); it never comes from the server.
	KindInternal Kind = "Internal"
)

// The one table from the C ABI's codes (bindings/c: one per Rust ErrorKind, plus ABI-level
// codes) to kinds. LONGRUN_CODE_INTERRUPTED is not here: it means ctx was done, and the call
// returns the context's error (see contextError).
var kinds = map[C.longrun_code]Kind{
	C.LONGRUN_CODE_NOT_FOUND:        KindNotFound,
	C.LONGRUN_CODE_GONE:             KindGone,
	C.LONGRUN_CODE_CANCELED:         KindCanceled,
	C.LONGRUN_CODE_RUN_FAILED:       KindRunFailed,
	C.LONGRUN_CODE_TIMEOUT:          KindTimeout,
	C.LONGRUN_CODE_PROTOCOL:         KindProtocol,
	C.LONGRUN_CODE_TRANSPORT:        KindTransport,
	C.LONGRUN_CODE_INVALID_ARGUMENT: KindInvalidArgument,
	C.LONGRUN_CODE_SERVER:           KindServer,
	C.LONGRUN_CODE_UNAUTHORIZED:     KindUnauthorized,
	C.LONGRUN_CODE_FORBIDDEN:        KindForbidden,
	C.LONGRUN_CODE_WEBHOOK_REJECTED: KindWebhookRejected,
	C.LONGRUN_CODE_INVALID_UTF8:     KindInvalidArgument, // a Go string that is not UTF-8
	C.LONGRUN_CODE_NULL_ARGUMENT:    KindInternal,
	C.LONGRUN_CODE_PANIC:            KindInternal,
}

// coreKinds is the core's list of error kinds (longrun::ErrorKind::ALL), for the test that
// the table above maps each of them, and nothing else.
func coreKinds() []Kind {
	var names []Kind
	for i := 0; ; i++ {
		name := C.longrun_error_kind_name(C.size_t(i))
		if name == nil {
			return names
		}
		names = append(names, Kind(C.GoString(name)))
	}
}

// codeName is the C ABI's name of a code: the core's kind name for a kind's code.
func codeName(code C.longrun_code) string { return C.GoString(C.longrun_code_name(C.int32_t(code))) }

func kindOf(code C.longrun_code) Kind {
	if k, ok := kinds[code]; ok {
		return k
	}
	return KindInternal
}

// Sentinel errors, one per kind, for errors.Is:
//
//	if errors.Is(err, longrun.ErrNotFound) { … }
//
// Every error this package returns for a failed call is an *Error (or a *RunFailedError
// wrapping one) that matches the sentinel of its kind; use errors.As for the details.
var (
	ErrNotFound        error = sentinel(KindNotFound)
	ErrGone            error = sentinel(KindGone)
	ErrCanceled        error = sentinel(KindCanceled)
	ErrRunFailed       error = sentinel(KindRunFailed)
	ErrTimeout         error = sentinel(KindTimeout)
	ErrProtocol        error = sentinel(KindProtocol)
	ErrTransport       error = sentinel(KindTransport)
	ErrInvalidArgument error = sentinel(KindInvalidArgument)
	ErrServer          error = sentinel(KindServer)
	ErrUnauthorized    error = sentinel(KindUnauthorized)
	ErrForbidden       error = sentinel(KindForbidden)
	ErrWebhookRejected error = sentinel(KindWebhookRejected)
	ErrInternal        error = sentinel(KindInternal)
)

type sentinel Kind

func (s sentinel) Error() string { return "longrun: " + string(s) }

// Error is a failed call: its kind, the core's message, and what came with it.
type Error struct {
	Kind    Kind
	Message string
	// Status is the HTTP status behind the error, or 0.
	Status int
	// Problem is the server's problem details (RFC 9457 JSON), when it sent one.
	Problem json.RawMessage
	// Value is the terminal event's value, for KindRunFailed and KindCanceled.
	Value json.RawMessage
	cause error
}

func (e *Error) Error() string { return "longrun: " + e.Message }

// Is reports whether target is the sentinel of e's kind.
func (e *Error) Is(target error) bool {
	s, ok := target.(sentinel)
	return ok && Kind(s) == e.Kind
}

// Unwrap gives the context's error for a Timeout that was ctx's deadline.
func (e *Error) Unwrap() error { return e.cause }

// RunFailedError is the error of a run that ended with an `error` event (from Wait). It
// matches ErrRunFailed and unwraps to the *Error.
type RunFailedError struct {
	// Value is the `error` event's value (e.g. {"message": "boom"}).
	Value json.RawMessage
	Err   *Error
}

func (e *RunFailedError) Error() string { return e.Err.Error() }
func (e *RunFailedError) Unwrap() error { return e.Err }

func wrap(e *Error) error {
	if e.Kind == KindRunFailed {
		return &RunFailedError{Value: e.Value, Err: e}
	}
	return e
}

// contextError is what a call returns when ctx stopped it: ctx's error; when that is its
// deadline, a Timeout (a client-side time limit, like every other) that also matches
// context.DeadlineExceeded.
func contextError(ctx context.Context) error {
	err := ctx.Err()
	if err == nil {
		err = context.Canceled // interrupted without ctx being done: not from this package
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{
			Kind:    KindTimeout,
			Message: "the context's deadline passed; the run goes on (cancel it to stop it)",
			cause:   err,
		}
	}
	return err
}
