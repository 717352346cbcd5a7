// `import { Client } from "longrun"` in Node: the napi addon, built by `cargo xtask js build`
// into ../native/, or the installed platform package's (addon.js).
import { loadAddon } from "./addon.js";
import { makeApi } from "./core.js";

export * from "./errors.js";

const native = loadAddon();

// Progress calls come through a threadsafe function, queued before the wait's answer.
const settle = () => new Promise((resolve) => setImmediate(resolve));

export const { Client, Run, errorKinds, verifyWebhook } = makeApi(native, { settle });
export const build = "napi";
