// The wasm build in Node (`import ... from "longrun/wasm"`): the same module as in browsers,
// instantiated from the file, since Node's fetch cannot read file: URLs.
import { readFile } from "node:fs/promises";
import init, * as native from "../wasm/longrun_wasm.js";
import { makeApi } from "./core.js";

export * from "./errors.js";

await init({ module_or_path: await readFile(new URL("../wasm/longrun_wasm_bg.wasm", import.meta.url)) });

export const { Client, Run, errorKinds, verifyWebhook } = makeApi(native);
export const build = "wasm";
