/**
 * A minimal MLLP client: one connection, one message in flight, the reply is the next frame.
 * node-hl7-client's connection spins the CPU when a second message is sent before the first ACK,
 * and its decoder cannot split two frames in one chunk; this client uses our MllpDecoder instead.
 *
 * Failure semantics, for the caller that classifies errors:
 * - `MllpError` code `MLLP_CONNECT`  : no connection was made (the message was not sent): transient.
 * - `MllpError` code `MLLP_TIMEOUT`  : no reply in time. The peer may have processed the message
 *   (ambiguous). The connection is destroyed, since a late reply would otherwise be taken for the
 *   reply to the next message; connect again.
 * - `MllpError` code `MLLP_CLOSED`   : the connection ended before the reply (ambiguous too).
 * - `MllpError` code `MLLP_BUSY`     : send() while a message is in flight (a caller bug).
 * The ACK's content (MSA-1, MSA-2 against the sent MSH-10) is the caller's to check.
 */
import { connect, type LookupFunction, type Socket } from 'node:net';
import { frame, MllpDecoder } from './mllp.js';

export type MllpErrorCode = 'MLLP_CONNECT' | 'MLLP_TIMEOUT' | 'MLLP_CLOSED' | 'MLLP_BUSY' | 'MLLP_PROTOCOL';

export class MllpError extends Error {
  constructor(
    readonly code: MllpErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface MllpClientOptions {
  host: string;
  port: number;
  /** How long to wait for the TCP connection (default 10 s). */
  connectTimeoutMs?: number;
  /** How long send() waits for the reply frame (default 30 s). */
  timeoutMs?: number;
  maxFrameBytes?: number;
  /** Resolves `host` (net's lookup option): the caller's check of where it may connect. */
  lookup?: LookupFunction;
}

interface Pending {
  resolve: (reply: string) => void;
  reject: (err: MllpError) => void;
  timer: NodeJS.Timeout;
}

export class MllpClient {
  private readonly decoder: MllpDecoder;
  private pending: Pending | undefined;
  private closedError: MllpError | undefined;

  private constructor(
    private readonly socket: Socket,
    private readonly options: MllpClientOptions,
  ) {
    this.decoder = new MllpDecoder({ maxFrameBytes: options.maxFrameBytes });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new MllpError('MLLP_CLOSED', `MLLP connection failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new MllpError('MLLP_CLOSED', 'MLLP connection closed before the reply')));
  }

  static connect(options: MllpClientOptions): Promise<MllpClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: options.host, port: options.port, ...(options.lookup ? { lookup: options.lookup } : {}) });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new MllpError('MLLP_CONNECT', `No MLLP connection to ${options.host}:${options.port} within ${options.connectTimeoutMs ?? 10_000} ms`));
      }, options.connectTimeoutMs ?? 10_000);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new MllpError('MLLP_CONNECT', `Cannot connect to ${options.host}:${options.port}: ${err.message}`, { cause: err }));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new MllpClient(socket, options));
      });
    });
  }

  /** True until the connection closed or failed; a closed client cannot send again. */
  get usable(): boolean {
    return this.closedError === undefined && !this.socket.destroyed;
  }

  /** Sends one message and resolves with the next frame the peer sends (its ACK). */
  send(message: string, timeoutMs = this.options.timeoutMs ?? 30_000): Promise<string> {
    if (this.pending) return Promise.reject(new MllpError('MLLP_BUSY', 'A message is already in flight on this MLLP connection'));
    if (!this.usable) return Promise.reject(this.closedError ?? new MllpError('MLLP_CLOSED', 'MLLP connection is closed'));
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new MllpError('MLLP_TIMEOUT', `No MLLP reply within ${timeoutMs} ms`));
        this.socket.destroy();
      }, timeoutMs);
      this.pending = { resolve, reject, timer };
      this.socket.write(frame(message));
    });
  }

  /** Ends the connection (after the reply in flight, if any, has been read or failed). */
  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), 2000);
    await closed;
    clearTimeout(timer);
  }

  private onData(chunk: Buffer): void {
    let replies: string[];
    try {
      replies = this.decoder.push(chunk);
    } catch (err) {
      this.fail(new MllpError('MLLP_PROTOCOL', (err as Error).message, { cause: err }));
      this.socket.destroy();
      return;
    }
    for (const reply of replies) {
      const pending = this.pending;
      if (!pending) {
        // A frame nobody asked for: the stream can no longer be trusted to pair replies.
        this.fail(new MllpError('MLLP_PROTOCOL', 'MLLP peer sent a frame with no message in flight'));
        this.socket.destroy();
        return;
      }
      clearTimeout(pending.timer);
      this.pending = undefined;
      pending.resolve(reply);
    }
  }

  private fail(err: MllpError): void {
    this.closedError ??= err;
    const pending = this.pending;
    if (!pending) return;
    clearTimeout(pending.timer);
    this.pending = undefined;
    pending.reject(err);
  }
}
