// `import { Client } from "longrun"` in Node: the napi addon, built by `cargo xtask js build`
// into ../native/.
import { createRequire } from "node:module";
import { makeApi } from "./core.js";

export * from "./errors.js";

const require = createRequire(import.meta.url);
const file = `../native/longrun.${process.platform}-${process.arch}.node`;
let native;
try {
  native = require(file);
} catch (e) {
  throw new Error(`longrun: cannot load the native addon ${file} (build it with \`cargo xtask js build\`): ${e.message}`);
}

// Progress calls come through a threadsafe function, queued before the wait's answer.
const settle = () => new Promise((resolve) => setImmediate(resolve));

export const { Client, Run, errorKinds, verifyWebhook } = makeApi(native, { settle });
export const build = "napi";
