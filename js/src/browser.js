// `import { Client } from "longrun"` in browsers and bundlers: the wasm-bindgen build
// (../wasm/, `--target web`), instantiated once at import.
import init, * as native from "../wasm/longrun_wasm.js";
import { makeApi } from "./core.js";

export * from "./errors.js";

await init();

export const { Client, Run, errorKinds, verifyWebhook } = makeApi(native);
export const build = "wasm";
