// The README's deadlines, hooks and streams sections, type-checked by `tsc --noEmit -p examples`.
import { createServer } from "node:http";
import { Client, RunCanceledError, WebhookRejectedError, verifyWebhook } from "longrun";

export async function main(url: string, secret: string): Promise<void> {
  const client = new Client(url);
  const run = await client.submit("render", { scene: 3 }, { deadlineMs: 600_000, hook: "https://me.example/hooks", hookEvents: "ended" });
  try {
    await client.wait(run);
  } catch (e) {
    if (e instanceof RunCanceledError) console.log(e.value);
  }
  await client.submit("echo", { a: 1 }, { waitMs: 30_000, idempotencyKey: "k-1" });
  const value = await client.call("echo", { a: 1 }, { deadlineMs: 60_000, timeoutMs: 120_000 });
  console.log(value);
  let size = 0;
  for await (const chunk of client.stream(await client.submit("bytes", { n: 1000 }))) size += chunk.byteLength;
  console.log(size);
  createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (p: Buffer) => parts.push(p));
    req.on("end", () => {
      try {
        verifyWebhook(secret, req.headers, Buffer.concat(parts), { toleranceMs: 300_000 });
        res.writeHead(204).end();
      } catch (e) {
        if (e instanceof WebhookRejectedError) res.writeHead(400).end();
        else throw e;
      }
    });
  });
}
