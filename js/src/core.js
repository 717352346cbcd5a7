// The public API, written once over either native build: the napi addon (Node) or the
// wasm-bindgen module (browsers, bundlers). A native build exposes `NativeClient`,
// `runFromUrl`; values cross as JSON text and errors as JSON in an Error's message
// (`bindings/shared.rs`). Nothing here knows the protocol: this file decodes, maps errors
// by the table in errors.js, and wires AbortSignal to the native abort.

import { InvalidArgumentError, LongrunError, toError } from "./errors.js";

export * from "./errors.js";

// Events per batch: the napi build reads ahead in batches of this size (`read_ahead`), and
// fewer, larger crossings cost the JS thread less (256 measured slower than 512, 1024 a little
// faster; `cargo xtask bench js`).
const BATCH = 1024;

/** The failure a native call rejected or threw with, as a LongrunError (or "Aborted"). */
function decode(e) {
  const message = typeof e === "string" ? e : e?.message;
  if (typeof message === "string" && message.startsWith('{"kind"')) {
    const info = JSON.parse(message);
    return info.kind === "Aborted" ? ABORTED : toError(info);
  }
  return e;
}

const ABORTED = Symbol("aborted");

function abortReason(signal) {
  return signal?.reason ?? new DOMException("This operation was aborted", "AbortError");
}

async function call(f) {
  try {
    return await f();
  } catch (e) {
    throw decode(e);
  }
}

function callSync(f) {
  try {
    return f();
  } catch (e) {
    throw decode(e);
  }
}

function runUrl(run) {
  if (typeof run === "string") return run;
  if (run && typeof run.url === "string") return run.url;
  throw new TypeError("expected a Run or a run URL");
}

const DONE = Object.freeze({ value: undefined, done: true });
const noop = () => {};

/**
 * One batch (`batch_json` in bindings/shared.rs) as events: spans of consecutive ids in one
 * state, over the values in order, and each event's progress when it was asked for.
 */
function expand(text) {
  const { spans, values, progress } = JSON.parse(text);
  const events = new Array(values.length);
  let k = 0;
  for (const [first, count, state] of spans) {
    for (let j = 0; j < count; j++, k++) {
      const event = { id: first + j, state, value: values[k] };
      if (progress?.[k]) event.progress = progress[k];
      events[k] = event;
    }
  }
  return events;
}

/**
 * What `follow` returns: an async iterator over the native follow's batches, the next of which
 * is fetched and decoded while this one is handed out (napi reads ahead on its own threads;
 * the wasm build is asked for it as soon as this one arrives). Written by hand rather than as an async generator: a generator costs several
 * promise jobs per event, a third of a whole drain (`cargo xtask bench js`); here an event of
 * the batch in hand costs one resolved promise. Calls to `next` are answered in order, as a
 * generator's.
 */
class Follow {
  #stream;
  #signal;
  #onProgress;
  #cancel;
  #onAbort;
  /** The batch being handed out, and the index of its next event. */
  #events = [];
  #i = 0;
  /** The next batch, asked for before this one is handed out. */
  #ahead = null;
  /**
   * The `next` calls that wait (for a batch, or behind one that does), and the last of them:
   * while one waits, the calls after it queue behind it, so that answers keep their order.
   */
  #waiting = 0;
  #queue = Promise.resolve();
  #done = false;

  constructor(stream, signal, onProgress, cancel) {
    this.#stream = stream;
    this.#signal = signal;
    this.#onProgress = onProgress;
    this.#cancel = cancel;
    this.#onAbort = () => stream.close();
    signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  next() {
    if (this.#waiting === 0 && this.#i < this.#events.length && !this.#signal?.aborted) {
      try {
        return Promise.resolve({ value: this.#take(), done: false });
      } catch (e) {
        this.#finish();
        return Promise.reject(e);
      }
    }
    this.#waiting++;
    const answer = this.#queue.then(() => this.#wait());
    this.#queue = answer.then(noop, noop);
    return answer;
  }

  /** Stop following: the connection closes. `for await` calls this when a loop is left early. */
  return(value) {
    this.#finish();
    return Promise.resolve({ value, done: true });
  }

  throw(error) {
    this.#finish();
    return Promise.reject(error);
  }

  /** The next event when the batch in hand is used up: wait for the next batch. */
  async #wait() {
    try {
      if (this.#done) return DONE;
      if (this.#signal?.aborted) throw ABORTED;
      if (this.#i >= this.#events.length) {
        const text = this.#ready() ?? (await (this.#ahead ?? this.#read()));
        if (this.#signal?.aborted) throw ABORTED;
        // `return` while this waited, and the batch came anyway: the follow is still over.
        if (this.#done) return DONE;
        const events = expand(text);
        if (events.length === 0) {
          this.#finish();
          return DONE;
        }
        this.#events = events;
        this.#i = 0;
        // A build that reads ahead natively (`tryNextBatch`) is asked when this batch is
        // used up; the other is asked now, so that it fetches while this one is handed out.
        if (!this.#stream.tryNextBatch) this.#ahead = this.#read();
      }
      return { value: this.#take(), done: false };
    } catch (e) {
      // `return` while this waited: the close it made is not a failure.
      if (this.#done && !this.#signal?.aborted) return DONE;
      this.#finish();
      if (e === ABORTED) {
        if (this.#cancel) await this.#cancel().catch(noop);
        throw abortReason(this.#signal);
      }
      throw e;
    } finally {
      // Before the answer settles: the caller's next `next` may take the fast path.
      this.#waiting--;
    }
  }

  #take() {
    const event = this.#events[this.#i++];
    if (this.#onProgress && event.progress) this.#onProgress(event.progress, event);
    return event;
  }

  /** The next batch if the native side already has it (napi reads ahead), else null. */
  #ready() {
    return this.#stream.tryNextBatch ? callSync(() => this.#stream.tryNextBatch(BATCH)) : null;
  }

  #read() {
    const batch = call(() => this.#stream.nextBatch(BATCH));
    // A batch nobody awaits (the loop ended) rejects quietly on close.
    batch.catch(noop);
    return batch;
  }

  #finish() {
    if (this.#done) return;
    this.#done = true;
    this.#events = [];
    this.#i = 0;
    this.#ahead = null;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#stream.close();
  }
}

/**
 * `settle`: resolves once callbacks the native side queued before its answer have run (the
 * napi addon delivers `onProgress` calls as event-loop tasks); none when calls are direct.
 */
export function makeApi(native, { settle } = {}) {
  /** A handle on a run: its object, id and absolute URL (the portable resume token). */
  class Run {
    constructor(object, id, url) {
      this.object = object;
      this.id = id;
      this.url = url;
      Object.freeze(this);
    }

    /** Rebuild a run from its URL, e.g. `http://host:8080/count/0f8fad5b-…`. */
    static fromUrl(url) {
      return toRun(callSync(() => native.runFromUrl(String(url))));
    }

    toString() {
      return this.url;
    }

    toJSON() {
      return { object: this.object, id: this.id, url: this.url };
    }
  }

  function listedRun({ run, state, created, ended, tenant }) {
    return { run: new Run(run.object, run.id, run.url), state, created, ended, tenant };
  }

  function toRun(json) {
    const r = JSON.parse(json);
    return new Run(r.object, r.id, r.url);
  }

  /** A longrun/1 client for one server. */
  class Client {
    #native;

    constructor(url, options = {}) {
      this.#native = callSync(() => new native.NativeClient(String(url), JSON.stringify(options ?? {})));
    }

    /** The server's base URL (always ending in `/`). */
    get baseUrl() {
      return this.#native.baseUrl();
    }

    /** A handle on run `object`/`id` of this client's server. */
    run(object, id) {
      return toRun(callSync(() => this.#native.run(object, id)));
    }

    /**
     * Start a run of `object` with `args` (a JSON object; none: `{}`). `options` are the
     * core's submit options as they are (`idempotencyKey`, `deadlineMs`, `waitMs`, `hook`,
     * `hookEvents`; an unknown one is an InvalidArgumentError).
     */
    async submit(object, args, options = {}) {
      const json = args === undefined ? undefined : JSON.stringify(args);
      return toRun(await call(() => this.#native.submit(object, json, JSON.stringify(options ?? {}))));
    }

    /**
     * Submit and the run's `success` value, in one exchange when the run ends within the
     * server's wait (`Prefer: wait`). The outcomes of `wait`; `timeoutMs` and `signal` as
     * there, every other option a submit option.
     */
    async call(object, args, options = {}) {
      const { timeoutMs, signal, ...submit } = options ?? {};
      if (signal?.aborted) throw abortReason(signal);
      const json = args === undefined ? undefined : JSON.stringify(args);
      const caller = callSync(() =>
        this.#native.caller(object, json, JSON.stringify(submit), timeoutMs ?? undefined),
      );
      const onAbort = () => caller.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        return JSON.parse(await call(() => caller.call()));
      } catch (e) {
        if (e === ABORTED) throw abortReason(signal);
        throw e;
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    }

    /**
     * The run's byte stream (spec §27) as an async iterator of Uint8Array chunks: every byte
     * once, in order, resumed by the core after a disconnect; it ends when the run has ended
     * and every byte was read. Leaving the loop or aborting `signal` closes the connection.
     * Node only: the browser build throws InvalidArgumentError.
     */
    stream(run, options = {}) {
      const { signal } = options ?? {};
      const url = runUrl(run);
      if (typeof this.#native.stream !== "function") {
        throw new InvalidArgumentError({
          kind: "InvalidArgument",
          message: "byte streams are not supported by the browser build; read GET {run}/stream with fetch",
        });
      }
      const native = callSync(() => this.#native.stream(url));
      return (async function* chunks() {
        const onAbort = () => native.close();
        signal?.addEventListener("abort", onAbort, { once: true });
        try {
          for (;;) {
            if (signal?.aborted) throw abortReason(signal);
            let chunk;
            try {
              chunk = await call(() => native.nextChunk());
            } catch (e) {
              if (e === ABORTED) throw abortReason(signal);
              throw e;
            }
            if (chunk == null) return;
            yield chunk;
          }
        } finally {
          signal?.removeEventListener("abort", onAbort);
          native.close();
        }
      })();
    }

    /** The run's state and newest event id; NotFoundError when it does not exist. */
    async status(run) {
      return JSON.parse(await call(() => this.#native.status(runUrl(run))));
    }

    /**
     * One page of the runs this client's token sees, newest first (`GET /_runs`), as
     * `{runs, nextPageToken}`: each `{run, state, created, ended, tenant}` (`run` a Run;
     * times RFC 3339 text, `ended` null while the run goes on). `options`: `object`, `state`
     * (a state, or `active` / `ended`), `limit` (from 1; the server's default is 50, and more
     * than 1000 counts as 1000) and `pageToken` (a previous page's `nextPageToken`; null on
     * the last page).
     */
    async listRuns(options = {}) {
      const page = JSON.parse(await call(() => this.#native.listRuns(JSON.stringify(options ?? {}))));
      return { runs: page.runs.map(listedRun), nextPageToken: page.nextPageToken };
    }

    /**
     * Every run that `options` (as `listRuns` has them; `limit` the page size) selects, page
     * after page, as an async iterator: pages never repeat a run.
     */
    async *runs(options = {}) {
      let pageToken = options?.pageToken;
      do {
        const page = await this.listRuns({ ...options, pageToken });
        yield* page.runs;
        pageToken = page.nextPageToken;
      } while (pageToken);
    }

    /** The server's objects (`GET /_objects`): `[{name, kind, description, argsSchema, stream}]`. */
    async objects() {
      return JSON.parse(await call(() => this.#native.objects()));
    }

    /** One object of the server's catalogue; NotFoundError when it has none of this name. */
    async object(name) {
      return JSON.parse(await call(() => this.#native.object(String(name))));
    }

    /** Does the run exist? (GoneError once its retention has passed.) */
    async exists(run) {
      return call(() => this.#native.exists(runUrl(run)));
    }

    /** Ask the server to cancel the run: `{outcome: "accepted"}` or `{outcome: "ended", state}`. */
    async cancel(run) {
      return JSON.parse(await call(() => this.#native.cancel(runUrl(run))));
    }

    /**
     * Subscribe to `topic` (a dotted name, or a pattern with `*` and `?`), from offset `since`
     * if given (one topic only; from now otherwise), over the client's WebSocket whatever its
     * transport. Resolves once the server holds the subscription, so nothing published after
     * that is missed, with an async iterator of `{topic, offset, data}` (in order, each once,
     * resumed from the next offset after a lost connection) that also has the server's ack,
     * `offset` and `recovered`. Leaving the loop, `close()` or aborting `signal` unsubscribes.
     * In a browser the socket is the page's `WebSocket` (the token goes in its first packet).
     */
    async subscribe(topic, options = {}) {
      const { since, signal } = options ?? {};
      if (signal?.aborted) throw abortReason(signal);
      const native = callSync(() => this.#native.subscribe(String(topic), since ?? undefined));
      const onAbort = () => native.close();
      signal?.addEventListener("abort", onAbort, { once: true });
      const unsubscribe = () => {
        signal?.removeEventListener("abort", onAbort);
        native.close();
      };
      let ack;
      try {
        ack = JSON.parse(await call(() => native.ready()));
      } catch (e) {
        unsubscribe();
        throw e === ABORTED ? abortReason(signal) : e;
      }
      const publications = (async function* () {
        try {
          for (;;) {
            if (signal?.aborted) throw abortReason(signal);
            let text;
            try {
              text = await call(() => native.next());
            } catch (e) {
              // Closed by `close()` while waiting: the end, unless it was the signal.
              if (e === ABORTED) {
                if (signal?.aborted) throw abortReason(signal);
                return;
              }
              throw e;
            }
            // Closed before the read began: by the signal, or by `close()`.
            if (text == null) {
              if (signal?.aborted) throw abortReason(signal);
              return;
            }
            yield JSON.parse(text);
          }
        } finally {
          unsubscribe();
        }
      })();
      return Object.assign(publications, {
        offset: ack.offset,
        recovered: ack.recovered,
        close: unsubscribe,
      });
    }

    /** Publish `data` (any JSON value) to `topic`: its offset. */
    async publish(topic, data) {
      return call(() => this.#native.publish(String(topic), JSON.stringify(data ?? null)));
    }

    /**
     * The run's events, in order, each once, to the terminal event, resuming across
     * disconnects. Breaking out of the loop, or aborting `signal`, closes the connection.
     */
    follow(run, options = {}) {
      const { since, transport, signal, onProgress, cancelOnAbort = false } = options;
      const url = runUrl(run);
      const stream = callSync(() =>
        this.#native.follow(url, since ?? undefined, transport ?? undefined, Boolean(onProgress)),
      );
      const cancel = cancelOnAbort ? () => this.cancel(url) : undefined;
      return new Follow(stream, signal, onProgress, cancel);
    }

    /**
     * The run's `success` value. RunFailedError / RunCanceledError for the other ends,
     * TimeoutError after `timeoutMs` (the run goes on unless you cancel it).
     */
    async wait(run, options = {}) {
      const { timeoutMs, signal, onProgress, cancelOnAbort = false } = options;
      const url = runUrl(run);
      if (signal?.aborted) throw abortReason(signal);
      const waiter = callSync(() => this.#native.waiter(url, timeoutMs ?? undefined));
      const onAbort = () => waiter.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      const progress = onProgress ? (json) => onProgress(JSON.parse(json)) : undefined;
      try {
        const value = JSON.parse(await call(() => waiter.wait(progress)));
        if (progress && settle) await settle();
        return value;
      } catch (e) {
        if (e === ABORTED) {
          if (cancelOnAbort) await this.cancel(url).catch(() => {});
          throw abortReason(signal);
        }
        throw e;
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    }
  }

  /**
   * Check a response hook's delivery on the receiving side (the core's verifier): `headers` a
   * plain object (Node's `req.headers`), a fetch `Headers` or `[name, value]` pairs; `body`
   * the bytes exactly as received (a Uint8Array/Buffer, or a string). Returns when authentic;
   * throws WebhookRejectedError (a missing header, a stale timestamp, no matching signature)
   * or InvalidArgumentError (a malformed secret).
   */
  function verifyWebhook(secret, headers, body, options = {}) {
    const { toleranceMs } = options ?? {};
    const pairs =
      headers && !Array.isArray(headers) && typeof headers.entries === "function"
        ? [...headers.entries()]
        : headers;
    const bytes =
      typeof body === "string"
        ? new TextEncoder().encode(body)
        : body instanceof ArrayBuffer
          ? new Uint8Array(body)
          : body;
    callSync(() =>
      native.verifyWebhook(String(secret), JSON.stringify(pairs ?? {}), bytes, toleranceMs ?? undefined),
    );
  }

  /** The core's error kinds (`ErrorKind::ALL`); `errorClasses` has a class for each. */
  const errorKinds = Object.freeze(JSON.parse(native.errorKinds()));

  return { Client, Run, errorKinds, verifyWebhook };
}

export { LongrunError };
