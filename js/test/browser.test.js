// A real browser: headless Chromium loads a page from one origin (http://localhost:A) that
// imports the package's browser build through an import map and drives the reference server
// at another origin (http://127.0.0.1:B, CORS allowed for the page's origin), then POSTs what
// it saw back to this test. One page follows a `count` run over SSE; another follows 20 runs
// at once over one WebSocket, past HTTP/1.1's six connections per origin.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { chromiumMissing, inChromium, root, startServer } from "./helpers.js";

const pkg = path.join(root, "js");
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };

const missing = chromiumMissing("browser test");

/** The pages, by path, and what each reports (resolved by its POST /report/{name}). */
const PAGES = { "/": () => html(api.url), "/twenty": () => twenty(api.url) };
const reports = {};
const reported = (name) => {
  if (!reports[name]) {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    reports[name] = { promise, resolve };
  }
  return reports[name];
};

let page, api;
before(async () => {
  if (missing) return;
  page = createServer((req, res) => {
    if (req.method === "POST" && req.url.startsWith("/report/")) {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        res.end();
        reported(req.url.slice("/report/".length)).resolve(JSON.parse(body));
      });
      return;
    }
    if (PAGES[req.url]) {
      res.setHeader("content-type", "text/html");
      res.end(PAGES[req.url]());
      return;
    }
    const file = path.join(pkg, path.normalize(req.url.split("?")[0]));
    if (!file.startsWith(pkg) || !existsSync(file)) {
      res.statusCode = 404;
      res.end();
      return;
    }
    res.setHeader("content-type", TYPES[path.extname(file)] ?? "application/octet-stream");
    res.end(readFileSync(file));
  });
  await new Promise((r) => page.listen(0, "127.0.0.1", r));
  const origin = `http://localhost:${page.address().port}`;
  api = await startServer(["--cors-origin", origin]);
});
after(() => {
  page?.close();
  api?.close();
});

function html(server) {
  return `<!doctype html>
<script type="importmap">{"imports": {"longrun": "/src/browser.js"}}</script>
<script type="module">
  const report = (r) => fetch("/report/sse", { method: "POST", body: JSON.stringify(r) });
  try {
    const { Client, build } = await import("longrun");
    const client = new Client(${JSON.stringify(server)});
    const run = await client.submit("count", { n: 5 });
    const events = [];
    const progress = [];
    for await (const ev of client.follow(run, { onProgress: (p) => progress.push(p.message) })) {
      events.push({ id: ev.id, state: ev.state, value: ev.value });
    }
    const status = await client.status(run);
    report({ build, url: run.url, events, progress, status, value: await client.wait(run) });
  } catch (e) {
    report({ error: String(e && e.stack || e), kind: e && e.kind });
  }
</script>`;
}

test("Chromium follows a run cross-origin through the browser build", { skip: missing && "no Chromium", timeout: 120_000 }, async () => {
  const url = `http://localhost:${page.address().port}/`;
  const r = await inChromium(url, reported("sse").promise);
  assert.equal(r.error, undefined, `the page failed: ${r.error}`);
  assert.equal(r.build, "wasm");
  assert.ok(r.url.startsWith(api.url), r.url);
  assert.deepEqual(
    r.events.map((e) => [e.id, e.state]),
    [[0, "queued"], [1, "running"], [2, "running"], [3, "running"], [4, "running"], [5, "running"], [6, "success"]],
  );
  assert.deepEqual(r.events[6].value, { n: 5 });
  assert.deepEqual(r.progress, ["1/5", "2/5", "3/5", "4/5", "5/5"]);
  assert.deepEqual(r.status, { state: "success", lastEventId: 6 });
  assert.deepEqual(r.value, { n: 5 });
});

// 20 `sleep` runs that only end when canceled, followed at once over one WebSocket. Each
// follow must hear its run's event 0 while all 20 are still running — over SSE the browser
// would hold every follow past the sixth waiting for a free connection, and this page would
// never get there. Then every run is canceled (over the same socket) and each follow ends
// with `canceled`. The page counts the WebSockets it opens and the fetches it makes.
function twenty(server) {
  return `<!doctype html>
<script type="importmap">{"imports": {"longrun": "/src/browser.js"}}</script>
<script type="module">
  const report = (r) => fetch("/report/twenty", { method: "POST", body: JSON.stringify(r) });
  const sockets = [];
  const Native = WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      sockets.push(String(args[0]));
    }
  };
  const fetches = [];
  const nativeFetch = window.fetch;
  window.fetch = (input, init) => {
    const url = String(input instanceof Request ? input.url : input);
    if (url.startsWith(${JSON.stringify(server)})) fetches.push(url);
    return nativeFetch(input, init);
  };
  try {
    const { Client } = await import("longrun");
    const client = new Client(${JSON.stringify(server)}, { transport: "ws" });
    const runs = await Promise.all(Array.from({ length: 20 }, () => client.submit("sleep", { ms: 3600000 })));
    let heard = 0;
    let allHeard;
    const everyoneHeard = new Promise((r) => (allHeard = r));
    const follows = runs.map(async (run) => {
      const states = [];
      for await (const ev of client.follow(run)) {
        states.push(ev.state);
        if (states.length === 1 && ++heard === runs.length) allHeard();
      }
      return { id: run.id, states };
    });
    await everyoneHeard;
    const outcomes = await Promise.all(runs.map((run) => client.cancel(run)));
    report({ followed: await Promise.all(follows), outcomes, sockets, fetches });
  } catch (e) {
    report({ error: String(e && e.stack || e), kind: e && e.kind });
  }
</script>`;
}

test("Chromium follows 20 runs at once over one WebSocket, and all 20 finish", { skip: missing && "no Chromium", timeout: 120_000 }, async () => {
  const url = `http://localhost:${page.address().port}/twenty`;
  const r = await inChromium(url, reported("twenty").promise);
  assert.equal(r.error, undefined, `the page failed: ${r.error}`);
  const wsUrl = api.url.replace(/^http/, "ws").replace(/\/?$/, "/_ws");
  assert.deepEqual(r.sockets, [wsUrl], "one WebSocket carried everything");
  assert.deepEqual(r.fetches, [], "no HTTP request went to the server");
  assert.equal(r.followed.length, 20);
  assert.equal(new Set(r.followed.map((f) => f.id)).size, 20);
  for (const f of r.followed) {
    assert.equal(f.states[0], "queued", `run ${f.id}: ${f.states}`);
    assert.equal(f.states.at(-1), "canceled", `run ${f.id}: ${f.states}`);
  }
  assert.deepEqual(r.outcomes, Array(20).fill({ outcome: "accepted" }));
});
