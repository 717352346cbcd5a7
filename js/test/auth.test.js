// A server with tenants (`--auth`), for both builds: the token option, UnauthorizedError and
// ForbiddenError, another tenant's runs, and submit's idempotencyKey.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { builds, startServer } from "./helpers.js";

const TOKEN = "lrt_js_test_all";
const READ_TOKEN = "lrt_js_test_read";
const OTHER_TOKEN = "lrt_js_test_other";
const hash = (token) => `sha256:${createHash("sha256").update(token).digest("hex")}`;

let server;
let dir;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "longrun-js-auth-"));
  const file = path.join(dir, "tenants.toml");
  // What `longrun token new` prints, for two tenants.
  await writeFile(
    file,
    `[[tenant]]
name = "js"
[[tenant.token]]
hash = "${hash(TOKEN)}"
scopes = ["submit", "read", "cancel"]
[[tenant.token]]
hash = "${hash(READ_TOKEN)}"
scopes = ["read"]
[[tenant]]
name = "other"
[[tenant.token]]
hash = "${hash(OTHER_TOKEN)}"
scopes = ["submit", "read", "cancel"]
`,
  );
  server = await startServer(["--auth", file]);
});
after(async () => {
  server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

for (const { name, api } of await builds()) {
  const { Client, LongrunError, UnauthorizedError, ForbiddenError, InvalidArgumentError } = api;

  describe(`tenants (${name})`, () => {
    test("a token lets a tenant in; none or an unknown one is UnauthorizedError", async () => {
      const client = new Client(server.url, { token: TOKEN });
      const run = await client.submit("echo", { a: 1 });
      assert.deepEqual(await client.wait(run), { a: 1 });
      for (const options of [{}, { token: "lrt_nobody" }]) {
        const anon = new Client(server.url, options);
        const err = await anon.submit("echo").then(
          () => assert.fail("submitted without a token"),
          (e) => e,
        );
        assert.ok(err instanceof UnauthorizedError && err instanceof LongrunError, String(err));
        assert.equal(err.kind, "Unauthorized");
        assert.equal(err.status, 401);
        assert.equal(err.problem?.type, "urn:longrun:problem:unauthorized");
        assert.ok(!err.message.includes("lrt_nobody"), err.message);
        await assert.rejects(anon.exists(run), UnauthorizedError);
      }
      const reader = new Client(server.url, { token: READ_TOKEN });
      assert.equal(await reader.exists(run), true);
      const forbidden = await reader.submit("echo").then(
        () => assert.fail("a reader submitted"),
        (e) => e,
      );
      assert.ok(forbidden instanceof ForbiddenError, String(forbidden));
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.problem?.type, "urn:longrun:problem:forbidden");
      assert.equal(await new Client(server.url, { token: OTHER_TOKEN }).exists(run), false);
    });

    // Natively the token rides on the upgrade; the browser build cannot set headers on a
    // WebSocket and sends it in a first AUTH packet (spec §28.4): both must end the same way.
    test("over the WebSocket the token is the tenant's; an unknown one is UnauthorizedError", async () => {
      const client = new Client(server.url, { token: TOKEN, transport: "ws" });
      const feed = await client.subscribe("_runs.echo");
      const run = await client.submit("echo", { ws: name });
      assert.deepEqual(await client.wait(run), { ws: name });
      const states = [];
      for await (const p of feed) {
        if (p.data.id !== run.id) continue;
        states.push(p.data.state);
        if (states.length === 2) break;
      }
      assert.deepEqual(states, ["queued", "success"]);
      const other = new Client(server.url, { token: OTHER_TOKEN, transport: "ws" });
      assert.equal(await other.exists(run), false);
      const stranger = new Client(server.url, { token: "lrt_nobody", transport: "ws" });
      const err = await stranger.submit("echo").then(
        () => assert.fail("submitted with an unknown token"),
        (e) => e,
      );
      assert.ok(err instanceof UnauthorizedError, String(err));
      assert.equal(err.status, 401);
      assert.ok(!err.message.includes("lrt_nobody"), err.message);
      await assert.rejects(stranger.subscribe("_runs"), UnauthorizedError);
    });

    test("the same idempotencyKey gives the same run; other arguments are refused", async () => {
      const client = new Client(server.url, { token: TOKEN });
      const idempotencyKey = `js-${name}-${process.pid}-${Date.now()}`;
      const first = await client.submit("echo", { a: 1 }, { idempotencyKey });
      const again = await client.submit("echo", { a: 1 }, { idempotencyKey });
      assert.equal(again.id, first.id);
      const reused = await client.submit("echo", { a: 2 }, { idempotencyKey }).then(
        () => assert.fail("a reused key was accepted"),
        (e) => e,
      );
      assert.ok(reused instanceof InvalidArgumentError, String(reused));
      assert.equal(reused.status, 422);
      assert.equal(reused.problem?.type, "urn:longrun:problem:idempotency-key-reused");
      for (const bad of ["", "has space", "k".repeat(256)]) {
        await assert.rejects(client.submit("echo", {}, { idempotencyKey: bad }), InvalidArgumentError);
      }
      assert.notEqual((await client.submit("echo", { a: 1 })).id, first.id);
    });
  });
}
