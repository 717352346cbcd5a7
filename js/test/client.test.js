// Client behaviour beyond the scenarios, for both builds: cancel, AbortSignal, timeouts, the
// error classes, onProgress, and resume through a proxy that cuts every connection.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { readFile } from "node:fs/promises";
import { builds, startServer } from "./helpers.js";

let server;
before(async () => {
  // A short `retry:` hint, so reconnects after the proxy's cuts come quickly.
  server = await startServer(["--retry", "50ms"]);
});
after(() => server?.close());

/** One turn of the event loop: every promise job queued before it has run. */
const turn = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A TCP proxy to `target` that closes each connection after passing `cut` bytes of the
 * server's answer: every follow connection dies mid-stream, many times per run.
 */
async function cuttingProxy(target, cut) {
  const { hostname, port } = new URL(target);
  let cuts = 0;
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    let passed = 0;
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (passed + d.length >= cut) {
        client.write(d.subarray(0, Math.max(0, cut - passed)));
        cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      passed += d.length;
      client.write(d);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${proxy.address().port}`,
    cuts: () => cuts,
    close: () => proxy.close(),
  };
}

for (const { name, api } of await builds()) {
  const { Client, Run, LongrunError } = api;

  describe(`client (${name})`, () => {
    test("the error table covers exactly the kinds of the native core, each class under LongrunError", () => {
      assert.ok(api.errorKinds.length > 0);
      assert.deepEqual(Object.keys(api.errorClasses).sort(), [...api.errorKinds].sort());
      for (const kind of api.errorKinds) assert.ok(api.errorClasses[kind].prototype instanceof LongrunError);
    });

    test("the TypeScript ErrorKind union names exactly the kinds of the native core", async () => {
      const dts = await readFile(new URL("../src/index.d.ts", import.meta.url), "utf8");
      const union = /export type ErrorKind =([^;]*);/.exec(dts);
      assert.ok(union, "index.d.ts declares ErrorKind");
      const typed = [...union[1].matchAll(/"([A-Za-z]+)"/g)].map((m) => m[1]);
      assert.deepEqual(typed.sort(), [...api.errorKinds].sort());
    });

    test("a cursor that is not a non-negative integer is an InvalidArgumentError", async () => {
      const client = new Client(server.url);
      const run = await client.submit("count", { n: 1 });
      await client.wait(run);
      for (const since of [-1, -0.5, 0.5, NaN, Infinity, -Infinity, 2 ** 53]) {
        assert.throws(() => client.follow(run, { since }), api.InvalidArgumentError, String(since));
      }
      const ids = [];
      for await (const ev of client.follow(run, { since: 0 })) ids.push(ev.id);
      assert.deepEqual(ids, [1, 2]);
      for await (const ev of client.follow(run, { since: Number.MAX_SAFE_INTEGER })) assert.fail(`event ${ev.id}`);
    });

    test("submit, follow, wait, exists, status round trip", async () => {
      const client = new Client(server.url, { timeoutMs: 10_000 });
      const run = await client.submit("count", { n: 3 });
      assert.ok(run instanceof Run);
      assert.equal(run.url, `${server.url}/count/${run.id}`);
      assert.deepEqual(Run.fromUrl(run.url), run);
      const events = [];
      for await (const ev of client.follow(run)) events.push(ev.state);
      assert.deepEqual(events, ["queued", "running", "running", "running", "success"]);
      assert.deepEqual(await client.wait(run), { n: 3 });
      assert.equal(await client.exists(run.url), true);
      assert.deepEqual(await client.status(run), { state: "success", lastEventId: 4 });
      assert.deepEqual(await client.cancel(run), { outcome: "ended", state: "success" });
    });

    test("errors come as their classes, with status, problem and value", async () => {
      const client = new Client(server.url);
      await assert.rejects(client.submit("nope"), (e) => {
        assert.ok(e instanceof api.NotFoundError && e instanceof LongrunError && e instanceof Error);
        assert.equal(e.kind, "NotFound");
        assert.equal(e.status, 404);
        assert.equal(e.problem.type, "urn:longrun:problem:unknown-object");
        return true;
      });
      await assert.rejects(client.submit("count", { n: "x" }), api.InvalidArgumentError);
      const failed = await client.submit("fail", { message: "boom" });
      await assert.rejects(client.wait(failed), (e) => e instanceof api.RunFailedError && e.value.message === "boom");
      assert.throws(() => new Client("not a url"), api.InvalidArgumentError);
      assert.throws(() => new Client(server.url, { timeoutMs: -1 }), api.InvalidArgumentError);
      assert.throws(() => Run.fromUrl("http://h/count"), api.InvalidArgumentError);
      // A unix socket (spec §20.2): the napi build takes it, the browser build cannot.
      if (name === "wasm") {
        assert.throws(() => new Client("unix:///tmp/longrun.sock"), (e) => {
          assert.ok(e instanceof api.InvalidArgumentError, String(e));
          assert.match(e.message, /unix socket/);
          return true;
        });
      } else {
        assert.equal(new Client("unix:///tmp/longrun.sock").run("echo", "00000000-0000-4000-8000-000000000000").url,
          "unix:///tmp/longrun.sock/echo/00000000-0000-4000-8000-000000000000");
      }
      const other = new Client("http://127.0.0.1:9/");
      await assert.rejects(client.exists(other.run("echo", "00000000-0000-4000-8000-000000000000")), api.InvalidArgumentError);
      await assert.rejects(other.submit("echo"), api.TransportError);
    });

    test("cancel: accepted, then the run ends canceled", async () => {
      const client = new Client(server.url);
      const run = await client.submit("sleep", { ms: 3_600_000 });
      assert.deepEqual(await client.cancel(run), { outcome: "accepted" });
      await assert.rejects(client.wait(run), (e) => e instanceof api.RunCanceledError && e.value.reason === "client");
    });

    test("wait with timeoutMs throws TimeoutError and the run goes on", async () => {
      const client = new Client(server.url);
      const run = await client.submit("sleep", { ms: 3_600_000 });
      await assert.rejects(client.wait(run, { timeoutMs: 100 }), api.TimeoutError);
      assert.equal((await client.status(run)).state, "queued");
      await client.cancel(run);
    });

    test("aborting a follow stops it with the signal's reason; the run goes on", async () => {
      const client = new Client(server.url);
      const run = await client.submit("sleep", { ms: 3_600_000 });
      const controller = new AbortController();
      const seen = [];
      await assert.rejects(
        (async () => {
          for await (const ev of client.follow(run, { signal: controller.signal })) {
            seen.push(ev.id);
            controller.abort(new Error("stop"));
          }
        })(),
        /stop/,
      );
      assert.deepEqual(seen, [0]);
      // Aborted while a batch is pending (the run has nothing more to say).
      const pending = new AbortController();
      const follow = client.follow(run, { since: 0, signal: pending.signal });
      const next = follow.next();
      await turn(); // the next() is now waiting on the native side
      pending.abort();
      await assert.rejects(next, { name: "AbortError" });
      assert.equal((await client.status(run)).state, "queued");
      await client.cancel(run);
    });

    test("a follow answers next() calls in order, like a generator, and return() stops it", async () => {
      const client = new Client(server.url);
      const run = await client.submit("count", { n: 3 });
      const follow = client.follow(run);
      assert.equal(follow[Symbol.asyncIterator](), follow);
      // Asked all at once, before any answer: answered in order, then done for good.
      const answers = await Promise.all(Array.from({ length: 7 }, () => follow.next()));
      assert.deepEqual(
        answers.map((a) => (a.done ? "done" : a.value.id)),
        [0, 1, 2, 3, 4, "done", "done"],
      );
      // return() while a next() waits on a run that has nothing more to say: both are done.
      const sleeping = await client.submit("sleep", { ms: 3_600_000 });
      const waiting = client.follow(sleeping);
      assert.equal((await waiting.next()).value.state, "queued");
      const pending = waiting.next();
      await turn(); // the pending next() is now waiting on the native side
      assert.deepEqual(await waiting.return(), { value: undefined, done: true });
      assert.deepEqual(await pending, { value: undefined, done: true });
      assert.deepEqual(await waiting.next(), { value: undefined, done: true });
      await client.cancel(sleeping);
    });

    test("an error thrown by onProgress ends the follow with that error", async () => {
      const client = new Client(server.url);
      const run = await client.submit("count", { n: 3 });
      const seen = [];
      await assert.rejects(
        (async () => {
          const onProgress = (p) => {
            if (p.message === "2/3") throw new Error("progress bar broke");
          };
          for await (const ev of client.follow(run, { onProgress })) seen.push(ev.id);
        })(),
        /progress bar broke/,
      );
      assert.deepEqual(seen, [0, 1]);
    });

    test("aborting a wait rejects with the reason; cancelOnAbort cancels the run", async () => {
      const client = new Client(server.url);
      const run = await client.submit("sleep", { ms: 3_600_000 });
      const controller = new AbortController();
      const waiting = client.wait(run, { signal: controller.signal });
      await turn(); // the wait is in flight on the native side
      controller.abort();
      await assert.rejects(waiting, { name: "AbortError" });
      assert.equal((await client.status(run)).state, "queued");

      const again = new AbortController();
      const canceling = client.wait(run, { signal: again.signal, cancelOnAbort: true });
      await turn();
      again.abort();
      await assert.rejects(canceling, { name: "AbortError" });
      await assert.rejects(client.wait(run), api.RunCanceledError);
      // An already aborted signal never starts.
      await assert.rejects(client.wait(run, { signal: AbortSignal.abort() }), { name: "AbortError" });
    });

    test("onProgress sees the progress convention, in follow and in wait", async () => {
      const client = new Client(server.url);
      const run = await client.submit("count", { n: 4 });
      const followed = [];
      for await (const ev of client.follow(run, { onProgress: (p) => followed.push(p) })) {
        if (ev.state === "running") assert.equal(ev.progress.fraction, ev.value.progress);
      }
      assert.deepEqual(
        followed.map((p) => p.message),
        ["1/4", "2/4", "3/4", "4/4"],
      );
      const waited = [];
      assert.deepEqual(await client.wait(run, { onProgress: (p) => waited.push(p) }), { n: 4 });
      assert.deepEqual(waited, followed);
    });

    test("onProgress never sees a terminal event, even one whose value looks like progress", async () => {
      const client = new Client(server.url);
      const runs = [
        await client.submit("fail", { message: "boom" }),
        await client.submit("emit", { events: [{ message: "half", progress: 0.5 }], result: { message: "done", progress: 1 } }),
      ];
      for (const run of runs) {
        const followed = [];
        for await (const ev of client.follow(run, { onProgress: (p) => followed.push(p) })) {
          if (ev.state !== "running") assert.equal(ev.progress, undefined, ev.state);
        }
        const waited = [];
        await client.wait(run, { onProgress: (p) => waited.push(p) }).catch((e) => assert.ok(e instanceof api.RunFailedError));
        await turn(); // progress calls the napi build queued before a rejection have run
        assert.deepEqual(waited, followed);
        assert.deepEqual(followed.map((p) => p.message), run.object === "fail" ? [] : ["half"]);
      }
    });

    test("onProgress in wait sees every event's progress, in order, far more than queue at once", async () => {
      const client = new Client(server.url);
      const n = 5000;
      const run = await client.submit("count", { n });
      await client.wait(run); // ended: the wait below reads the whole log at once
      const messages = [];
      assert.deepEqual(await client.wait(run, { onProgress: (p) => messages.push(p.message) }), { n });
      assert.equal(messages.length, n);
      assert.ok(messages.every((m, i) => m === `${i + 1}/${n}`), messages.slice(0, 5).join(", "));
    });

    // A poll answer is lost whole when cut, so polls get more bytes per connection than SSE.
    // Over "ws" every cut kills the client's one socket (the submit's reply fits before the
    // first), and the follow resumes on a new one — in the browser build, a new WebSocket of
    // the JS engine.
    for (const [transport, cut] of [["sse", 1500], ["poll", 5000], ["ws", 1500]]) {
      test(`resume through a connection-cutting proxy is exactly once (${transport})`, async () => {
        const proxy = await cuttingProxy(server.url, cut);
        try {
          const client = new Client(proxy.url, { transport, reconnect: { maxAttempts: 1000, initialDelayMs: 10, maxDelayMs: 50 } });
          const n = 200;
          const run = await client.submit("count", { n, interval_ms: 5 });
          const ids = [];
          let last;
          for await (const ev of client.follow(run)) {
            ids.push(ev.id);
            last = ev;
            if (ev.state === "running") assert.equal(ev.value.i, ev.id);
          }
          assert.deepEqual(ids, Array.from({ length: n + 2 }, (_, i) => i));
          assert.deepEqual(last, { id: n + 1, state: "success", value: { n } });
          assert.ok(proxy.cuts() > 2, `the proxy cut ${proxy.cuts()} connections`);
        } finally {
          proxy.close();
        }
      });
    }
  });
}
