/**
 * MLLP (Minimal Lower Layer Protocol, HL7 v2 Implementation Guide Appendix C, release 2) over
 * node:net: every message travels as <VT 0x0B> message <FS 0x1C><CR 0x0D>.
 * https://www.hl7.org/implement/standards/product_brief.cfm?product_id=55
 *
 * Written here because node-hl7-server 2.5 never clears its per-connection buffer (every frame
 * re-runs all earlier ones) and node-hl7-client's decoder cannot split two frames in one chunk.
 *
 * Guarantees of the server, per connection:
 * - frames are handled in arrival order: with `concurrency` 1 (the default) strictly one at a
 *   time, the next frame's handler starting only after the previous frame's ACK was handed to the
 *   kernel (write callback); with more, up to that many batches (batchHandler) are in the
 *   handlers' hands at once, started in arrival order, and their ACKs are written in arrival
 *   order whatever order they finish in (what may run together is the handler's to decide);
 * - a frame may arrive split over any number of TCP chunks, and a chunk may hold several frames;
 * - bytes outside a frame are discarded and reported through `onGarbage`;
 * - an unterminated frame over `maxFrameBytes` closes the connection (`onError`);
 * - a connection idle (no byte received, no ACK written, no handler running) for `idleTimeoutMs`
 *   is closed;
 * - `close()` stops accepting, starts no new handler, lets running handlers finish and write their
 *   ACK, then closes the sockets. Frames received but not started are never acknowledged, so the
 *   sender sends them again (at-least-once; the consumer deduplicates).
 * Connections are independent: order is kept within a connection, not across connections; they
 * share only `maxHandlers`, the handlers running at once over all of them.
 *
 * Text: frames are decoded as UTF-8. HL7's default character set is ASCII (MSH-18 empty), and
 * UTF-8 is a superset of ASCII, so ASCII senders are read exactly; 8859-1 senders' bytes above
 * 0x7F would come out as U+FFFD and need MSH-18-driven decoding (not done here).
 */
import { createServer, type Server, type Socket } from 'node:net';

export const VT = 0x0b;
export const FS = 0x1c;
export const CR = 0x0d;

const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** Senders keep MLLP connections open for days; ten quiet minutes is a dead or forgotten peer. */
const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60 * 1000;
/** A peer that does not read its ACKs should not make us buffer without bound. */
const QUEUE_HIGH_WATER = 64;
/** After our FIN, how long a peer may take to close its side before the socket is destroyed. */
const END_GRACE_MS = 2000;

/** Wraps one message in an MLLP frame. */
export function frame(message: string): Buffer {
  const body = Buffer.from(message, 'utf8');
  const out = Buffer.allocUnsafe(body.length + 3);
  out[0] = VT;
  body.copy(out, 1);
  out[body.length + 1] = FS;
  out[body.length + 2] = CR;
  return out;
}

export class MllpFrameTooLargeError extends Error {
  readonly code = 'MLLP_FRAME_TOO_LARGE';
  constructor(readonly limit: number) {
    super(`MLLP frame exceeds ${limit} bytes without an end block`);
  }
}

export interface MllpDecoderOptions {
  maxFrameBytes?: number;
  /** Called once per push() that discarded bytes outside a frame (or an abandoned partial frame). */
  onGarbage?: (bytes: number) => void;
}

/**
 * Incremental MLLP frame decoder. `push()` returns the messages completed by the chunk, in order,
 * and throws MllpFrameTooLargeError when a frame grows past the limit (the stream is then unusable).
 * A frame ends at FS; the CR after it is consumed when present. A VT inside a frame abandons the
 * partial frame (the sender restarted) and counts its bytes as garbage.
 */
export class MllpDecoder {
  private readonly maxFrameBytes: number;
  private readonly onGarbage: ((bytes: number) => void) | undefined;
  private inFrame = false;
  private afterFs = false;
  private parts: Buffer[] = [];
  private size = 0;
  private discarded = 0;

  constructor(options: MllpDecoderOptions = {}) {
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.onGarbage = options.onGarbage;
  }

  /** Bytes discarded so far outside frames. */
  get discardedBytes(): number {
    return this.discarded;
  }

  /** Bytes of the frame currently being received. */
  get pendingBytes(): number {
    return this.size;
  }

  push(chunk: Buffer): string[] {
    const messages: string[] = [];
    let garbage = 0;
    let pos = 0;
    while (pos < chunk.length) {
      if (this.afterFs) {
        this.afterFs = false;
        if (chunk[pos] === CR) pos++;
        continue;
      }
      if (!this.inFrame) {
        const start = chunk.indexOf(VT, pos);
        garbage += (start === -1 ? chunk.length : start) - pos;
        if (start === -1) break;
        this.inFrame = true;
        pos = start + 1;
        continue;
      }
      const fs = chunk.indexOf(FS, pos);
      const vt = chunk.indexOf(VT, pos);
      const end = fs === -1 ? vt : vt === -1 ? fs : Math.min(fs, vt);
      const stop = end === -1 ? chunk.length : end;
      if (this.size + stop - pos > this.maxFrameBytes) throw new MllpFrameTooLargeError(this.maxFrameBytes);
      if (stop > pos) {
        this.parts.push(chunk.subarray(pos, stop));
        this.size += stop - pos;
      }
      if (end === -1) break;
      if (end === vt && end !== fs) {
        garbage += this.size + 1;
        this.reset();
        this.inFrame = true;
      } else {
        messages.push(Buffer.concat(this.parts, this.size).toString('utf8'));
        this.reset();
        this.afterFs = true;
      }
      pos = end + 1;
    }
    if (garbage > 0) {
      this.discarded += garbage;
      this.onGarbage?.(garbage);
    }
    return messages;
  }

  private reset(): void {
    this.inFrame = false;
    this.parts = [];
    this.size = 0;
  }
}

export interface MllpMeta {
  remoteAddress?: string;
  remotePort?: number;
}

/** Returns the ACK message for one inbound message. Throwing closes the connection unacknowledged. */
export type MllpHandler = (message: string, meta: MllpMeta) => Promise<string>;

/**
 * Handles several messages that arrived together on one connection (a sender that does not wait
 * for each ACK before the next message), in order; returns their ACKs in the same order. Throwing
 * closes the connection with none of them acknowledged.
 */
export type MllpBatchHandler = (messages: string[], meta: MllpMeta) => Promise<string[]>;

export interface MllpServerOptions {
  port: number;
  /**
   * When set, the messages queued on a connection when its turn comes (up to `maxBatch`) go to
   * this handler together; one message alone still goes to the plain handler, so a sender that
   * waits for each ACK sees no difference.
   */
  batchHandler?: MllpBatchHandler;
  /** Most messages in one batch (default 100). */
  maxBatch?: number;
  /**
   * Batches in the handlers' hands at once on a connection (default 1), for a sender with several
   * messages in flight: the server's work on one batch then overlaps the database's on another.
   * The queued messages are shared out over the free places (a batch of 32 with two places free
   * is two of 16). Only with batchHandler; ACKs are written in arrival order.
   */
  concurrency?: number;
  /**
   * Batches (or single messages) in the handlers' hands at once over all connections (default: no
   * limit). Each holds a database connection while it runs: the server passes half its pool, so
   * that senders, however many and however pipelined, leave the rest to the FHIR API. A connection
   * with no place free waits for one, the longest-waiting first.
   */
  maxHandlers?: number;
  host?: string;
  /** Largest frame accepted, in bytes (default 16 MB). */
  maxFrameBytes?: number;
  /** Close a connection after this long without traffic (default 10 min; 0 = never). */
  idleTimeoutMs?: number;
  /** How long close() waits for running handlers before destroying the sockets (default 10 s). */
  closeTimeoutMs?: number;
  onError?: (err: unknown, meta: MllpMeta) => void;
  onGarbage?: (bytes: number, meta: MllpMeta) => void;
}

export interface MllpServer {
  readonly port: number;
  /** Open connections. */
  readonly connections: number;
  close(): Promise<void>;
}

export async function startMllpServer(handler: MllpHandler, options: MllpServerOptions): Promise<MllpServer> {
  const connections = new Set<Connection>();
  let closing = false;
  const places = new Places(options.maxHandlers);
  const server: Server = createServer((socket) => {
    const connection = new Connection(socket, handler, options, () => closing, places);
    connections.add(connection);
    socket.once('close', () => {
      connections.delete(connection);
      places.forget(connection);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => options.onError?.(err, {}));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.port;

  let closed: Promise<void> | undefined;
  return {
    port,
    get connections() {
      return connections.size;
    },
    close() {
      closed ??= (async () => {
        closing = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        const drained = Promise.all([...connections].map((c) => c.shutdown()));
        const timeout = options.closeTimeoutMs ?? 10_000;
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<'expired'>((resolve) => (timer = setTimeout(() => resolve('expired'), timeout)));
        if ((await Promise.race([drained, expired])) === 'expired') for (const c of connections) c.destroy();
        clearTimeout(timer);
        await stopped;
      })();
      return closed;
    },
  };
}

/**
 * The handlers' places shared by a server's connections (maxHandlers): taken when a batch starts,
 * given back once its ACKs are written (or it failed); a connection that found none waits in line.
 */
class Places {
  private used = 0;
  private readonly waiting = new Set<Connection>();

  constructor(private readonly limit = Infinity) {}

  /** Takes a place for `connection`, or puts it in line (once) and answers false. */
  take(connection: Connection): boolean {
    if (this.used < this.limit) {
      this.used++;
      return true;
    }
    this.waiting.add(connection);
    return false;
  }

  /** Gives a place back: the connections in line try again, the longest-waiting first. */
  give(): void {
    this.used--;
    for (const c of [...this.waiting]) {
      if (this.used >= this.limit) break;
      this.waiting.delete(c);
      c.pump();
    }
  }

  forget(connection: Connection): void {
    this.waiting.delete(connection);
  }
}

/** One accepted socket: decodes frames into a queue and works the queue in order (pump). */
class Connection {
  private readonly meta: MllpMeta;
  private readonly decoder: MllpDecoder;
  private readonly queue: string[] = [];
  /** Batches taken from the queue whose ACKs are not written yet. */
  private inFlight = 0;
  /** The ACK write of the batch taken last: the next batch's ACKs are written after it. */
  private lastWrite: Promise<void> = Promise.resolve();
  private failed = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly closed: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly handler: MllpHandler,
    private readonly options: MllpServerOptions,
    private readonly isClosing: () => boolean,
    private readonly places: Places,
  ) {
    this.meta = { remoteAddress: socket.remoteAddress, remotePort: socket.remotePort };
    this.decoder = new MllpDecoder({ maxFrameBytes: options.maxFrameBytes, onGarbage: (n) => options.onGarbage?.(n, this.meta) });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.options.onError?.(err, this.meta));
    socket.once('close', () => clearTimeout(this.idleTimer));
    this.touch();
  }

  /** Stop after the running handler (if any); resolves when the socket is closed. */
  shutdown(): Promise<void> {
    if (this.inFlight === 0) this.end();
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.touch();
    let messages: string[];
    try {
      messages = this.decoder.push(chunk);
    } catch (err) {
      this.options.onError?.(err, this.meta);
      this.socket.destroy();
      return;
    }
    if (messages.length === 0) return;
    this.queue.push(...messages);
    if (this.queue.length >= QUEUE_HIGH_WATER) this.socket.pause();
    this.pump();
  }

  /**
   * Starts handlers for the queued messages while there is room (concurrency on this connection, a
   * place among the server's maxHandlers; without one it waits in line), in arrival order,
   * and chains each batch's ACK write after the previous one's. A handler that throws (or answers
   * the wrong number of ACKs) closes the connection: neither its messages nor any later ones are
   * acknowledged, so the sender sends them again.
   */
  pump(): void {
    const batch = this.options.batchHandler;
    const limit = batch ? Math.max(1, this.options.concurrency ?? 1) : 1;
    const maxBatch = batch ? Math.max(1, this.options.maxBatch ?? 100) : 1;
    while (this.inFlight < limit && this.queue.length > 0 && !this.failed && !this.isClosing() && !this.socket.destroyed) {
      if (!this.places.take(this)) return;
      const size = Math.min(maxBatch, Math.ceil(this.queue.length / (limit - this.inFlight)));
      const messages = this.queue.splice(0, size);
      if (this.queue.length < QUEUE_HIGH_WATER / 2 && this.socket.isPaused()) this.socket.resume();
      this.inFlight++;
      let acks: Promise<string[]>;
      try {
        acks = batch && messages.length > 1 ? batch(messages, this.meta) : this.handler(messages[0] as string, this.meta).then((ack) => [ack]);
      } catch (err) {
        acks = Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
      // Rejections are handled where the ACKs are awaited, in order; this only keeps them from
      // being reported as unhandled while an earlier batch is still being written.
      acks.catch(() => undefined);
      this.lastWrite = this.lastWrite.then(async () => {
        try {
          if (this.failed) return;
          const answers = await acks;
          if (answers.length !== messages.length) throw new Error(`MLLP batch handler answered ${answers.length} ACKs for ${messages.length} messages`);
          await this.write(Buffer.concat(answers.map((ack) => frame(ack))));
          this.touch();
        } catch (err) {
          if (!this.failed) {
            this.failed = true;
            this.options.onError?.(err, this.meta);
            this.socket.destroy();
          }
        } finally {
          this.inFlight--;
          this.places.give();
          this.pump();
          if (this.inFlight === 0 && (this.isClosing() || this.failed)) this.end();
        }
      });
    }
  }

  private write(data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed || !this.socket.writable) {
        reject(new Error('MLLP connection closed before the ACK was written'));
        return;
      }
      this.socket.write(data, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Half-close after pending writes, then destroy if the peer does not close its side. */
  private end(): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), END_GRACE_MS).unref();
  }

  private touch(): void {
    const idle = this.options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    if (idle <= 0) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      // Busy, or waiting for a handler's place: not idle.
      if (this.inFlight > 0 || this.queue.length > 0) this.touch();
      else this.end();
    }, idle);
    this.idleTimer.unref();
  }
}
