// A real browser: headless Chromium loads a page from one origin (http://localhost:A) that
// imports the package's browser build through an import map, submits a `count` run on the
// reference server at another origin (http://127.0.0.1:B, CORS allowed for the page's
// origin), follows it to the end and POSTs what it saw back to this test.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { chromiumMissing, inChromium, root, startServer } from "./helpers.js";

const pkg = path.join(root, "js");
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };

const missing = chromiumMissing("browser test");

let page, api, reported;
before(async () => {
  if (missing) return;
  let report;
  reported = new Promise((r) => (report = r));
  page = createServer((req, res) => {
    if (req.method === "POST" && req.url === "/report") {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        res.end();
        report(JSON.parse(body));
      });
      return;
    }
    if (req.url === "/") {
      res.setHeader("content-type", "text/html");
      res.end(html(api.url));
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
  const report = (r) => fetch("/report", { method: "POST", body: JSON.stringify(r) });
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
  const r = await inChromium(url, reported);
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
