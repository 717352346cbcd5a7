// A page that follows a run with the browser's native EventSource, which cannot send an
// Authorization header, on a server with tenants: it follows by a read token bound to that
// run (minted by whoever holds a real token), and without one it is turned away.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromiumMissing, inChromium, startServer } from "./helpers.js";

const missing = chromiumMissing("EventSource test");
const TOKEN = "lrt_eventsource_page_test";

let page, api, dir, reported, target;
before(async () => {
  if (missing) return;
  dir = mkdtempSync(path.join(tmpdir(), "longrun-auth-"));
  const hash = createHash("sha256").update(TOKEN).digest("hex");
  const file = path.join(dir, "auth.toml");
  writeFileSync(
    file,
    `[[tenant]]\nname = "web"\n[[tenant.token]]\nhash = "sha256:${hash}"\nscopes = ["submit", "read"]\n`,
  );
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
    res.setHeader("content-type", "text/html");
    res.end(html(target));
  });
  await new Promise((r) => page.listen(0, "127.0.0.1", r));
  api = await startServer(["--auth", file, "--cors-origin", `http://localhost:${page.address().port}`]);
});
after(() => {
  page?.close();
  api?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function call(method, url, body) {
  const res = await fetch(`${api.url}${url}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${url}: ${res.status} ${await res.clone().text()}`);
  return res.json();
}

function html({ withToken, without }) {
  return `<!doctype html>
<script type="module">
  const report = (r) => fetch("/report", { method: "POST", body: JSON.stringify(r) });
  // Without a token: the server answers 401 and EventSource gives up (readyState CLOSED).
  const refused = await new Promise((resolve) => {
    const es = new EventSource(${JSON.stringify(without)});
    es.onerror = () => { resolve(es.readyState === EventSource.CLOSED); es.close(); };
    es.onmessage = () => resolve("a message without a token");
  });
  const events = [];
  const es = new EventSource(${JSON.stringify(withToken)});
  for (const state of ["queued", "running", "success", "error", "canceled"]) {
    es.addEventListener(state, (e) => {
      events.push({ id: Number(e.lastEventId), state, value: JSON.parse(e.data) });
      if (state !== "queued" && state !== "running") {
        es.close();
        report({ refused, events });
      }
    });
  }
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) report({ refused, events, error: "closed" }); };
</script>`;
}

test("Chromium's native EventSource follows a run of a tenant by its read token", { skip: missing && "no Chromium", timeout: 120_000 }, async () => {
  const run = await call("POST", "/count", { n: 3, interval_ms: 20 });
  const minted = await call("POST", `${run.url}/read-token`);
  assert.ok(minted.url.includes("access_token=lrr_"), minted.url);
  target = { withToken: `${api.url}${minted.url}`, without: `${api.url}${run.url}` };
  const r = await inChromium(`http://localhost:${page.address().port}/`, reported);
  assert.equal(r.error, undefined, `the page failed: ${r.error}`);
  assert.equal(r.refused, true, "no token, no stream");
  assert.deepEqual(
    r.events.map((e) => [e.id, e.state]),
    [[0, "queued"], [1, "running"], [2, "running"], [3, "running"], [4, "success"]],
  );
  assert.deepEqual(r.events[4].value, { n: 3 });
});
