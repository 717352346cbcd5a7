// Shared by the test files: the reference server as a child process, and both builds.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** `longrun serve` on a free port (`cargo xtask js` builds it; LONGRUN_BIN overrides). */
export async function startServer(args = []) {
  const bin = process.env.LONGRUN_BIN ?? path.join(root, "target/debug/longrun");
  const child = spawn(bin, ["serve", "--store", "memory", "--listen", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  const url = await new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`${bin} exited (${code}) before listening`)));
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = /longrun listening on (http:\/\/\S+)/.exec(line);
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
