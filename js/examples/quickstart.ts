// The README quickstart, type-checked by `tsc --noEmit -p examples` (cargo xtask test).
import { Client, Run, RunFailedError, TimeoutError, type Follow, type RunEvent } from "longrun";

export async function main(url: string): Promise<void> {
  const client = new Client(url, { token: "secret", timeoutMs: 10_000 });
  const run: Run = await client.submit("count", { n: 3 });
  const again = Run.fromUrl(run.url);
  const controller = new AbortController();
  for await (const ev of client.follow(again, { since: 0, signal: controller.signal, onProgress: (p) => p.fraction })) {
    const e: RunEvent = ev;
    console.log(e.id, e.state, e.value);
  }
  // By hand: the first event only, then stop following (the connection closes).
  const follow: Follow = client.follow(run);
  const first = await follow.next();
  if (!first.done) console.log(first.value.state);
  await follow.return();
  if (await client.exists(run)) {
    const outcome = await client.cancel(run);
    if (outcome.outcome === "ended") console.log(outcome.state);
  }
  try {
    const value = await client.wait(run, { timeoutMs: 1000, signal: controller.signal });
    console.log(value);
  } catch (e) {
    if (e instanceof RunFailedError) console.log(e.value);
    else if (e instanceof TimeoutError) console.log("still running");
    else throw e;
  }
}
