// The codec without a broker: the byte-level examples of docs/protocol.md ("Frames"),
// encoded and read back however the stream is cut.
import { test } from "node:test";
import assert from "node:assert/strict";

import { FrameReader, FrameType, ProtocolError, encodeFrame } from "../slipstream.js";

const hex = (text) => Uint8Array.from(text.split(/\s+/).filter(Boolean), (b) => parseInt(b, 16));

test("HELLO and PUB encode to the bytes docs/protocol.md shows", () => {
  assert.deepEqual(encodeFrame(FrameType.HELLO, 2, "printer", null),
                   hex("00 00 00 0c 94 01 02 a7 70 72 69 6e 74 65 72 c0"));
  const payload = hex("81 a1 6e 01");  // the msgpack map {"n": 1}
  assert.deepEqual(encodeFrame(FrameType.PUB, "demo.x", [payload], null),
                   hex("00 00 00 11 94 03 a6 64 65 6d 6f 2e 78 91 c4 04 81 a1 6e 01 c0"));
});

test("frames are read whole however the bytes are cut", () => {
  const msg = hex("00 00 00 1c 96 08 01 a6 64 65 6d 6f 2e 78 01 91 cf 00 06 44 59 41 62 40 00" +
                  " 91 c4 04 81 a1 6e 01");
  const ack = hex("00 00 00 04 93 0a 01 01");
  const stream = new Uint8Array([...msg, ...ack]);
  for (const cut of [1, 3, 7, stream.length]) {
    const reader = new FrameReader();
    const frames = [];
    for (let start = 0; start < stream.length; start += cut) {
      frames.push(...reader.feed(stream.subarray(start, start + cut)));
    }
    assert.equal(frames.length, 2, `cut every ${cut} bytes`);
    const [type, sid, topic, firstSeq, stamps, payloads] = frames[0];
    assert.deepEqual([type, sid, topic, firstSeq, stamps.length], [FrameType.MSG, 1, "demo.x", 1, 1]);
    assert.deepEqual(payloads[0], hex("81 a1 6e 01"));
    assert.deepEqual(frames[1], [FrameType.ACK, 1, 1]);
  }
});

test("a length no slipstream frame has is refused, not waited for", () => {
  assert.throws(() => new FrameReader(1024).feed(hex("00 10 00 00 94")), ProtocolError);
  assert.throws(() => new FrameReader().feed(hex("00 00 00 00")), ProtocolError);
});
