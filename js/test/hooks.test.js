// Submit options (deadlineMs, waitMs, hook, hookEvents), call, byte streams and verifyWebhook,
// for both builds, against the reference server (one that sends hooks to loopback receivers).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { builds, startServer } from "./helpers.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET = "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VydmVy";

let server;
let receiver;
let hookUrl;
/** Deliveries the receiver got, and the test waiting for the next one. */
const deliveries = [];
let delivered = () => {};

before(async () => {
  server = await startServer(["--hook-secret", SECRET, "--hook-allow", "127.0.0.1"]);
  const { verifyWebhook } = await import("longrun");
  receiver = createServer((req, res) => {
    const parts = [];
    req.on("data", (part) => parts.push(part));
    req.on("end", () => {
      const body = Buffer.concat(parts);
      try {
        verifyWebhook(SECRET, req.headers, body);
        res.writeHead(200).end();
      } catch {
        res.writeHead(400).end();
      }
      deliveries.push({ headers: { ...req.headers }, body });
      delivered();
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;
});

after(() => {
  server?.close();
  receiver?.close();
});

/** The next delivery: resolved by the receiver, not by a timer. */
function nextDelivery() {
  if (deliveries.length) return Promise.resolve(deliveries.shift());
  return new Promise((resolve) => {
    delivered = () => {
      delivered = () => {};
      resolve(deliveries.shift());
    };
  });
}

const sha256 = (chunks) => {
  const h = createHash("sha256");
  for (const c of chunks) h.update(c);
  return h.digest("hex");
};

for (const { name, api } of await builds()) {
  const { Client, verifyWebhook, WebhookRejectedError, InvalidArgumentError, RunCanceledError, RunFailedError } = api;

  describe(`submit options, call, streams and hooks (${name})`, () => {
    test("a hook reaches a receiver that verifies it; changed deliveries are rejected", async () => {
      const client = new Client(server.url);
      const run = await client.submit("echo", { a: 1 }, { hook: hookUrl, hookEvents: "ended" });
      assert.deepEqual(await client.wait(run), { a: 1 });
      const { headers, body } = await nextDelivery();
      verifyWebhook(SECRET, headers, body);
      verifyWebhook(SECRET, new Headers(headers), body.toString());
      verifyWebhook(SECRET, Object.entries(headers), new Uint8Array(body));
      assert.ok(body.toString().includes(run.id));
      const rejected = (f, pattern) =>
        assert.throws(f, (e) => e instanceof WebhookRejectedError && e.kind === "WebhookRejected" && pattern.test(e.message));
      rejected(() => verifyWebhook(SECRET, headers, body.toString().replace('"a"', '"b"')), /signature/);
      rejected(() => verifyWebhook(OTHER_SECRET, headers, body), /signature/);
      const stale = { ...headers, "webhook-timestamp": String(Math.floor(Date.now() / 1000) - 3600) };
      rejected(() => verifyWebhook(SECRET, stale, body), /tolerance/);
      rejected(() => verifyWebhook(SECRET, stale, body, { toleranceMs: 7_200_000 }), /signature/);
      const { "webhook-signature": _, ...unsigned } = headers;
      rejected(() => verifyWebhook(SECRET, unsigned, body), /webhook-signature/);
      assert.throws(() => verifyWebhook("whsec_%%", headers, body), InvalidArgumentError);
      await assert.rejects(client.submit("echo", {}, { hook: "ftp://example.com/x" }), InvalidArgumentError);
      await assert.rejects(client.submit("echo", {}, { hook: hookUrl, hookEvents: "some" }), InvalidArgumentError);
    });

    test("a deadline ends the run canceled, by submit and by call", async () => {
      const client = new Client(server.url);
      const run = await client.submit("sleep", { ms: 3_600_000 }, { deadlineMs: 200 });
      await assert.rejects(client.wait(run), (e) => e instanceof RunCanceledError && e.value.reason === "deadline");
      await assert.rejects(
        client.call("sleep", { ms: 3_600_000 }, { deadlineMs: 200 }),
        (e) => e instanceof RunCanceledError && e.value.reason === "deadline",
      );
      for (const bad of [0, -1, 365 * 86_400_000]) {
        await assert.rejects(client.submit("echo", {}, { deadlineMs: bad }), InvalidArgumentError, String(bad));
      }
      await assert.rejects(client.submit("echo", {}, { bogus: 1 }), InvalidArgumentError);
    });

    test("waitMs returns the ended run; call returns the value", async () => {
      const client = new Client(server.url);
      const run = await client.submit("echo", { a: 1 }, { waitMs: 30_000 });
      // The server held the submit until the run ended: it is over before any follow.
      assert.equal((await client.status(run)).state, "success");
      assert.deepEqual(await client.call("echo", { b: 2 }), { b: 2 });
      await assert.rejects(client.call("fail", {}), RunFailedError);
      for (const bad of [0, 61_000]) {
        await assert.rejects(client.submit("echo", {}, { waitMs: bad }), InvalidArgumentError, String(bad));
      }
    });

    if (name === "napi") {
      test("the bytes stream downloads whole and matches its SHA-256", async () => {
        const client = new Client(server.url);
        const run = await client.submit("bytes", { n: 1_000_000, chunk: 65_536 });
        const chunks = [];
        for await (const chunk of client.stream(run)) {
          assert.ok(chunk instanceof Uint8Array);
          chunks.push(chunk);
        }
        const size = chunks.reduce((n, c) => n + c.length, 0);
        assert.deepEqual(await client.wait(run), { n: 1_000_000, sha256: sha256(chunks) });
        assert.equal(size, 1_000_000);
        const echo = await client.submit("echo", {}, { waitMs: 30_000 });
        await assert.rejects(async () => {
          for await (const _ of client.stream(echo));
        }, api.NotFoundError);
      });
    } else {
      test("the browser build says it has no byte streams", async () => {
        const client = new Client(server.url);
        const run = await client.submit("bytes", { n: 10 }, { waitMs: 30_000 });
        assert.throws(() => client.stream(run), InvalidArgumentError);
      });
    }
  });
}
