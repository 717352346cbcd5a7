// The server's dashboard (`GET /_dashboard`, spec §13.7) in headless Chromium, driven by
// playwright-core: what an operator sees and does. The page lists runs live (a run submitted
// elsewhere appears), follows one with its progress bar, submits from an object's form,
// cancels, asks for a token when the server has tenants, and works from the keyboard. It also
// writes the screenshot the README shows (target/dashboard.png; docs/dashboard.png is a copy).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, chromiumMissing, root, startServer } from "./helpers.js";

const missing = chromiumMissing("dashboard test");
const skip = missing && "no Chromium";

let browser;
before(async () => {
  if (missing) return;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
});
after(async () => {
  await browser?.close();
});

async function post(api, object, body, headers = {}) {
  const r = await fetch(`${api.url}/${object}/`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 201, await r.clone().text());
  return r.json();
}

/** The page, with every uncaught error and console error of it failing the test. */
async function open(api) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(`${api.url}/_dashboard`);
  await page.locator("#connection", { hasText: "connected" }).waitFor();
  return { page, errors };
}

const row = (page, id) => page.locator(`#runs tr[data-id="${id}"]`);

describe("dashboard", { skip }, () => {
  let api;
  before(async () => {
    if (!missing) api = await startServer();
  });
  after(() => api?.close());

  test("lists runs, adds new ones live, and follows a run's progress to its end", { timeout: 120_000 }, async () => {
    const before = await post(api, "echo", { hello: 1 });
    const { page, errors } = await open(api);
    // Listed from GET /_runs.
    await row(page, before.id).waitFor();
    assert.equal(await row(page, before.id).getAttribute("data-state"), "success");

    // Submitted elsewhere: the `_runs` feed puts it on the table without a reload.
    const live = await post(api, "sleep", { ms: 600_000 });
    await row(page, live.id).waitFor();
    assert.equal(await row(page, live.id).getAttribute("data-state"), "queued");

    // Submit from the object's form and watch the run: the page records every value the
    // progress bar takes, so the assertion holds however fast the run goes.
    await page.locator("#objects details", { hasText: "count" }).first().locator("summary").click();
    const form = page.locator('form[data-object="count"]');
    await form.locator("textarea").fill(JSON.stringify({ n: 20, interval_ms: 50 }));
    await page.evaluate(() => {
      window.progressSeen = [];
      const bar = document.getElementById("run-progress");
      new MutationObserver(() => window.progressSeen.push(bar.value)).observe(bar, { attributes: true, attributeFilter: ["value"] });
    });
    await form.getByRole("button", { name: "Submit count" }).click();
    await page.locator("#run-state", { hasText: "success" }).waitFor();
    const id = await page.locator("#run-id").textContent();
    assert.equal(await page.locator("#run-object").textContent(), "count");
    // queued, 20 × running, success.
    assert.equal(await page.locator("#run-events li").count(), 22);
    assert.equal(await page.locator("#run-progress").evaluate((p) => p.value), 1);
    assert.equal(await page.locator("#run-message").textContent(), "20/20");
    const seen = await page.evaluate(() => window.progressSeen);
    const partial = seen.filter((v) => v > 0 && v < 1);
    assert.ok(partial.length >= 2, `the bar moved through values below 1: ${seen}`);
    assert.deepEqual(seen, [...seen].sort((a, b) => a - b), "the bar never went back");
    assert.ok(await page.locator("#run-cancel").isDisabled(), "an ended run cannot be canceled");
    await row(page, id).waitFor();
    await page.locator(`#runs tr[data-id="${id}"][data-state="success"]`).waitFor();

    // The server's own view agrees with the page.
    const status = await fetch(`${api.url}/count/${id}`, { method: "HEAD" });
    assert.equal(status.headers.get("longrun-state"), "success");

    await page.screenshot({ path: path.join(root, "target", "dashboard.png") });
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("a row goes running when its run starts, live from the run feed", { timeout: 120_000 }, async () => {
    const { page, errors } = await open(api);
    // Held in `running` after its first event (the next is a minute away).
    const run = await post(api, "count", { n: 2, interval_ms: 60_000 });
    await page.locator(`#runs tr[data-id="${run.id}"][data-state="running"]`).waitFor();
    await fetch(`${api.url}/count/${run.id}`, { method: "DELETE" });
    await page.locator(`#runs tr[data-id="${run.id}"][data-state="canceled"]`).waitFor();
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("cancels a run, from the keyboard", { timeout: 120_000 }, async () => {
    const run = await post(api, "sleep", { ms: 600_000 });
    const { page, errors } = await open(api);
    const open_ = row(page, run.id).getByRole("button");
    await open_.focus();
    await page.keyboard.press("Enter");
    await page.locator("#run-id", { hasText: run.id }).waitFor();
    await page.getByRole("button", { name: "Cancel run" }).focus();
    await page.keyboard.press("Enter");
    await page.locator("#run-state", { hasText: "canceled" }).waitFor();
    await page.locator(`#runs tr[data-id="${run.id}"][data-state="canceled"]`).waitFor();
    const status = await fetch(`${api.url}/sleep/${run.id}`, { method: "HEAD" });
    assert.equal(status.headers.get("longrun-state"), "canceled");
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("a submit the object's schema refuses shows the failing path and creates nothing", { timeout: 120_000 }, async () => {
    const { page, errors } = await open(api);
    await page.locator("#objects details", { hasText: "count" }).first().locator("summary").click();
    const form = page.locator('form[data-object="count"]');
    await form.locator("textarea").fill(JSON.stringify({ n: "three" }));
    const rows = await page.locator("#runs tbody tr").count();
    await form.getByRole("button", { name: "Submit count" }).click();
    await form.locator(".error", { hasText: "422" }).waitFor();
    assert.match(await form.locator(".error").textContent(), /\/n/);
    assert.equal(await page.locator("#runs tbody tr").count(), rows);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("lists worker nodes with their health", { timeout: 120_000 }, async () => {
    // The server itself answers a health path, so it can register as its own node.
    const port = new URL(api.url).port;
    const r = await fetch(`${api.url}/_nodes`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        port: Number(port),
        health_check: "/_health",
        services: [{ topic: "dashboard-svc", group: "g", path: "/echo", timeout: 5 }],
      }),
    });
    assert.equal(r.status, 201, await r.clone().text());
    const { id } = await r.json();
    const { page, errors } = await open(api);
    const node = page.locator("#nodes tbody tr", { hasText: id.slice(0, 8) });
    await node.waitFor();
    assert.match(await node.textContent(), /dashboard-svc/);
    assert.equal(await node.locator("td").nth(2).textContent(), "ok");
    // A service is an object: it is in the catalogue with its kind.
    await page.locator("#objects summary", { hasText: "dashboard-svc" }).waitFor();
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("the page is served with its assets from the binary, nothing from elsewhere", { timeout: 60_000 }, async () => {
    const page = await browser.newPage();
    const origins = new Set();
    page.on("request", (r) => origins.add(new URL(r.url()).origin));
    await page.goto(`${api.url}/_dashboard`);
    await page.locator("#connection", { hasText: "connected" }).waitFor();
    assert.deepEqual([...origins].map((o) => o.replace(/^ws/, "http")).filter((o) => o !== api.url), []);
    const r = await fetch(`${api.url}/_dashboard`);
    assert.match(r.headers.get("content-security-policy"), /default-src 'none'/);
    await page.close();
  });
});

describe("dashboard with tenants", { skip }, () => {
  const TOKEN = "lrt_dashboard_test";
  let api;
  let dir;
  before(async () => {
    if (missing) return;
    dir = await mkdtemp(path.join(tmpdir(), "longrun-dashboard-"));
    const file = path.join(dir, "tenants.toml");
    const hash = `sha256:${createHash("sha256").update(TOKEN).digest("hex")}`;
    await writeFile(file, `[[tenant]]\nname = "ops"\n[[tenant.token]]\nhash = "${hash}"\nscopes = ["submit", "read", "cancel"]\n`);
    api = await startServer(["--auth", file]);
  });
  after(async () => {
    api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("asks for a token once and keeps it for the tab", { timeout: 120_000 }, async () => {
    const run = await post(api, "echo", {}, { authorization: `Bearer ${TOKEN}` });
    const { page } = await open(api);
    await page.locator("#notice", { hasText: "needs a token" }).waitFor();
    assert.equal(await row(page, run.id).count(), 0);
    await page.getByLabel("Token", { exact: true }).fill(TOKEN);
    await page.getByRole("button", { name: "Use token" }).click();
    await row(page, run.id).waitFor();
    // A reload keeps the token (sessionStorage): the run is listed with no prompt.
    await page.reload();
    await row(page, run.id).waitFor();
    assert.ok(await page.locator("#notice").isHidden());
    // Nodes need the admin scope, which this token has not: the page says so.
    await page.locator("#nodes-note", { hasText: "admin scope" }).waitFor();
    await page.close();
  });
});
