// Shared by the test files: the reference server as a child process, and both builds.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * `longrun serve` on a free port (`cargo xtask js` builds it; LONGRUN_BIN overrides), or on
 * `listen` (`unix:PATH`: its url is then `unix:///PATH`).
 */
export async function startServer(args = [], { listen = "127.0.0.1:0" } = {}) {
  const bin = process.env.LONGRUN_BIN ?? path.join(root, "target/debug/longrun");
  const child = spawn(bin, ["serve", "--store", "memory", "--listen", listen, ...args], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  const url = await new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`${bin} exited (${code}) before listening`)));
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = /longrun listening on ((?:http|unix):\/\/\S+)/.exec(line);
      if (m) resolve(m[1]);
    });
  });
  return {
    url,
    close() {
      child.kill();
    },
  };
}

/** The two builds of the package: the napi addon and the wasm module, both in Node. */
export async function builds() {
  return [
    { name: "napi", api: await import("longrun") },
    { name: "wasm", api: await import("longrun/wasm") },
  ];
}

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Whether Chromium is missing: an error in CI, a loud skip elsewhere. */
export function chromiumMissing(what) {
  if (existsSync(CHROMIUM)) return false;
  const msg = `SKIP ${what}: no Chromium at ${CHROMIUM} (apt-get install -y chromium)`;
  if (process.env.CI === "true") throw new Error(msg);
  console.error(`\n!!!!!!!! ${msg} !!!!!!!!\n`);
  return true;
}

/**
 * Open `url` in headless Chromium and return what the page reports (`reported`, a promise the
 * test's page server resolves); the browser and its profile are gone when this returns.
 */
export async function inChromium(url, reported) {
  const profile = mkdtempSync(path.join(tmpdir(), "longrun-chromium-"));
  const chromium = spawn(
    CHROMIUM,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
      url,
    ],
    // Its own process group, so the renderer and helper processes go with it.
    { stdio: "ignore", detached: true },
  );
  try {
    const exited = new Promise((_, reject) => chromium.once("exit", (code) => reject(new Error(`chromium exited (${code}) before the page reported`))));
    return await Promise.race([reported, exited]);
  } finally {
    const exit = new Promise((r) => (chromium.exitCode !== null ? r() : chromium.once("exit", r)));
    try {
      process.kill(-chromium.pid, "SIGTERM");
    } catch {}
    await exit;
    // Helpers may still be closing files in the profile for a moment.
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}
