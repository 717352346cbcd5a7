// `cargo xtask bench js`: drain the 100,002 events of one ended `count` run (n = 100000) by
// SSE, from event 0, with each contender in the same process on the same release server:
// the Node SDK (napi), the wasm build in Node, the `eventsource` package, and a plain fetch
// stream parser. Every contender JSON-parses each event's data, as the SDK does. Best of 5.
// A last line gives the floor: JSON.parse of the same values alone.
import { EventSource } from "eventsource";
import { startServer } from "../test/helpers.js";

const N = 100_000;
const REPS = 5;

const server = await startServer();
try {
  const napi = await import("longrun");
  const wasm = await import("longrun/wasm");
  const client = new napi.Client(server.url);
  const run = await client.submit("count", { n: N });
  await client.wait(run);
  const total = N + 2;

  const contenders = {
    "longrun (napi)": () => drainSdk(napi, run.url),
    "longrun (wasm in Node)": () => drainSdk(wasm, run.url),
    "eventsource package": () => drainEventSource(run.url),
    "fetch + stream parser": () => drainFetch(run.url),
  };
  // One untimed pass each (JIT, connection pools, server caches), then rounds that take the
  // contenders in turn, so load from elsewhere on the machine falls on all of them alike.
  for (const drain of Object.values(contenders)) await drain();
  const results = Object.fromEntries(Object.keys(contenders).map((name) => [name, Infinity]));
  for (let i = 0; i < REPS; i++) {
    for (const [name, drain] of Object.entries(contenders)) {
      const start = performance.now();
      const count = await drain();
      const ms = performance.now() - start;
      if (count !== total) throw new Error(`${name}: drained ${count} events, expected ${total}`);
      results[name] = Math.min(results[name], ms);
    }
  }
  // The floor every contender stands on: JSON.parse of the same 100,002 values, nothing else
  // (the strings read beforehand). A drain that parses each value can be no faster.
  const values = await collectData(run.url);
  let floor = Infinity;
  for (let i = 0; i < REPS; i++) {
    const start = performance.now();
    for (const data of values) JSON.parse(data);
    floor = Math.min(floor, performance.now() - start);
  }
  results["JSON.parse of the values alone"] = floor;
  const peer = results["eventsource package"];
  console.log(`\njs: drain ${total} events by SSE (count n=${N}), best of ${REPS}, same server, same process`);
  for (const [name, ms] of Object.entries(results)) {
    const rate = Math.round(total / (ms / 1000));
    console.log(
      `  ${name.padEnd(30)} ${ms.toFixed(0).padStart(6)} ms  ${rate.toLocaleString("en-US").padStart(11)} events/s  ${(peer / ms).toFixed(2)}x eventsource`,
    );
  }
} finally {
  server.close();
}

/** The data of every event of the run, as strings. */
async function collectData(url) {
  const text = await (await fetch(url, { headers: { accept: "text/event-stream" } })).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith("data: "))
    .map((line) => line.slice(6));
}

async function drainSdk(api, url) {
  const client = new api.Client(url.slice(0, url.indexOf("/count/")));
  let count = 0;
  for await (const ev of client.follow(url)) {
    if (ev.value === undefined) throw new Error("no value");
    count++;
  }
  return count;
}

function drainEventSource(url) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(url);
    let count = 0;
    const on = (e) => {
      JSON.parse(e.data);
      count++;
    };
    es.addEventListener("queued", on);
    es.addEventListener("running", on);
    es.addEventListener("success", (e) => {
      on(e);
      es.close();
      resolve(count);
    });
    es.onerror = (e) => {
      es.close();
      reject(new Error(`eventsource: ${e.message ?? "error"}`));
    };
  });
}

async function drainFetch(url) {
  const res = await fetch(url, { headers: { accept: "text/event-stream" } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let count = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return count;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      let data;
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data = line.slice(6);
      }
      if (data === undefined) continue;
      JSON.parse(data);
      count++;
      if (event === "success") {
        await reader.cancel();
        return count;
      }
    }
  }
}
