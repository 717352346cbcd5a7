//! Bad input at the boundary is an error code, never a crash: NULL pointers, invalid UTF-8,
//! malformed JSON, unusable options. (A panic crossing `extern "C"` aborts the process, so
//! this test binary would die rather than fail.) No server is needed: every call here fails
//! before anything is sent, or against a closed port.

#![allow(unsafe_code)] // this test calls the C ABI directly

use std::ptr::{null, null_mut};

use longrun_c::*;

const BAD_UTF8: &[u8] = b"http://127.0.0.1:1/\xff\xfe";

/// Take the error out of `err`: its code and message, then free it.
fn take(err: &mut *mut longrun_error) -> (longrun_code, String) {
    let mut len = 0;
    // SAFETY: `*err` is NULL or a live error from the library; freed once here.
    unsafe {
        let code = longrun_error_code(*err);
        let msg = longrun_error_message(*err, &mut len);
        let msg = if msg.is_null() {
            String::new()
        } else {
            String::from_utf8(std::slice::from_raw_parts(msg, len).to_vec()).unwrap()
        };
        longrun_error_free(*err);
        *err = null_mut();
        (code, msg)
    }
}

fn client() -> *mut longrun_client {
    let url = "http://127.0.0.1:1";
    let mut client = null_mut();
    // SAFETY: valid pointers and lengths.
    let code =
        unsafe { longrun_client_new(url.as_ptr(), url.len(), null(), 0, &mut client, null_mut()) };
    assert_eq!(code, longrun_code::Ok);
    client
}

#[test]
fn null_pointers_are_errors() {
    let mut err = null_mut();
    let c = client();
    // SAFETY: every pointer is NULL or valid; NULL where the test says so.
    unsafe {
        let code = longrun_client_new(null(), 5, null(), 0, null_mut(), &mut err);
        assert_eq!(code, longrun_code::NullArgument);
        assert!(take(&mut err).1.contains("url"));

        let url = "http://h";
        let code = longrun_client_new(url.as_ptr(), url.len(), null(), 0, null_mut(), &mut err);
        assert_eq!(take(&mut err).0, longrun_code::NullArgument);
        assert_eq!(code, longrun_code::NullArgument);

        let mut run = null_mut();
        let code = longrun_client_submit(
            null(),
            b"echo".as_ptr(),
            4,
            null(),
            0,
            null(),
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::NullArgument);
        assert!(run.is_null(), "out-parameters are written on success only");
        take(&mut err);

        let mut outcome = longrun_cancel_outcome {
            already_ended: false,
            state: longrun_state::Queued,
        };
        assert_eq!(
            longrun_client_cancel(c, null(), null(), &mut outcome, &mut err),
            longrun_code::NullArgument
        );
        take(&mut err);
        let mut status = longrun_run_status {
            state: longrun_state::Queued,
            last_event_id: 0,
        };
        assert_eq!(
            longrun_client_status(c, null(), null(), &mut status, null_mut()),
            longrun_code::NullArgument
        );
        let mut exists = false;
        assert_eq!(
            longrun_client_exists(null(), null(), null(), &mut exists, null_mut()),
            longrun_code::NullArgument
        );
        let mut buf = longrun_buf {
            ptr: null_mut(),
            len: 0,
        };
        assert_eq!(
            longrun_client_wait(c, null(), -1, null(), &mut buf, null_mut()),
            longrun_code::NullArgument
        );
        let mut events = null_mut();
        assert_eq!(
            longrun_client_follow(
                c,
                null(),
                null(),
                longrun_transport::Default as i32,
                &mut events,
                null_mut()
            ),
            longrun_code::NullArgument
        );
        let mut batch = std::mem::zeroed::<longrun_batch>();
        assert_eq!(
            longrun_events_next(null(), 1, 0, null(), &mut batch, &mut err),
            longrun_code::NullArgument
        );
        take(&mut err);
        assert_eq!(
            longrun_run_from_url(null(), 3, &mut run, null_mut()),
            longrun_code::NullArgument
        );
        assert_eq!(
            longrun_client_run(c, null(), 1, null(), 0, &mut run, null_mut()),
            longrun_code::NullArgument
        );

        // Accessors and frees take NULL.
        let mut len = 7;
        assert!(longrun_run_url(null(), &mut len).is_null());
        assert_eq!(len, 0);
        assert!(longrun_run_object(null(), null_mut()).is_null());
        assert!(longrun_run_id(null(), null_mut()).is_null());
        assert!(longrun_error_message(null(), null_mut()).is_null());
        assert!(longrun_error_problem(null(), null_mut()).is_null());
        assert!(longrun_error_value(null(), null_mut()).is_null());
        assert_eq!(longrun_error_status(null()), 0);
        assert_eq!(longrun_error_code(null()), longrun_code::Ok);
        longrun_interrupt_trigger(null());
        longrun_client_free(null_mut());
        longrun_run_free(null_mut());
        longrun_events_free(null_mut());
        longrun_error_free(null_mut());
        longrun_interrupt_free(null_mut());
        longrun_buf_free(null_mut());
        longrun_batch_free(null_mut());
        longrun_buf_free(&mut buf);
        longrun_batch_free(&mut batch);
        longrun_client_free(c);
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut err = null_mut();
    let c = client();
    let mut out_client = null_mut();
    let mut run = null_mut();
    // SAFETY: valid pointers and lengths.
    unsafe {
        let code = longrun_client_new(
            BAD_UTF8.as_ptr(),
            BAD_UTF8.len(),
            null(),
            0,
            &mut out_client,
            &mut err,
        );
        assert_eq!(code, longrun_code::InvalidUtf8);
        assert!(take(&mut err).1.contains("UTF-8"));
        let code = longrun_run_from_url(BAD_UTF8.as_ptr(), BAD_UTF8.len(), &mut run, &mut err);
        assert_eq!(
            (code, take(&mut err).0),
            (longrun_code::InvalidUtf8, longrun_code::InvalidUtf8)
        );
        let bad = b"ech\xc3";
        let code = longrun_client_submit(
            c,
            bad.as_ptr(),
            bad.len(),
            null(),
            0,
            null(),
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::InvalidUtf8);
        take(&mut err);
        let args = b"{\"a\": \"\xff\"}";
        let code = longrun_client_submit(
            c,
            b"echo".as_ptr(),
            4,
            args.as_ptr(),
            args.len(),
            null(),
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::InvalidUtf8);
        take(&mut err);
        longrun_client_free(c);
    }
}

#[test]
fn malformed_json_and_bad_values_are_invalid_arguments() {
    let mut err = null_mut();
    let c = client();
    let mut run = null_mut();
    let url = "http://127.0.0.1:1";
    // SAFETY: valid pointers and lengths.
    unsafe {
        for args in ["{", "[1, 2]", "nul", "\"text\"", "{\"a\": 1} trailing"] {
            let code = longrun_client_submit(
                c,
                b"echo".as_ptr(),
                4,
                args.as_ptr(),
                args.len(),
                null(),
                &mut run,
                &mut err,
            );
            assert_eq!(code, longrun_code::InvalidArgument, "{args}");
            assert!(!take(&mut err).1.is_empty());
        }
        for options in [
            "{",
            "{\"nope\": 1}",
            "{\"transport\": \"carrier pigeon\"}",
            "{\"timeout_ms\": -1}",
            "[]",
        ] {
            let mut out_client = null_mut();
            let code = longrun_client_new(
                url.as_ptr(),
                url.len(),
                options.as_ptr(),
                options.len(),
                &mut out_client,
                &mut err,
            );
            assert_eq!(code, longrun_code::InvalidArgument, "{options}");
            assert!(out_client.is_null());
            take(&mut err);
        }
        for bad in ["", "not a url", "ftp://h/", "http://h/x?q=1"] {
            let mut out_client = null_mut();
            let code = longrun_client_new(
                bad.as_ptr(),
                bad.len(),
                null(),
                0,
                &mut out_client,
                &mut err,
            );
            assert_eq!(code, longrun_code::InvalidArgument, "{bad:?}");
            take(&mut err);
        }
        for bad in ["", "http://h/count", "http://h/count/not-an-id"] {
            let code = longrun_run_from_url(bad.as_ptr(), bad.len(), &mut run, &mut err);
            assert_eq!(code, longrun_code::InvalidArgument, "{bad:?}");
            take(&mut err);
        }
        let code = longrun_client_run(
            c,
            b"Bad Name".as_ptr(),
            8,
            b"x".as_ptr(),
            1,
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::InvalidArgument);
        take(&mut err);
        // A server that is not there: a transport error, reported (not retried forever).
        let code = longrun_client_submit(
            c,
            b"echo".as_ptr(),
            4,
            null(),
            0,
            null(),
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::Transport);
        take(&mut err);
        longrun_client_free(c);
    }
}

#[test]
fn a_triggered_interrupt_stops_calls_at_once() {
    let c = client();
    let mut err = null_mut();
    let mut run = null_mut();
    // SAFETY: valid pointers and lengths.
    unsafe {
        let interrupt = longrun_interrupt_new();
        longrun_interrupt_trigger(interrupt);
        longrun_interrupt_trigger(interrupt);
        let code = longrun_client_submit(
            c,
            b"echo".as_ptr(),
            4,
            null(),
            0,
            interrupt,
            &mut run,
            &mut err,
        );
        assert_eq!(code, longrun_code::Interrupted);
        assert_eq!(take(&mut err).0, longrun_code::Interrupted);
        longrun_interrupt_free(interrupt);
        longrun_client_free(c);
    }
}

#[test]
fn code_and_state_names() {
    // SAFETY: static NUL-terminated strings.
    unsafe {
        let name = |p| std::ffi::CStr::from_ptr(p).to_str().unwrap();
        assert_eq!(name(longrun_code_name(longrun_code::Ok as i32)), "Ok");
        assert_eq!(
            name(longrun_code_name(longrun_code::RunFailed as i32)),
            "RunFailed"
        );
        assert_eq!(
            name(longrun_code_name(longrun_code::Interrupted as i32)),
            "Interrupted"
        );
        assert_eq!(
            name(longrun_state_name(longrun_state::Canceled as i32)),
            "canceled"
        );
        // Values that are no code or state are safe to pass.
        assert_eq!(name(longrun_code_name(-7)), "Unknown");
        assert_eq!(name(longrun_code_name(42)), "Unknown");
        assert_eq!(name(longrun_state_name(99)), "unknown");
    }
}

#[test]
fn a_transport_that_is_none_is_an_invalid_argument() {
    let c = client();
    let mut err = null_mut();
    let url = "http://127.0.0.1:1/echo/00000000-0000-4000-8000-000000000000";
    // SAFETY: valid pointers and lengths; handles freed once.
    unsafe {
        let mut run = null_mut();
        let code = longrun_run_from_url(url.as_ptr(), url.len(), &mut run, null_mut());
        assert_eq!(code, longrun_code::Ok);
        let mut events = null_mut();
        let code = longrun_client_follow(c, run, null(), 7, &mut events, &mut err);
        assert_eq!(code, longrun_code::InvalidArgument);
        assert!(events.is_null());
        take(&mut err);
        longrun_run_free(run);
        longrun_client_free(c);
    }
}

/// Submit options, streams and webhooks: bad input is a code, before anything is sent.
#[test]
fn submit_options_streams_and_webhooks_refuse_bad_input() {
    let mut err = null_mut();
    let c = client();
    // SAFETY: every pointer is NULL or valid; NULL where the test says so.
    unsafe {
        let mut run = null_mut();
        for options in [
            &b"{\"bogus\": 1}"[..],
            b"{\"deadline_ms\": -1}",
            b"[",
            b"\"x\"",
        ] {
            let code = longrun_client_submit_with_options(
                c,
                b"echo".as_ptr(),
                4,
                null(),
                0,
                options.as_ptr(),
                options.len(),
                null(),
                &mut run,
                &mut err,
            );
            assert_eq!(code, longrun_code::InvalidArgument);
            take(&mut err);
        }
        let mut value = longrun_buf {
            ptr: null_mut(),
            len: 0,
        };
        let code = longrun_client_call(
            c,
            b"echo".as_ptr(),
            4,
            null(),
            0,
            b"{\"wait_ms\": 0}".as_ptr(),
            14,
            -1,
            null(),
            &mut value,
            &mut err,
        );
        // Its options are read (a call ignores wait_ms: it asks for its own), and then the
        // closed port fails it.
        assert_eq!(code, longrun_code::Transport);
        take(&mut err);
        let mut stream = null_mut();
        let code = longrun_client_stream(c, null(), &mut stream, &mut err);
        assert_eq!(code, longrun_code::NullArgument);
        take(&mut err);
        let (mut next, mut chunk) = (
            longrun_next::Pending,
            longrun_buf {
                ptr: null_mut(),
                len: 0,
            },
        );
        let code = longrun_stream_next(null(), -1, null(), &mut next, &mut chunk, &mut err);
        assert_eq!(code, longrun_code::NullArgument);
        take(&mut err);
        longrun_stream_free(null_mut());

        let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let verify = |headers: &[u8], body: &[u8], err: &mut *mut longrun_error| {
            longrun_verify_webhook(
                secret.as_ptr(),
                secret.len(),
                headers.as_ptr(),
                headers.len(),
                body.as_ptr(),
                body.len(),
                -1,
                err,
            )
        };
        assert_eq!(verify(b"{", b"{}", &mut err), longrun_code::InvalidArgument);
        take(&mut err);
        assert_eq!(
            verify(b"{}", b"{}", &mut err),
            longrun_code::WebhookRejected
        );
        assert!(take(&mut err).1.contains("webhook-id"));
        let code = longrun_verify_webhook(null(), 3, null(), 0, null(), 0, -1, &mut err);
        assert_eq!(code, longrun_code::NullArgument);
        take(&mut err);
        longrun_client_free(c);
    }
}
