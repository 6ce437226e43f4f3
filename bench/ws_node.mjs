// One side of the WebSocket benchmark in Node, as a browser page would use the client:
//   node --experimental-websocket bench/ws_node.mjs produce URL COUNT SIZE
//   node --experimental-websocket bench/ws_node.mjs consume URL COUNT
// Prints one JSON line: when it started and finished (process.hrtime, one clock for every
// process on the machine: CLOCK_MONOTONIC, as Python's time.monotonic_ns) and what it did.
import { connect } from "../clients/js/slipstream.js";

const [mode, url, countText, sizeText] = process.argv.slice(2);
const count = Number(countText);
const now = () => Number(process.hrtime.bigint());

if (mode === "produce") {
  const client = await connect(url, { name: "bench-ws-producer" });
  const payload = new Uint8Array(Number(sizeText)).fill(120);
  const started = now();
  for (let n = 0; n < count; n += 1) await client.publishBytes("bench.data", payload);
  await client.close();  // flushes, and waits for the broker to have acted on it all
  console.log(JSON.stringify({ started_ns: started, finished_ns: now() }));
} else {
  const client = await connect(url, { name: "bench-ws-consumer" });
  const sub = client.subscribe("bench.data", { window: 65536 });
  await client.ping();  // subscribed before the producer starts
  console.log("ready");
  let received = 0;
  let lost = 0;
  let first = 0;
  for await (const batch of sub.batches()) {
    if (!received) first = now();
    received += batch.length;
    for (const message of batch) if (message.gap) lost += Math.max(0, message.gap.missed);
    if (received + lost >= count) break;
  }
  const finished = now();
  await client.close();
  console.log(JSON.stringify({ first_ns: first, finished_ns: finished, received, lost }));
}
