// slipstream's client for JavaScript: browsers over WebSocket, Node over TCP or WebSocket.
//
// Written from docs/protocol.md alone, and laid out as its sections are (docs/clients.md
// points at each part): "Frames" (encodeFrame, FrameReader), "Transport" (the two byte
// pipes), "Handshake" (connect), "Publishing" (publish, the outbox), "Subscribing" and
// "Delivery, acknowledgement and flow control" (Subscription), "Loss: GAP notices" (gaps
// on the next message of their topic), "Ping, stats, errors" (ping, stats, ERROR), and
// what a client does when the connection drops (reconnect, resubscribe, skip what it
// had, report what it missed). No build step; one dependency, @msgpack/msgpack.
//
//   import { connect } from "./slipstream.js";
//   const client = await connect("ws://127.0.0.1:20779/", { name: "my-page" });
//   for await (const message of client.subscribe("live.>", { from: "earliest" })) {
//     console.log(message.topic, message.seq, message.data);
//   }

import { decode, encode } from "@msgpack/msgpack";

export const PROTOCOL_VERSION = 2;
const LENGTH_BYTES = 4;
const HANDSHAKE_TIMEOUT_MS = 10_000;
const ACK_DELAY_MS = 50;           // an idle subscription acknowledges this soon
const OUTBOX_BYTES = 4 << 20;      // publish() waits while this much is unsent
const UNKNOWN_COUNT = -1;          // a gap whose size nobody can know (the broker restarted)

// Publishes are coalesced until the event loop comes round (a macrotask, not a microtask:
// a loop of `await publish()` yields only microtasks, so its messages share frames).
const soon = typeof setImmediate === "function" ? setImmediate : (callback) => {
  const channel = new MessageChannel();
  channel.port1.onmessage = () => { channel.port1.close(); callback(); };
  channel.port2.postMessage(null);
};

// --- Frames (docs/protocol.md, "Frames" and "Frame types") -----------------------------

export const FrameType = Object.freeze({
  HELLO: 1, WELCOME: 2, PUB: 3, PUBACK: 4, SUB: 5, SUBACK: 6, UNSUB: 7, MSG: 8, GAP: 9,
  ACK: 10, PING: 11, PONG: 12, STATS: 13, STATS_REPLY: 14, ERROR: 15, PUBM: 16, MSGM: 17,
});

/** One frame: the body's length (uint32, big-endian), then [type, ...fields] in msgpack. */
export function encodeFrame(type, ...fields) {
  const body = encode([type, ...fields]);
  const frame = new Uint8Array(LENGTH_BYTES + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, LENGTH_BYTES);
  return frame;
}

/** Bytes in, whole frames out, however the stream was cut (a read may hold many frames
 * or part of one). */
export class FrameReader {
  constructor(maxFrameBytes = 1 << 20) {
    this.maxFrameBytes = maxFrameBytes + 1024;  // MSG frames may be this much larger
    this.buffer = new Uint8Array(0);
  }

  feed(bytes) {
    let buffer = this.buffer.length ? concat([this.buffer, bytes]) : bytes;
    const frames = [];
    let offset = 0;
    while (buffer.length - offset >= LENGTH_BYTES) {
      const view = new DataView(buffer.buffer, buffer.byteOffset + offset, LENGTH_BYTES);
      const length = view.getUint32(0);
      if (length < 1 || length > this.maxFrameBytes) {
        throw new ProtocolError(`a frame of ${length} bytes: the stream is not slipstream's`);
      }
      if (buffer.length - offset - LENGTH_BYTES < length) break;
      const body = buffer.subarray(offset + LENGTH_BYTES, offset + LENGTH_BYTES + length);
      frames.push(decode(body));
      offset += LENGTH_BYTES + length;
    }
    this.buffer = buffer.slice(offset);
    return frames;
  }
}

function concat(chunks) {
  let size = 0;
  for (const chunk of chunks) size += chunk.length;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) { out.set(chunk, offset); offset += chunk.length; }
  return out;
}

// --- Errors -------------------------------------------------------------------------------

export class SlipstreamError extends Error {}
/** The broker refused a request (non-fatal) or the connection (fatal): `code` says which. */
export class BrokerError extends SlipstreamError {
  constructor(code, message, fatal = false) {
    super(`${code}: ${message}`);
    this.code = code;
    this.fatal = fatal;
  }
}
export class ProtocolError extends SlipstreamError {}
export class ConnectionLostError extends SlipstreamError {}

// --- Transport: a byte pipe, over WebSocket or (Node) TCP ---------------------------------

async function openTransport(url, options) {
  if (url.startsWith("ws://") || url.startsWith("wss://")) return openWebSocket(url);
  const plain = url.replace(/^tcp:\/\//, "").replace(/^tls:\/\//, "");
  const [host, port] = plain.includes(":") ? plain.split(":") : ["127.0.0.1", plain];
  return openTcp(host, Number(port), url.startsWith("tls://"), options);
}

function openWebSocket(url) {
  if (typeof WebSocket === "undefined") {
    throw new SlipstreamError("this JavaScript has no WebSocket: Node 20 needs " +
                              "--experimental-websocket (Node 22 has it), or use tcp://");
  }
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    const pipe = {
      onData: () => {}, onClose: () => {},
      send: (bytes) => socket.send(bytes),
      buffered: () => socket.bufferedAmount,
      close: () => socket.close(1000),
    };
    socket.onopen = () => resolve(pipe);
    socket.onerror = () => reject(new SlipstreamError(`cannot connect to ${url}`));
    socket.onmessage = (event) => pipe.onData(new Uint8Array(event.data));
    socket.onclose = (event) => pipe.onClose(event.reason ? `${event.code} ${event.reason}`
                                                         : `closed (${event.code})`);
  });
}

async function openTcp(host, port, secure, options) {
  const net = await import(secure ? "node:tls" : "node:net");
  return new Promise((resolve, reject) => {
    const socket = secure
      ? net.connect({ host, port, ca: options.tlsCa, servername: host })
      : net.connect({ host, port });
    socket.setNoDelay(true);
    const pipe = {
      onData: () => {}, onClose: () => {},
      send: (bytes) => socket.write(bytes),
      buffered: () => socket.writableLength,
      close: () => socket.end(),
    };
    socket.once(secure ? "secureConnect" : "connect", () => resolve(pipe));
    socket.once("error", (error) => reject(new SlipstreamError(
      `cannot connect to ${host}:${port}: ${error.message}`)));
    socket.on("data", (data) => pipe.onData(new Uint8Array(data.buffer, data.byteOffset,
                                                            data.length)));
    socket.on("close", () => pipe.onClose("the connection closed"));
    socket.on("error", () => {});  // "close" follows and says it
  });
}

// --- Messages -----------------------------------------------------------------------------

const generations = new WeakMap();  // Message -> the connection (count) that delivered it

/** One delivered message; `data` is its payload decoded from msgpack, on first use. */
export class Message {
  constructor(topic, seq, timestampUs, payload, gap, epoch) {
    this.topic = topic;
    this.seq = seq;
    this.timestampUs = timestampUs;
    this.payload = payload;
    this.gap = gap;    // {topic, firstSeq, missed, reason} lost just before this one, or null
    this.epoch = epoch;
  }

  get data() {
    if (this._data === undefined) this._data = decode(this.payload);
    return this._data;
  }
}

// --- Subscribing, delivery, acknowledgement (docs/protocol.md) ----------------------------

export class Subscription {
  constructor(client, sid, pattern, from, durable, window) {
    this.client = client;
    this.sid = sid;
    this.pattern = pattern;
    this.from = from;
    this.durable = durable;
    this.window = window;
    this.received = 0;
    this.missed = 0;            // messages reported lost, summed (unknown counts as 0)
    this._queue = [];           // Message, in order
    this._waiting = null;       // a reader waiting for more
    this._finished = 0;         // handed out and done, not yet acknowledged
    this._handed = 0;           // handed out, of this connection's deliveries
    this._generation = 0;       // which connection delivered: only its messages are acked
    this._ackTimer = null;
    this._ended = null;         // why the subscription ended
    this._lastSeq = new Map();  // topic -> highest seq handed on, this epoch
    this._seenTopics = new Set();
    this._pendingGap = new Map();  // topic -> a gap to put on its next message
  }

  frame(from) {
    return encodeFrame(FrameType.SUB, this.sid, this.pattern, from, this.durable ?? null,
                       this.window);
  }

  // From the client's reader -----------------------------------------------------------

  _deliver(topic, firstSeq, stamps, payloads, epoch) {
    const last = this._lastSeq.get(topic) ?? 0;
    let skip = Math.max(0, Math.min(last - firstSeq + 1, payloads.length));
    if (skip) this._done(skip);  // re-delivered after a reconnect: we had them already
    const firstNew = firstSeq + skip;
    if (last && firstNew > last + 1 && skip < payloads.length) {
      this._gap(topic, last + 1, firstNew - last - 1,
                "reconnect: published while this subscription was away");
    }
    for (let index = skip; index < payloads.length; index += 1) {
      const gap = this._pendingGap.get(topic) ?? null;
      if (gap) this._pendingGap.delete(topic);
      const message = new Message(topic, firstSeq + index, stamps[index], payloads[index],
                                  gap, epoch);
      generations.set(message, this._generation);
      this._queue.push(message);
    }
    this._lastSeq.set(topic, Math.max(last, firstSeq + payloads.length - 1));
    this._seenTopics.add(topic);
    this._wake();
  }

  _gap(topic, firstSeq, missed, reason) {
    this.missed += Math.max(0, missed);
    this._pendingGap.set(topic, { topic, firstSeq, missed, reason });
    if (missed > 0) {
      this._lastSeq.set(topic, Math.max(this._lastSeq.get(topic) ?? 0, firstSeq + missed - 1));
    }
    this.client._onGap?.(this, topic, firstSeq, missed, reason);
  }

  _reconnected(brokerRestarted) {
    // A new connection has nothing of ours in flight: credit starts again, and what the
    // old one delivered (still queued, or in the application's hands) is not acked on it.
    this._generation += 1;
    this._handed = 0;
    this._finished = 0;
    if (brokerRestarted) {
      for (const topic of this._seenTopics) {
        this._gap(topic, (this._lastSeq.get(topic) ?? 0) + 1, UNKNOWN_COUNT,
                  "the broker restarted (new epoch): messages it held may be lost");
      }
      this._lastSeq.clear();  // seqs start again from 1 in the new epoch
    }
  }

  _end(reason) {
    this._ended = reason;
    this._wake();
  }

  _wake() {
    const waiting = this._waiting;
    this._waiting = null;
    waiting?.();
  }

  // To the application ----------------------------------------------------------------

  /** The next message; asking for it finishes the one before (acknowledged in batches). */
  async next() {
    this._finishHanded();
    for (;;) {
      if (this._queue.length) {
        const message = this._queue.shift();
        this._hand(message);
        this.received += 1;
        return { value: message, done: false };
      }
      if (this._ended) {
        if (this._ended === "done") return { value: undefined, done: true };
        throw this._ended;
      }
      await new Promise((resolve) => { this._waiting = resolve; });
    }
  }

  /** Every message waiting now (at least one), as an array. */
  async nextBatch() {
    const first = await this.next();
    if (first.done) return first;
    const rest = this._queue.splice(0);
    for (const message of rest) this._hand(message);
    this.received += rest.length;
    return { value: [first.value, ...rest], done: false };
  }

  _hand(message) {
    if (generations.get(message) === this._generation) this._handed += 1;
  }

  [Symbol.asyncIterator]() {
    return { next: () => this.next(), return: async () => { this._finishHanded(); return { done: true }; } };
  }

  batches() {
    return { [Symbol.asyncIterator]: () => ({
      next: () => this.nextBatch(),
      return: async () => { this._finishHanded(); return { done: true }; },
    }) };
  }

  async unsubscribe() {
    this._finishHanded();
    this._flushAcks();
    this.client._forget(this);
    this.client._send(encodeFrame(FrameType.UNSUB, this.sid));
    this._end("done");
  }

  _finishHanded() {
    if (this._handed) this._done(this._handed);
    this._handed = 0;
  }

  _done(count) {
    this._finished += count;
    if (this._finished >= Math.max(1, this.window >> 2)) this._flushAcks();
    else if (!this._ackTimer) this._ackTimer = setTimeout(() => this._flushAcks(), ACK_DELAY_MS);
  }

  _flushAcks() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (this._finished && this.client._open) {
      this.client._send(encodeFrame(FrameType.ACK, this.sid, this._finished));
    }
    this._finished = 0;
  }
}

// --- The client ---------------------------------------------------------------------------

/**
 * Connect to a broker: `ws://HOST:PORT/` or `wss://...` (browsers and Node), or
 * `HOST:PORT`, `tcp://HOST:PORT`, `tls://HOST:PORT` (Node). Resolves once WELCOME came.
 */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client._connect(true);
  return client;
}

export class Client {
  constructor(url, { name = "js", token = null, user = null, password = null,
                     reconnect = true, tlsCa, onGap, onReconnect } = {}) {
    this.url = url;
    this.name = name;
    this.credentials = { token: password ?? token, user };
    this.reconnect = reconnect;
    this.tlsCa = tlsCa;
    this._onGap = onGap;
    this._onReconnect = onReconnect;
    this.epoch = null;
    this.maxFrameBytes = 1 << 20;
    this._pipe = null;
    this._open = false;
    this._closing = false;
    this._ids = 0;
    this._subs = new Map();        // sid -> Subscription
    this._waiting = new Map();     // confirm/request/nonce id -> {resolve, reject}
    this._outbox = new Map();      // topic -> [payload, ...]: unconfirmed publishes, coalesced
    this._outboxBytes = 0;
    this._flushQueued = false;
    this._connected = null;        // resolves when (re)connected
  }

  get connected() { return this._open; }

  async _connect(first) {
    let delay = 250;
    for (;;) {
      try {
        await this._handshake();
        return;
      } catch (error) {
        const retry = !(error instanceof BrokerError) ||
          error.code === "busy" || error.code === "too_many_connections";
        if (first || !retry || this._closing) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 5_000);
      }
    }
  }

  async _handshake() {
    const pipe = await openTransport(this.url, { tlsCa: this.tlsCa });
    const reader = new FrameReader();
    const welcome = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new SlipstreamError("no WELCOME in time")),
                               HANDSHAKE_TIMEOUT_MS);
      this._onWelcome = (frame) => { clearTimeout(timer); resolve(frame); };
      this._onRefused = (error) => { clearTimeout(timer); reject(error); };
    });
    pipe.onData = (bytes) => {
      let frames;
      try {
        frames = reader.feed(bytes);
      } catch (error) {
        this._lost(pipe, error.message);
        return;
      }
      for (const frame of frames) this._receive(frame);
    };
    pipe.onClose = (why) => this._lost(pipe, why);
    this._pipe = pipe;
    const { token, user } = this.credentials;
    const hello = user === null
      ? encodeFrame(FrameType.HELLO, PROTOCOL_VERSION, this.name, token)
      : encodeFrame(FrameType.HELLO, PROTOCOL_VERSION, this.name, token, user);
    pipe.send(hello);
    let answer;
    try {
      answer = await welcome;
      if (this._closing) throw new ConnectionLostError("the client was closed meanwhile");
    } catch (error) {
      if (this._pipe === pipe) { this._pipe = null; pipe.close(); }
      throw error;
    } finally {
      this._onWelcome = this._onRefused = null;
    }
    const [, , , epoch, maxFrameBytes] = answer;
    const restarted = this.epoch !== null && epoch !== this.epoch;
    const again = this.epoch !== null;
    this.epoch = epoch;
    this.maxFrameBytes = maxFrameBytes;
    this._open = true;
    if (again) {
      for (const sub of this._subs.values()) {
        sub._reconnected(restarted);
        // A durable resumes where it acknowledged; a plain one takes what is new (gaps
        // tell what it missed); a restarted broker holds nothing we saw: take it all.
        pipe.send(sub.frame(restarted ? "earliest" : "new"));
      }
      this._onReconnect?.({ restarted });
    }
    this._flush();
  }

  _lost(pipe, why) {
    if (pipe !== this._pipe) return;
    const wasOpen = this._open;
    this._open = false;
    this._pipe = null;
    // A handshake under way fails: whoever started it (connect, a reconnect attempt) decides.
    this._onRefused?.(new ConnectionLostError(`the connection ended: ${why}`));
    const lost = new ConnectionLostError(`the connection to ${this.url} ended before the ` +
                                         `broker answered: ${why}`);
    for (const waiter of this._waiting.values()) waiter.reject(lost);
    this._waiting.clear();
    if (!wasOpen) return;
    if (this._closing || !this.reconnect) {
      for (const sub of this._subs.values()) sub._end(this._closing ? "done" : lost);
      this._closedDone?.();
      return;
    }
    this._connected = this._connect(false).catch((error) => {
      for (const sub of this._subs.values()) sub._end(error);
    });
  }

  _receive(frame) {
    const [type, ...fields] = frame;
    switch (type) {
      case FrameType.WELCOME:
        this._onWelcome?.(frame);
        break;
      case FrameType.MSG: {
        const [sid, topic, firstSeq, stamps, payloads] = fields;
        this._subs.get(sid)?._deliver(topic, firstSeq, stamps, payloads, this.epoch);
        break;
      }
      case FrameType.MSGM: {
        const [sid, runs] = fields;
        const sub = this._subs.get(sid);
        for (const [topic, firstSeq, stamps, payloads] of runs) {
          sub?._deliver(topic, firstSeq, stamps, payloads, this.epoch);
        }
        break;
      }
      case FrameType.GAP: {
        const [sid, topic, firstSeq, missed, reason] = fields;
        this._subs.get(sid)?._gap(topic, firstSeq, missed, reason);
        break;
      }
      case FrameType.PUBACK: {
        const [confirmId, firstSeq, count] = fields;
        this._answer(`c${confirmId}`, { firstSeq, count });
        break;
      }
      case FrameType.SUBACK:
        this._answer(`s${fields[0]}`, fields[0]);
        break;
      case FrameType.PONG:
        this._answer(`p${fields[0]}`, fields[0]);
        break;
      case FrameType.PING:
        this._send(encodeFrame(FrameType.PONG, fields[0]));
        break;
      case FrameType.STATS_REPLY:
        this._answer(`r${fields[0]}`, fields[1]);
        break;
      case FrameType.ERROR: {
        const [code, message, ref, fatal] = fields;
        const error = new BrokerError(code, message, fatal);
        if (fatal) {
          this.lastError = error;  // the broker closes next: _lost says what follows
          this._onRefused?.(error);
          break;
        }
        // The request it is about: a confirm id, a sid or a request id (docs/protocol.md).
        for (const key of [`c${ref}`, `s${ref}`, `r${ref}`]) {
          const waiter = this._waiting.get(key);
          if (waiter) { this._waiting.delete(key); waiter.reject(error); return; }
        }
        if (code === "permission_denied" || code.startsWith("too_many")) {
          const sub = this._subs.get(ref);
          if (sub) { this._forget(sub); sub._end(error); return; }
        }
        this.lastError = error;  // an unconfirmed publish's refusal: nobody waits for it
        break;
      }
      default:
        break;  // a frame type from a later version: ignore it, as the protocol says
    }
  }

  _answer(key, value) {
    const waiter = this._waiting.get(key);
    if (waiter) { this._waiting.delete(key); waiter.resolve(value); }
  }

  _request(key, frame) {
    return new Promise((resolve, reject) => {
      this._waiting.set(key, { resolve, reject });
      if (!this._send(frame)) {
        this._waiting.delete(key);
        reject(new ConnectionLostError("not connected to the broker"));
      }
    });
  }

  _send(bytes) {
    if (!this._open || !this._pipe) return false;
    this._pipe.send(bytes);
    return true;
  }

  _forget(sub) { this._subs.delete(sub.sid); }

  // --- Publishing ------------------------------------------------------------------------

  /** Publish `data` (encoded as msgpack) on `topic`. Resolves when queued, or with
   * `{confirm: true}` once the broker has stored it: then with its seq. */
  publish(topic, data, options = {}) {
    return this.publishBytes(topic, encode(data), options);
  }

  async publishBytes(topic, payload, { confirm = false } = {}) {
    if (confirm) {
      if (this._connected) await this._connected;
      this._flush();  // what was published before goes first
      const id = ++this._ids;
      const { firstSeq } = await this._request(
        `c${id}`, encodeFrame(FrameType.PUB, topic, [payload], id));
      return firstSeq;
    }
    let run = this._outbox.get(topic);
    if (!run) { run = []; this._outbox.set(topic, run); }
    run.push(payload);
    this._outboxBytes += payload.length + topic.length + 8;
    if (!this._flushQueued) {
      this._flushQueued = true;
      soon(() => this._flush());
    }
    if (this._outboxBytes + (this._pipe?.buffered() ?? 0) > OUTBOX_BYTES) await this._room();
    return undefined;
  }

  /** What was published and not yet written: one frame, the runs of every topic (PUBM). */
  _flush() {
    this._flushQueued = false;
    if (!this._outbox.size || !this._open) return;
    const limit = this.maxFrameBytes - 1024;
    let runs = [];
    let size = 0;
    const frames = [];
    for (const [topic, payloads] of this._outbox) {
      let part = [];
      for (const payload of payloads) {
        if (size + payload.length + 16 > limit && (part.length || runs.length)) {
          if (part.length) runs.push([topic, part]);
          frames.push(runs);
          runs = []; part = []; size = 0;
        }
        part.push(payload);
        size += payload.length + 16;
      }
      if (part.length) runs.push([topic, part]);
      size += topic.length;
    }
    if (runs.length) frames.push(runs);
    this._outbox.clear();
    this._outboxBytes = 0;
    for (const frameRuns of frames) {
      this._pipe.send(frameRuns.length === 1
        ? encodeFrame(FrameType.PUB, frameRuns[0][0], frameRuns[0][1], null)
        : encodeFrame(FrameType.PUBM, frameRuns));
    }
  }

  async _room() {
    while (this._open && (this._pipe?.buffered() ?? 0) > OUTBOX_BYTES / 2) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    if (this._outboxBytes > OUTBOX_BYTES) this._flush();
  }

  // --- Subscribing -----------------------------------------------------------------------

  /** A subscription: `for await (const message of sub)` or `sub.batches()`. `from`:
   * "new" (default), "earliest" or a seq; `durable`: a name to resume by; `window`:
   * messages in flight at most. */
  subscribe(pattern, { from = "new", durable = null, window = 8192 } = {}) {
    const sid = ++this._ids;
    const sub = new Subscription(this, sid, pattern, from, durable, window);
    this._subs.set(sid, sub);
    this._request(`s${sid}`, sub.frame(from)).catch((error) => {
      this._forget(sub);
      sub._end(error);
    });
    return sub;
  }

  // --- Ping, stats, closing ---------------------------------------------------------------

  /** A round trip: every frame sent before it has been acted on when it resolves. */
  async ping() {
    this._flush();
    const nonce = ++this._ids;
    await this._request(`p${nonce}`, encodeFrame(FrameType.PING, nonce));
  }

  /** The broker's statistics (topics and connections this user may see; docs/protocol.md). */
  async stats(options = null) {
    this._flush();
    const id = ++this._ids;
    return this._request(`r${id}`, encodeFrame(FrameType.STATS, id, options));
  }

  /** Who is connected (by client name), as the broker lets this user see: presence. */
  async connections() {
    const stats = await this.stats({ topic_limit: 0 });
    return (stats.connections ?? []).map((connection) => connection.name);
  }

  /** Flush what was published, acknowledge what was finished, and close. */
  async close() {
    if (this._closing) return;
    for (const sub of this._subs.values()) { sub._finishHanded(); sub._flushAcks(); }
    if (this._open) {
      try { await this.ping(); } catch { /* gone already: nothing more to flush */ }
    }
    this._closing = true;
    const closed = new Promise((resolve) => { this._closedDone = resolve; });
    if (this._pipe) this._pipe.close(); else this._closedDone?.();
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1000))]);
    for (const sub of this._subs.values()) sub._end("done");
  }
}
