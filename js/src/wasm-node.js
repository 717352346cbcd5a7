// The wasm build in Node (`import ... from "longrun/wasm"`): the same module as in browsers,
// instantiated from the file, since Node's fetch cannot read file: URLs.
import { readFile } from "node:fs/promises";
import init, * as native from "../wasm/longrun_wasm.js";
import { makeApi } from "./core.js";

export * from "./errors.js";

// gloo-net, under the WebSocket transport, dispatches a CloseEvent of its own when a socket
// is dropped (so that its close listener, a `once` one, is used up before the closure goes).
// Node 20 and 21 have WebSocket but no CloseEvent global: without one that listener stays and
// the socket's real close event calls a dropped closure, which throws.
if (typeof globalThis.WebSocket === "function" && typeof globalThis.CloseEvent !== "function") {
  globalThis.CloseEvent = class CloseEvent extends Event {
    constructor(type, init = {}) {
      super(type, init);
      this.code = init.code ?? 0;
      this.reason = init.reason ?? "";
      this.wasClean = init.wasClean ?? false;
    }
  };
}

await init({ module_or_path: await readFile(new URL("../wasm/longrun_wasm_bg.wasm", import.meta.url)) });

export const { Client, Run, errorKinds, verifyWebhook } = makeApi(native);
export const build = "wasm";
