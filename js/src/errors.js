// The error classes of the package and the one table that maps the Rust core's error kind
// (`longrun::ErrorKind::as_str`) to them. Both builds (napi and wasm) share this module, so
// `instanceof` works whichever build threw.

/** Base class of every error the client raises (abort aside: that rejects with the signal's reason). */
export class LongrunError extends Error {
  constructor(info) {
    super(info.message);
    this.name = new.target.name;
    /** The core's error kind, e.g. "NotFound". */
    this.kind = info.kind;
    /** The HTTP status behind the error, if any. */
    this.status = info.status ?? undefined;
    /** The server's RFC 9457 problem details, if any. */
    this.problem = info.problem ?? undefined;
  }
}

/** No such object or run (404). */
export class NotFoundError extends LongrunError {}
/** The run existed but its retention has passed (410). */
export class GoneError extends LongrunError {}
/** The run ended `error`; `value` is that event's value. */
export class RunFailedError extends LongrunError {
  constructor(info) {
    super(info);
    this.value = info.value;
  }
}
/** The run ended `canceled`; `value` is that event's value (`{reason}`). */
export class RunCanceledError extends LongrunError {
  constructor(info) {
    super(info);
    this.value = info.value;
  }
}
/** A client-side time limit passed; the run itself goes on. */
export class TimeoutError extends LongrunError {}
/** The server answered something longrun/1 does not allow. */
export class ProtocolError extends LongrunError {}
/** The network failed and reconnecting did not help. */
export class TransportError extends LongrunError {}
/** The request was refused as invalid (400, 413, 415, 422), or a bad argument was given. */
export class InvalidArgumentError extends LongrunError {}
/** The server failed or refused for its own reasons (5xx). */
export class ServerError extends LongrunError {}
/** No token, or one the server does not know (401): give the client a `token`. */
export class UnauthorizedError extends LongrunError {}
/** The token does not allow this (403): it lacks the scope for this verb or object. */
export class ForbiddenError extends LongrunError {}

/** A response hook's delivery failed `verifyWebhook`: answer 4xx and ignore it. */
export class WebhookRejectedError extends LongrunError {}

/** ErrorKind → class: the one table. */
export const errorClasses = Object.freeze({
  NotFound: NotFoundError,
  Gone: GoneError,
  RunFailed: RunFailedError,
  Canceled: RunCanceledError,
  Timeout: TimeoutError,
  Protocol: ProtocolError,
  Transport: TransportError,
  InvalidArgument: InvalidArgumentError,
  Server: ServerError,
  Unauthorized: UnauthorizedError,
  Forbidden: ForbiddenError,
  WebhookRejected: WebhookRejectedError,
});

/** The error a native failure `info` ({kind, message, status, value, problem}) stands for. */
export function toError(info) {
  const Class = errorClasses[info.kind] ?? LongrunError;
  return new Class(info);
}
