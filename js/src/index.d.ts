// Types of the `longrun` package: the same API from the napi build (Node) and the wasm build
// (browsers, bundlers, `longrun/wasm`).

export type State = "queued" | "running" | "success" | "error" | "canceled";
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** "ws": every call over one WebSocket per client (spec §28; the napi build only). */
export type Transport = "sse" | "poll" | "ws";

/** The progress convention (spec §17): from an event value with `progress` and/or `message`. */
export interface Progress {
  /** Done so far, 0..1, when the value says. */
  fraction: number | null;
  message: string | null;
}

/** One event of a run's log. Ids are dense from 0; the last event is terminal. */
export interface RunEvent {
  id: number;
  state: State;
  value: Json;
  /** With `onProgress` on the follow: present when the value follows the progress convention. */
  progress?: Progress;
}

/**
 * What `follow` returns: the run's events as an async iterator, for `for await`. Leaving the
 * loop early (or calling `return`) closes the connection.
 */
export interface Follow extends AsyncIterator<RunEvent, void, undefined> {
  [Symbol.asyncIterator](): Follow;
  next(): Promise<IteratorResult<RunEvent, void>>;
  return(value?: void): Promise<IteratorResult<RunEvent, void>>;
  throw(error?: unknown): Promise<IteratorResult<RunEvent, void>>;
}

export interface ClientOptions {
  /**
   * Sent as `Authorization: Bearer <token>`; a server with tenants needs one (else
   * `UnauthorizedError`; a token without the scope: `ForbiddenError`). Never in an error.
   */
  token?: string;
  /** Time limit of one request, in ms (default 30000). */
  timeoutMs?: number;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** Default transport of follows (default "sse", falling back to polling by itself). */
  transport?: Transport;
  pollWaitMs?: number;
  idleTimeoutMs?: number;
  sseFallbackAfterMs?: number;
  reconnect?: { maxAttempts?: number; initialDelayMs?: number; maxDelayMs?: number };
}

export interface SubmitOptions {
  /**
   * Sent as `Idempotency-Key` (1 to 255 visible ASCII characters, e.g. a UUID): a submit that
   * repeats the key gets the first one's run; with other arguments it is refused
   * (`InvalidArgumentError`, status 422). A keyed submit whose connection fails before the
   * reply is sent again with the same key; one without a key never is.
   */
  idempotencyKey?: string;
  /**
   * Sent as `Longrun-Deadline`: a run still going this many ms after the submit is stopped
   * and ends `canceled` with `{reason: "deadline"}` (queued or running).
   */
  deadlineMs?: number;
  /**
   * Sent as `Prefer: wait=N` (1 to 60 s, rounded up): the server holds the submit until the
   * run ends, up to this long, so the run returned may already be over.
   */
  waitMs?: number;
  /**
   * Sent as `Longrun-Hook`: where the server pushes the run's outcome, an `http(s)://` URL (a
   * signed POST: check it with `verifyWebhook`) or `unix:///path/to.sock`.
   */
  hook?: string;
  /** Sent as `Longrun-Hook-Events`: `"ended"` (the server's default) or `"all"`. */
  hookEvents?: HookEvents;
}

export type HookEvents = "ended" | "all";

export interface CallOptions extends Omit<SubmitOptions, "waitMs"> {
  /** Give up after this many ms with a TimeoutError; the run goes on. */
  timeoutMs?: number;
  /** Aborting stops the call (the run goes on): it throws `signal.reason`. */
  signal?: AbortSignal;
}

export interface StreamOptions {
  /** Aborting stops the stream at once: the loop throws `signal.reason`. */
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  /** Replay one topic from this offset (what the server still holds), then go on live. */
  since?: number;
  /** Aborting unsubscribes: the loop throws `signal.reason`. */
  signal?: AbortSignal;
}

/** One publication of a topic; `offset` is dense per topic. */
export interface Publication {
  /** The topic it was published to (for a pattern, the one that matched). */
  topic: string;
  offset: number;
  data: Json;
}

/** A subscription: its publications in order, and the server's ack. */
export interface Subscription extends AsyncIterableIterator<Publication> {
  /** The topic's next offset when it subscribed (0 for a pattern). */
  readonly offset: number;
  /** `false` when `since` asked for publications the server no longer holds. */
  readonly recovered: boolean;
  /** Unsubscribe (a loop over it ends). */
  close(): void;
}

export interface VerifyWebhookOptions {
  /** How far `webhook-timestamp` may be from now, in ms (default 300000). */
  toleranceMs?: number;
}

/** A delivery's headers: Node's `req.headers`, a fetch `Headers`, or `[name, value]` pairs. */
export type WebhookHeaders =
  | Record<string, string | string[] | undefined>
  | Headers
  | Iterable<[string, string]>
  | [string, string][];

/**
 * Check a response hook's delivery on the receiving side. Returns when it is authentic;
 * throws `WebhookRejectedError` (a missing header, a stale timestamp, no matching signature)
 * or `InvalidArgumentError` (a malformed secret).
 */
export declare function verifyWebhook(
  secret: string,
  headers: WebhookHeaders,
  body: Uint8Array | ArrayBuffer | string,
  options?: VerifyWebhookOptions,
): void;

export interface FollowOptions {
  /**
   * The id of the last event already seen; the follow starts after it. An integer from 0 to
   * `Number.MAX_SAFE_INTEGER`; anything else throws `InvalidArgumentError`.
   */
  since?: number;
  transport?: Transport;
  /** Aborting stops the follow at once: the loop throws `signal.reason`. */
  signal?: AbortSignal;
  /** With `signal`: also cancel the run on abort. */
  cancelOnAbort?: boolean;
  onProgress?: (progress: Progress, event: RunEvent) => void;
}

export interface WaitOptions {
  /** Give up after this many ms with a TimeoutError; the run goes on. */
  timeoutMs?: number;
  signal?: AbortSignal;
  cancelOnAbort?: boolean;
  onProgress?: (progress: Progress) => void;
}

export interface RunStatus {
  state: State;
  lastEventId: number;
}

export type CancelOutcome =
  | { outcome: "accepted" }
  | { outcome: "ended"; state: "success" | "error" };

export type RunLike = Run | string;

export interface ListRunsOptions {
  object?: string;
  /** A state, or `"active"` (queued or running) or `"ended"`. */
  state?: State | "active" | "ended";
  /** Runs per page, from 1 (the server's default: 50; more than 1000 counts as 1000). */
  limit?: number;
  /** A previous page's `nextPageToken`. */
  pageToken?: string;
}

export interface ListedRun {
  run: Run;
  state: State;
  /** RFC 3339. */
  created: string;
  /** RFC 3339; null while the run goes on. */
  ended: string | null;
  /** The tenant, on a server with tenants. */
  tenant: string | null;
}

export interface RunPage {
  runs: ListedRun[];
  /** null on the last page. */
  nextPageToken: string | null;
}

export interface ObjectInfo {
  name: string;
  /** `builtin`, `exec`, `handler`, `service` or `composition` (a newer server may add kinds). */
  kind: string;
  description: string | null;
  /** The JSON Schema of the arguments (`{"type": "object"}` when the object declares none). */
  argsSchema: Json;
  /** Whether its runs have a byte stream. */
  stream: boolean;
}

export declare class Run {
  readonly object: string;
  readonly id: string;
  readonly url: string;
  static fromUrl(url: string): Run;
  toString(): string;
  toJSON(): { object: string; id: string; url: string };
}

export declare class Client {
  /**
   * A client for the server at `url`: `http(s)://host:port`, or (Node only) `unix:///PATH` for
   * one on a unix socket; the browser build refuses that with `InvalidArgumentError`.
   */
  constructor(url: string, options?: ClientOptions);
  readonly baseUrl: string;
  run(object: string, id: string): Run;
  submit(
    object: string,
    args?: { [key: string]: Json | undefined },
    options?: SubmitOptions,
  ): Promise<Run>;
  status(run: RunLike): Promise<RunStatus>;
  /** One page of the runs this client's token sees, newest first (`GET /_runs`). */
  listRuns(options?: ListRunsOptions): Promise<RunPage>;
  /** Every run `options` select, page after page (`limit` is the page size). */
  runs(options?: Omit<ListRunsOptions, "pageToken"> & { pageToken?: string }): AsyncIterableIterator<ListedRun>;
  /** The server's objects (`GET /_objects`). */
  objects(): Promise<ObjectInfo[]>;
  /** One object; `NotFoundError` when the server has none of this name. */
  object(name: string): Promise<ObjectInfo>;
  exists(run: RunLike): Promise<boolean>;
  cancel(run: RunLike): Promise<CancelOutcome>;
  follow(run: RunLike, options?: FollowOptions): Follow;
  wait(run: RunLike, options?: WaitOptions): Promise<Json>;
  /** Submit and the run's `success` value (the outcomes of `wait`). */
  call(
    object: string,
    args?: { [key: string]: Json | undefined },
    options?: CallOptions,
  ): Promise<Json>;
  /**
   * The run's byte stream as Uint8Array chunks, resumed after disconnects. Node only: the
   * browser build throws `InvalidArgumentError`.
   */
  stream(run: RunLike, options?: StreamOptions): AsyncIterableIterator<Uint8Array>;
  /**
   * Subscribe to a topic or pattern, over the client's WebSocket whatever its transport (in
   * a browser, the page's `WebSocket`); resolves once the server holds the subscription.
   */
  subscribe(topic: string, options?: SubscribeOptions): Promise<Subscription>;
  /** Publish `data` to `topic`: its offset. */
  publish(topic: string, data: Json): Promise<number>;
}

export type ErrorKind =
  | "NotFound"
  | "Gone"
  | "Canceled"
  | "RunFailed"
  | "Timeout"
  | "Protocol"
  | "Transport"
  | "InvalidArgument"
  | "Server"
  | "Unauthorized"
  | "Forbidden"
  | "WebhookRejected";

export declare class LongrunError extends Error {
  readonly kind: ErrorKind;
  readonly status?: number;
  readonly problem?: { type: string; title: string; status: number; detail?: string; [key: string]: unknown };
}
export declare class NotFoundError extends LongrunError {}
export declare class GoneError extends LongrunError {}
export declare class RunFailedError extends LongrunError {
  readonly value: Json;
}
export declare class RunCanceledError extends LongrunError {
  readonly value: Json;
}
export declare class TimeoutError extends LongrunError {}
export declare class ProtocolError extends LongrunError {}
export declare class TransportError extends LongrunError {}
export declare class InvalidArgumentError extends LongrunError {}
export declare class ServerError extends LongrunError {}
export declare class UnauthorizedError extends LongrunError {}
export declare class ForbiddenError extends LongrunError {}
export declare class WebhookRejectedError extends LongrunError {}

export declare const errorClasses: Readonly<Record<ErrorKind, typeof LongrunError>>;
/** The error kinds of the native build's core; `errorClasses` has a class for each. */
export declare const errorKinds: readonly ErrorKind[];
/** Which native build this module wraps. */
export declare const build: "napi" | "wasm";
