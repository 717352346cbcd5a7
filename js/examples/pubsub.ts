// The README's pubsub section, type-checked by `tsc --noEmit -p examples`.
import { Client, type Publication, type Subscription } from "longrun";

export async function main(url: string): Promise<number[]> {
  const client = new Client(url, { transport: "ws" });
  const sub: Subscription = await client.subscribe("chat.*");
  const offset: number = await client.publish("chat.lobby", { text: "hi" });
  const seen: Publication[] = [];
  for await (const p of sub) {
    seen.push(p);
    console.log(p.topic, p.offset, p.data);
    break;
  }
  const replay = await client.subscribe("log", { since: 0, signal: AbortSignal.timeout(10_000) });
  console.log(replay.offset, replay.recovered);
  replay.close();
  return [offset, seen.length];
}
