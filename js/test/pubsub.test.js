// Pubsub (spec §28.5) through the package: `subscribe` resolves once the server holds the
// subscription, publications come in order with their offsets, `since` replays, patterns name
// the topic that matched, the run feeds, close and AbortSignal unsubscribe — in both builds
// (the browser build over the JS engine's WebSocket).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { builds, startServer } from "./helpers.js";

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.close());

const topic = (prefix) => `${prefix}.${randomUUID().replaceAll("-", "")}`;

for (const { name, api } of await builds()) {
  const { Client, InvalidArgumentError } = api;

  describe(`pubsub (${name})`, () => {
    test("subscribe resolves ready; publications come in order, each once", async () => {
      const t = topic("orders");
      const c = new Client(server.url);
      const ws = new Client(server.url, { transport: "ws" });
      assert.equal(await c.publish(t, "before"), 0);
      const sub = await c.subscribe(t);
      assert.equal(sub.offset, 1);
      assert.equal(sub.recovered, true);
      for (let i = 0; i < 5; i++) {
        assert.equal(await (i % 2 ? ws : c).publish(t, { i }), i + 1);
      }
      const got = [];
      for await (const p of sub) {
        got.push(p);
        if (got.length === 5) break;
      }
      assert.deepEqual(
        got,
        [0, 1, 2, 3, 4].map((i) => ({ topic: t, offset: i + 1, data: { i } })),
      );
      // Left by `break`: the iterator is over.
      assert.deepEqual(await sub.next(), { value: undefined, done: true });
    });

    test("since replays what the server kept; an unknown topic is not recovered", async () => {
      const t = topic("log");
      const c = new Client(server.url);
      for (let i = 0; i < 4; i++) await c.publish(t, i);
      const sub = await c.subscribe(t, { since: 2 });
      assert.deepEqual([sub.offset, sub.recovered], [4, true]);
      assert.equal((await sub.next()).value.data, 2);
      assert.equal((await sub.next()).value.data, 3);
      await c.publish(t, 4);
      assert.deepEqual((await sub.next()).value, { topic: t, offset: 4, data: 4 });
      sub.close();
      const gone = await c.subscribe(topic("never"), { since: 3 });
      assert.equal(gone.recovered, false);
      gone.close();
    });

    test("a pattern names the topic that matched; the run feed hears runs", async () => {
      const room = topic("chat");
      const c = new Client(server.url);
      const sub = await c.subscribe(`${room}.*`);
      await c.publish(`${room}.lobby`, "hi");
      assert.deepEqual((await sub.next()).value, { topic: `${room}.lobby`, offset: 0, data: "hi" });
      sub.close();

      const feed = await c.subscribe("_runs.echo");
      const run = await c.submit("echo", {});
      const states = [];
      for await (const p of feed) {
        if (p.data.id === run.id) states.push(p.data.state);
        if (states.length === 2) break;
      }
      assert.deepEqual(states, ["queued", "success"]);
    });

    test("bad topics are InvalidArgumentError", async () => {
      const c = new Client(server.url);
      await assert.rejects(c.subscribe("no..dots"), InvalidArgumentError);
      await assert.rejects(c.subscribe("a.*", { since: 0 }), InvalidArgumentError);
      await assert.rejects(c.publish("_runs", {}), InvalidArgumentError);
      await assert.rejects(c.subscribe("t", { since: -1 }), InvalidArgumentError);
    });

    test("close and AbortSignal end a pending read", async () => {
      const c = new Client(server.url);
      const sub = await c.subscribe(topic("quiet"));
      const pending = sub.next();
      sub.close();
      assert.deepEqual(await pending, { value: undefined, done: true });

      const controller = new AbortController();
      const aborted = await c.subscribe(topic("quiet"), { signal: controller.signal });
      const read = aborted.next();
      controller.abort(new Error("enough"));
      await assert.rejects(read, /enough/);
    });
  });
}
