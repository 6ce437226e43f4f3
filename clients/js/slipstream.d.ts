// TypeScript declarations for slipstream.js (the client is plain JavaScript: no build step).

export declare const PROTOCOL_VERSION: 2;

export declare const FrameType: Readonly<{
  HELLO: 1; WELCOME: 2; PUB: 3; PUBACK: 4; SUB: 5; SUBACK: 6; UNSUB: 7; MSG: 8; GAP: 9;
  ACK: 10; PING: 11; PONG: 12; STATS: 13; STATS_REPLY: 14; ERROR: 15; PUBM: 16; MSGM: 17;
}>;

/** One frame: a uint32 big-endian length, then [type, ...fields] in msgpack. */
export declare function encodeFrame(type: number, ...fields: unknown[]): Uint8Array;

/** Bytes in, whole decoded frames ([type, ...fields]) out, however the stream was cut. */
export declare class FrameReader {
  constructor(maxFrameBytes?: number);
  feed(bytes: Uint8Array): unknown[][];
}

export declare class SlipstreamError extends Error {}
/** A refusal from the broker: `code` as in docs/protocol.md (auth, permission_denied, ...). */
export declare class BrokerError extends SlipstreamError {
  readonly code: string;
  readonly fatal: boolean;
}
export declare class ProtocolError extends SlipstreamError {}
export declare class ConnectionLostError extends SlipstreamError {}

/** Messages lost just before a message, as the broker (or a reconnect) reported them. */
export interface Gap {
  topic: string;
  firstSeq: number;
  /** How many; -1 when nobody can know (the broker restarted). */
  missed: number;
  reason: string;
}

export declare class Message<T = unknown> {
  readonly topic: string;
  /** Increasing within a topic; unique with (epoch, topic). */
  readonly seq: number;
  /** The broker's clock when it was published, in microseconds since the Unix epoch. */
  readonly timestampUs: number;
  /** The bytes exactly as published. */
  readonly payload: Uint8Array;
  readonly gap: Gap | null;
  readonly epoch: number;
  /** The payload decoded from msgpack, on first use. */
  readonly data: T;
}

export type Start = "new" | "earliest" | number;

export interface SubscribeOptions {
  /** Where to begin in each topic that already exists (default "new"). */
  from?: Start;
  /** A name to resume by: the broker remembers what was acknowledged. */
  durable?: string | null;
  /** Messages in flight at most (default 8192). */
  window?: number;
}

export declare class Subscription<T = unknown> implements AsyncIterable<Message<T>> {
  readonly sid: number;
  readonly pattern: string;
  /** Messages handed out so far. */
  readonly received: number;
  /** Messages reported lost (gaps of unknown size count 0). */
  readonly missed: number;
  /** The next message; asking for it finishes the one before (acknowledged in batches). */
  next(): Promise<IteratorResult<Message<T>>>;
  nextBatch(): Promise<IteratorResult<Message<T>[]>>;
  [Symbol.asyncIterator](): AsyncIterator<Message<T>>;
  /** Every message waiting, as arrays: for consumers that keep up with a fast stream. */
  batches(): AsyncIterable<Message<T>[]>;
  unsubscribe(): Promise<void>;
}

export interface ClientOptions {
  /** How the broker lists this client (its connections, presence). */
  name?: string;
  /** The broker's --token. */
  token?: string | null;
  /** A user of the broker's --users file, with its password. */
  user?: string | null;
  password?: string | null;
  /** Reconnect with backoff when the connection drops, and resume (default true). */
  reconnect?: boolean;
  /** Node, tls://: the CA that signed the broker's certificate (PEM). */
  tlsCa?: string | Uint8Array;
  /** Called for each loss, as it is reported. */
  onGap?: (subscription: Subscription, topic: string, firstSeq: number, missed: number,
           reason: string) => void;
  /** Called after each reconnection. */
  onReconnect?: (how: { restarted: boolean }) => void;
}

export interface PublishOptions {
  /** Resolve once the broker has stored it, with its seq. */
  confirm?: boolean;
}

export declare class Client {
  readonly url: string;
  readonly epoch: number | null;
  readonly maxFrameBytes: number;
  readonly connected: boolean;
  /** The last refusal nobody waited for (an unconfirmed publish's, a fatal one). */
  readonly lastError?: BrokerError;
  publish(topic: string, data: unknown, options: PublishOptions & { confirm: true }
          ): Promise<number>;
  publish(topic: string, data: unknown, options?: PublishOptions): Promise<number | undefined>;
  publishBytes(topic: string, payload: Uint8Array, options: PublishOptions & { confirm: true }
               ): Promise<number>;
  publishBytes(topic: string, payload: Uint8Array, options?: PublishOptions
               ): Promise<number | undefined>;
  subscribe<T = unknown>(pattern: string, options?: SubscribeOptions): Subscription<T>;
  /** A round trip: every frame sent before it has been acted on when it resolves. */
  ping(): Promise<void>;
  stats(options?: Record<string, unknown> | null): Promise<Record<string, any>>;
  /** The names of the connections this user may see: presence. */
  connections(): Promise<string[]>;
  /** Flush what was published, acknowledge what was finished, and close. */
  close(): Promise<void>;
}

/**
 * Connect: `ws://HOST:PORT/` or `wss://...` (browsers and Node), or `HOST:PORT`,
 * `tcp://HOST:PORT`, `tls://HOST:PORT` (Node). Resolves once the broker said WELCOME.
 */
export declare function connect(url: string, options?: ClientOptions): Promise<Client>;
