// The JavaScript client against a real broker, over TCP and over WebSocket (issue 26):
// every count exact, as the Python tests count.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { BrokerError, connect } from "../slipstream.js";
import { startBroker } from "./broker.js";

for (const transport of ["tcp", "ws"]) {
  test(`publish and subscribe over ${transport}, counted exactly`, async (t) => {
    const broker = await startBroker();
    t.after(() => broker.stop());
    const url = transport === "ws" ? broker.ws : `tcp://${broker.tcp}`;
    const producer = await connect(url, { name: `producer-${transport}` });
    const consumer = await connect(url, { name: `consumer-${transport}` });
    const sub = consumer.subscribe("laps.>", { from: "earliest", window: 500 });
    const count = 5_000;
    for (let n = 0; n < count; n += 1) {
      await producer.publish(n % 2 ? "laps.a" : "laps.b", { n, driver: "HAM" });
    }
    const seq = await producer.publish("laps.a", { n: count }, { confirm: true });
    assert.equal(seq, count / 2 + 1);  // after the unconfirmed ones: they went first
    const seen = { "laps.a": [], "laps.b": [] };
    let got = 0;
    for await (const message of sub) {
      seen[message.topic].push(message.data.n);
      assert.equal(message.gap, null);
      got += 1;
      if (got === count + 1) break;
    }
    assert.deepEqual(seen["laps.b"], Array.from({ length: count / 2 }, (_, i) => 2 * i));
    assert.equal(seen["laps.a"].length, count / 2 + 1);
    await producer.close();
    await consumer.close();
  });
}

test("batches, and close() flushes what was published", async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const producer = await connect(broker.ws);
  for (let n = 0; n < 20_000; n += 1) await producer.publishBytes("bulk.x", new Uint8Array([n & 255]));
  await producer.close();  // nothing confirmed: close() still delivers it all
  const consumer = await connect(broker.ws);
  let got = 0;
  let batches = 0;
  for await (const batch of consumer.subscribe("bulk.x", { from: "earliest" }).batches()) {
    got += batch.length;
    batches += 1;
    if (got >= 20_000) break;
  }
  assert.equal(got, 20_000);
  assert.ok(batches < 20_000);
  const stats = await consumer.stats();
  assert.equal(stats.topics["bulk.x"].published, 20_000);
  await consumer.close();
});

test("a loss is reported as a gap on the next message, counted exactly", async (t) => {
  const broker = await startBroker("--retain-messages", "10");
  t.after(() => broker.stop());
  const client = await connect(broker.ws);
  for (let n = 1; n <= 100; n += 1) await client.publish("kept.few", n);
  await client.ping();
  const first = (await client.subscribe("kept.few", { from: 1 }).next()).value;
  assert.equal(first.seq, 91);
  assert.equal(first.gap.missed, 90);
  assert.match(first.gap.reason, /^evicted/);
  await client.close();
});

test("the broker's users and permissions hold for a JavaScript client", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), "slipstream-js-"));
  const { writeFileSync } = await import("node:fs");
  const { execFileSync } = await import("node:child_process");
  const users = path.join(dir, "users.toml");
  writeFileSync(users, 'anonymous = "screen"\n[users.screen]\nsubscribe = ["live.>"]\n');
  execFileSync(process.env.SLIPSTREAM_PYTHON || path.resolve("../../.venv/bin/python"),
               ["-m", "broker", "passwd", "page", "--file", users, "--stdin"],
               { input: "page-pw\n", cwd: path.resolve("../..") });
  const broker = await startBroker("--users", users);
  t.after(() => broker.stop());
  await assert.rejects(connect(broker.ws, { user: "page", password: "wrong" }),
                       (error) => error instanceof BrokerError && error.code === "auth");
  const screen = await connect(broker.ws);  // anonymous: the screen user
  await assert.rejects(screen.publish("live.forged", 1, { confirm: true }),
                       (error) => error.code === "permission_denied");
  const refused = screen.subscribe("standings.>");
  await assert.rejects(refused.next(), (error) => error.code === "permission_denied");
  await screen.close();
});

test("a dropped connection is resumed: nothing lost, nothing twice", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), "slipstream-js-"));
  const { createServer } = await import("node:net");
  const free = () => new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  const [tcpPort, wsPort] = [await free(), await free()];
  const flags = ["--port", String(tcpPort), "--ws", String(wsPort), "--data-dir", dir];
  let broker = await startBroker(...flags);
  t.after(() => broker.stop());
  const reconnected = [];
  const consumer = await connect(broker.ws, { name: "resumer",
                                             onReconnect: (how) => reconnected.push(how) });
  const sub = consumer.subscribe("resume.>", { durable: "page", window: 100 });
  const producer = await connect(`tcp://${broker.tcp}`, { reconnect: false });
  for (let n = 0; n < 10; n += 1) await producer.publish("resume.x", n, { confirm: true });
  const got = [];
  // Half read; the other half still queued in the client when the connection drops.
  for (let n = 0; n < 5; n += 1) got.push((await sub.next()).value.data);
  await new Promise((resolve) => setTimeout(resolve, 100));  // all ten are here by now
  await producer.close();
  await broker.kill();  // SIGKILL: the connection drops under the client
  broker = await startBroker(...flags);
  const again = await connect(`tcp://${broker.tcp}`, { reconnect: false });
  for (let n = 10; n < 20; n += 1) await again.publish("resume.x", n, { confirm: true });
  while (!reconnected.length) await new Promise((resolve) => setTimeout(resolve, 20));
  for (let n = 5; n < 15; n += 1) got.push((await sub.next()).value.data);
  // The old connection's five (5..9), finished on the new one, are not acked there: only
  // 10..13 are, so the broker holds 14 (in the application's hands) and 15..19 unacked.
  await new Promise((resolve) => setTimeout(resolve, 150));  // the idle ack has gone out
  const stats = await again.stats();
  const [resumer] = stats.connections.filter((connection) => connection.name === "resumer");
  assert.equal(resumer.subscriptions[0].unacked, 6);
  for (let n = 15; n < 20; n += 1) got.push((await sub.next()).value.data);
  assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i));
  assert.equal(reconnected.length, 1);
  assert.equal(consumer.lastError, undefined);  // no ACK refused
  await again.close();
  await consumer.close();
});

test("a reconnect attempt cut off before WELCOME is tried again", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), "slipstream-js-"));
  const net = await import("node:net");
  const free = () => new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  const port = await free();
  const flags = ["--port", String(port), "--data-dir", dir];
  let broker = await startBroker(...flags);
  t.after(() => broker.stop());
  const consumer = await connect(`tcp://${broker.tcp}`, { name: "patient" });
  const sub = consumer.subscribe("patience.>", { durable: "patient" });
  const producer = await connect(`tcp://${broker.tcp}`, { reconnect: false });
  await producer.publish("patience.x", 1, { confirm: true });
  assert.equal((await sub.next()).value.data, 1);
  await producer.close();
  await broker.kill();
  // Something on the port that takes the connection and drops it before any WELCOME.
  let cutOff = 0;
  const rude = net.createServer((socket) => { cutOff += 1; socket.destroy(); });
  await new Promise((resolve) => rude.listen(port, "127.0.0.1", resolve));
  while (cutOff < 2) await new Promise((resolve) => setTimeout(resolve, 20));
  await new Promise((resolve) => rude.close(resolve));
  broker = await startBroker(...flags);
  const again = await connect(`tcp://${broker.tcp}`, { reconnect: false });
  await again.publish("patience.x", 2, { confirm: true });
  assert.equal((await sub.next()).value.data, 2);  // the subscription lived through it
  await again.close();
  await consumer.close();
});
