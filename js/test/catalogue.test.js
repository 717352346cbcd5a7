// The run list (`GET /_runs`) and the object catalogue (`GET /_objects`) through the package,
// for both builds, each on a server of its own so the list holds only its runs.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { builds, startServer } from "./helpers.js";

for (const { name, api } of await builds()) {
  const { Client, Run, InvalidArgumentError, NotFoundError } = api;

  describe(`runs and objects (${name})`, () => {
    let server;
    before(async () => {
      server = await startServer();
    });
    after(() => server?.close());

    test("listRuns pages newest first and filters; runs() walks every page once", async () => {
      const client = new Client(server.url);
      const echoes = [];
      for (let i = 0; i < 5; i++) {
        const run = await client.submit("echo", { i });
        await client.wait(run);
        echoes.push(run);
      }
      const sleeper = await client.submit("sleep", { ms: 3_600_000 });

      const all = await client.listRuns();
      assert.equal(all.nextPageToken, null);
      assert.deepEqual(
        all.runs.map((r) => r.run.id),
        [sleeper, ...echoes.toReversed()].map((r) => r.id),
        "newest first",
      );
      const first = all.runs.at(-1);
      assert.ok(first.run instanceof Run);
      assert.equal(first.run.url, echoes[0].url);
      assert.equal(first.state, "success");
      assert.ok(!Number.isNaN(Date.parse(first.created)), first.created);
      assert.ok(Date.parse(first.ended) >= Date.parse(first.created), first.ended);
      assert.equal(first.tenant, null);

      const active = await client.listRuns({ state: "active" });
      assert.deepEqual(active.runs.map((r) => [r.run.id, r.ended]), [[sleeper.id, null]]);
      // `sleep` writes no event of its own: it is queued until it ends.
      assert.equal(active.runs[0].state, "queued");

      const page = await client.listRuns({ object: "echo", limit: 2 });
      assert.equal(page.runs.length, 2);
      assert.equal(typeof page.nextPageToken, "string");
      const next = await client.listRuns({ object: "echo", limit: 2, pageToken: page.nextPageToken });
      assert.deepEqual(next.runs.map((r) => r.run.id), [echoes[2].id, echoes[1].id]);

      const walked = [];
      for await (const r of client.runs({ object: "echo", limit: 2 })) walked.push(r.run.id);
      assert.deepEqual(walked, echoes.toReversed().map((r) => r.id), "each once, in order, over three pages");

      await client.cancel(sleeper);
    });

    test("a bad query is InvalidArgumentError", async () => {
      const client = new Client(server.url);
      await assert.rejects(client.listRuns({ state: "sleeping" }), InvalidArgumentError);
      await assert.rejects(client.listRuns({ limit: 0 }), InvalidArgumentError);
      await assert.rejects(client.listRuns({ pageToken: "not-a-token" }), InvalidArgumentError);
      await assert.rejects(client.listRuns({ colour: "red" }), InvalidArgumentError);
      await assert.rejects(client.listRuns({ limit: "ten" }), InvalidArgumentError);
    });

    test("objects() is the catalogue; object(name) one entry, NotFoundError for none", async () => {
      const client = new Client(server.url);
      const objects = await client.objects();
      const names = objects.map((o) => o.name);
      assert.deepEqual(names, names.toSorted());
      assert.ok(names.includes("count") && names.includes("bytes"), names.join());
      const count = objects.find((o) => o.name === "count");
      assert.equal(count.kind, "builtin");
      assert.equal(count.stream, false);
      assert.equal(count.argsSchema.type, "object");
      assert.ok(count.argsSchema.properties?.n, JSON.stringify(count.argsSchema));
      assert.deepEqual(await client.object("count"), count);
      assert.equal((await client.object("bytes")).stream, true);
      await assert.rejects(client.object("no-such-object"), NotFoundError);
    });
  });
}
