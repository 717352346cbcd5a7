package longrun

// The cgo layer: how the Go package reaches the C ABI of the Rust client core
// (bindings/c, header bindings/c/include/longrun.h). The static library is built by
// `cargo xtask go` (or `cargo xtask test`) into go/lib/liblongrun_c.a; the -l flags after it
// are what the Rust standard library needs on Linux (`--print native-static-libs`). The
// packaged module (`cargo xtask dist`) carries the header in include/ and the library in lib/.

/*
#cgo CFLAGS: -I${SRCDIR}/include -I${SRCDIR}/../bindings/c/include
#cgo LDFLAGS: -L${SRCDIR}/lib -llongrun_c -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
#include <stdlib.h>
#include "longrun.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"unsafe"
)

// cstr lends a Go string to C for the length of one call (C reads it, never keeps it).
func cstr(s string) (*C.uint8_t, C.size_t) {
	return (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(s))), C.size_t(len(s))
}

// cbytes lends a byte slice to C for the length of one call.
func cbytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// takeBuf copies a buffer the library filled and frees it.
func takeBuf(buf *C.longrun_buf) []byte {
	b := C.GoBytes(unsafe.Pointer(buf.ptr), C.int(buf.len))
	C.longrun_buf_free(buf)
	return b
}

// gostring copies bytes borrowed from C.
func gostring(p *C.uint8_t, n C.size_t) string {
	if p == nil || n == 0 {
		return ""
	}
	return C.GoStringN((*C.char)(unsafe.Pointer(p)), C.int(n))
}

func gojson(p *C.uint8_t, n C.size_t) json.RawMessage {
	if p == nil {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n))
}

// interruptible gives a blocking call an interrupt that fires when ctx is done, and a
// function to release it after the call. A context that can never be done needs none.
func interruptible(ctx context.Context) (*C.longrun_interrupt, func()) {
	if ctx.Done() == nil {
		return nil, func() {}
	}
	intr := C.longrun_interrupt_new()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		C.longrun_interrupt_trigger(intr)
		close(fired)
	})
	return intr, func() {
		if !stop() {
			<-fired // the trigger is running or ran: let it finish before freeing
		}
		C.longrun_interrupt_free(intr)
	}
}

// failure turns a failed call's code and error into a Go error (see errors.go), and frees the
// C error.
func failure(ctx context.Context, code C.longrun_code, cerr *C.longrun_error) error {
	defer C.longrun_error_free(cerr)
	if code == C.LONGRUN_CODE_INTERRUPTED {
		return contextError(ctx)
	}
	var n C.size_t
	e := &Error{Kind: kindOf(code)}
	e.Message = gostring(C.longrun_error_message(cerr, &n), n)
	e.Status = int(C.longrun_error_status(cerr))
	e.Problem = gojson(C.longrun_error_problem(cerr, &n), n)
	e.Value = gojson(C.longrun_error_value(cerr, &n), n)
	return wrap(e)
}

// cRun makes the C handle of a run (freed by the caller with C.longrun_run_free).
func cRun(run Run) (*C.longrun_run, error) {
	if run.URL == "" {
		return nil, &Error{Kind: KindInvalidArgument, Message: "invalid argument: the run has no URL (use Submit, RunFromURL or Client.Run)"}
	}
	p, n := cstr(run.URL)
	var r *C.longrun_run
	var cerr *C.longrun_error
	if code := C.longrun_run_from_url(p, n, &r, &cerr); code != C.LONGRUN_CODE_OK {
		return nil, failure(context.Background(), code, cerr)
	}
	return r, nil
}

// goRun copies a C run into a Run, and frees it.
func goRun(r *C.longrun_run) Run {
	defer C.longrun_run_free(r)
	var n C.size_t
	run := Run{}
	run.Object = gostring(C.longrun_run_object(r, &n), n)
	run.ID = gostring(C.longrun_run_id(r, &n), n)
	run.URL = gostring(C.longrun_run_url(r, &n), n)
	return run
}

var states = [...]State{
	C.LONGRUN_STATE_QUEUED:   StateQueued,
	C.LONGRUN_STATE_RUNNING:  StateRunning,
	C.LONGRUN_STATE_SUCCESS:  StateSuccess,
	C.LONGRUN_STATE_ERROR:    StateError,
	C.LONGRUN_STATE_CANCELED: StateCanceled,
}

func goState(s C.longrun_state) State {
	if int(s) < len(states) {
		return states[s]
	}
	return State("unknown")
}
