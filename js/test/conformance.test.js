// Every spec/conformance scenario through the public API, against the napi build and the wasm
// build (in Node), on one reference server. `http` steps are skipped as the scenario README
// says for SDK runners, with every later step on a run only a skipped step saved.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { builds, root, startServer } from "./helpers.js";

const dir = path.join(root, "spec/conformance");
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".json") && f !== "schema.json")
  .sort()
  .map((f) => ({ file: f, doc: JSON.parse(readFileSync(path.join(dir, f), "utf8")) }));

/** Scenarios expected to fail, by build (as the protobuf suite keeps them). Empty: none. */
const KNOWN_FAILURES = { napi: [], wasm: [] };

const TERMINAL = new Set(["success", "error", "canceled"]);
const STEP_LIMIT_MS = 60_000;

let server;
/** The same server's objects on a unix socket (spec §20.2): the napi build runs them there too. */
let unixServer;
const socketDir = mkdtempSync(path.join(tmpdir(), "longrun-js-"));
before(async () => {
  server = await startServer();
  unixServer = await startServer([], { listen: `unix:${path.join(socketDir, "longrun.sock")}` });
});
after(() => {
  server?.close();
  unixServer?.close();
  rmSync(socketDir, { recursive: true, force: true });
});

const plain = (ev) => ({ id: ev.id, state: ev.state, value: ev.value });

const runs = (await builds()).flatMap(({ name, api }) => [
  { name, api, label: name, where: () => server.url },
  // The browser build has no unix sockets (it refuses such a URL: client.test.js).
  ...(name === "napi" ? [{ name, api, label: `${name}, unix socket`, where: () => unixServer.url }] : []),
  // Every call over one WebSocket per client (spec §28): the browser build's is the
  // `WebSocket` of the JS engine (Node 20 has it with --experimental-websocket, which
  // `cargo xtask js test` passes).
  { name, api, label: `${name}, websocket`, where: () => server.url, options: { transport: "ws" } },
]);

for (const { name, api, label, where, options } of runs) {
  describe(`conformance (${label})`, () => {
    const all = new Set(files.flatMap(({ doc }) => doc.scenarios.map((s) => s.description)));
    test("the known-failures list names only scenarios", () => {
      for (const d of KNOWN_FAILURES[name]) assert.ok(all.has(d), `KNOWN_FAILURES lists ${d}, which is no scenario`);
    });
    for (const { file, doc } of files) {
      for (const scenario of doc.scenarios) {
        const runnable = scenario.steps.some((s) => s.op !== "http");
        test(`${file}: ${scenario.description}`, { skip: !runnable && "only http steps", timeout: 10 * STEP_LIMIT_MS }, async () => {
          const known = KNOWN_FAILURES[name].includes(scenario.description);
          let failure;
          try {
            await runScenario(api, where(), scenario, options);
          } catch (e) {
            failure = e;
          }
          if (known && !failure) assert.fail("listed in KNOWN_FAILURES but passes: remove it");
          if (!known && failure) throw failure;
        });
      }
    }
  });
}

async function runScenario(api, url, scenario, options) {
  const client = new api.Client(url, options);
  const saved = new Map();
  const skipped = new Set();
  const resolve = (ref) => {
    if (typeof ref === "string") return saved.get(ref);
    if (ref.like !== undefined) return client.run(ref.object, saved.get(ref.like).id);
    return client.run(ref.object, ref.id);
  };
  const dependsOnSkipped = (ref) =>
    ref !== undefined && (typeof ref === "string" ? skipped.has(ref) : ref.like !== undefined && skipped.has(ref.like));
  try {
    for (const [i, step] of scenario.steps.entries()) {
      if (step.op === "http" || dependsOnSkipped(step.run)) {
        if (step.save) skipped.add(step.save);
        continue;
      }
      try {
        await withLimit(runStep(client, step, resolve, saved, api));
      } catch (e) {
        e.message = `steps[${i}] (${step.op}): ${e.message}`;
        throw e;
      }
    }
  } finally {
    for (const run of saved.values()) await client.cancel(run).catch(() => {});
  }
}

function withLimit(promise) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${STEP_LIMIT_MS} ms`)), STEP_LIMIT_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** Run `f`; with an error expectation, check the error instead of the result. */
async function outcome(step, api, f) {
  const expected = step.expect.error;
  let result;
  try {
    result = await f();
  } catch (e) {
    if (!expected) throw e;
    assert.ok(e instanceof api.LongrunError, `expected a LongrunError, got ${e}`);
    assert.equal(e.kind, expected.kind, e.message);
    assert.ok(e instanceof api.errorClasses[expected.kind]);
    if (expected.status !== undefined && e.status !== undefined) assert.equal(e.status, expected.status);
    if ("value" in expected) assert.deepEqual(e.value, expected.value);
    return { failed: true };
  }
  if (expected) assert.fail(`expected a ${expected.kind} error, got ${JSON.stringify(result)}`);
  return { result };
}

async function runStep(client, step, resolve, saved, api) {
  const expect = step.expect;
  switch (step.op) {
    case "submit": {
      const { result } = await outcome(step, api, () => client.submit(step.object, step.args));
      if (result) {
        assert.equal(result.object, step.object);
        assert.match(result.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
        if (step.save) saved.set(step.save, result);
      }
      return;
    }
    case "follow": {
      const run = resolve(step.run);
      const { result: events } = await outcome(step, api, async () => {
        const got = [];
        for await (const ev of client.follow(run, { since: step.since, transport: step.transport })) {
          got.push(plain(ev));
          if (step.until !== undefined && ev.id === step.until) break;
        }
        return got;
      });
      if (!events) return;
      const first = step.since === undefined ? 0 : step.since + 1;
      events.forEach((ev, i) => assert.equal(ev.id, first + i, "ids must be dense"));
      if (expect.events) assert.deepEqual(events, expect.events);
      else {
        assert.equal(events.length, expect.count);
        assert.deepEqual(events.slice(events.length - expect.tail.length), expect.tail);
      }
      return;
    }
    case "exists": {
      const run = resolve(step.run);
      const { result: exists } = await outcome(step, api, () => client.exists(run));
      if (exists === undefined) return;
      assert.equal(exists, expect.exists);
      if (exists && (expect.state !== undefined || expect.last_event_id !== undefined)) {
        const status = await client.status(run);
        if (expect.state !== undefined) assert.equal(status.state, expect.state);
        if (expect.last_event_id !== undefined) assert.equal(status.lastEventId, expect.last_event_id);
      }
      return;
    }
    case "cancel": {
      const run = resolve(step.run);
      const { result } = await outcome(step, api, () => client.cancel(run));
      if (!result) return;
      assert.equal(result.outcome, expect.outcome);
      if (expect.outcome === "ended") assert.equal(result.state, expect.state);
      else if (TERMINAL.has(expect.state)) assert.equal((await client.status(run)).state, expect.state);
      return;
    }
    case "wait": {
      const run = resolve(step.run);
      const { result } = await outcome(step, api, () => client.wait(run, { timeoutMs: step.timeout_ms }));
      if (!expect.error) assert.deepEqual(result, expect.value);
      return;
    }
    default:
      throw new Error(`unknown op ${step.op}`);
  }
}
