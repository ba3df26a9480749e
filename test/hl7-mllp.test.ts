/**
 * src/hl7/mllp.ts and src/hl7/mllp-client.ts: MLLP framing, one-at-a-time processing per
 * connection in arrival order (or several batches at once, ACKs in arrival order), hostile byte streams, shutdown, idle and reply timeouts. Real TCP on
 * loopback; every server listens on port 0.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ackFor, parseAdt, readAck } from '../src/hl7/adt.js';
import { MllpClient, MllpError } from '../src/hl7/mllp-client.js';
import { frame, MllpDecoder, MllpFrameTooLargeError, startMllpServer, type MllpServer, type MllpServerOptions } from '../src/hl7/mllp.js';

const HOST = '127.0.0.1';

const adt = (controlId: string, family = 'Tester'): string =>
  [
    `MSH|^~\\&|EPICADT|RIVERSIDE|MEDEX|WELLNESSCTR|20260305093000+0000||ADT^A08^ADT_A01|${controlId}|P|2.5.1`,
    'EVN|A08|20260305093000+0000',
    `PID|1||E${controlId}^^^RIVERSIDE^MR||${family}^Pat||19580614|F`,
    'DG1|1||I10^Essential (primary) hypertension^I10||20250112|F',
  ].join('\r');

/** A raw TCP peer that collects every frame the server sends. */
async function rawPeer(port: number): Promise<{ socket: Socket; frames: string[]; waitFor: (n: number, ms?: number) => Promise<void>; closed: Promise<void> }> {
  const socket = connect({ host: HOST, port });
  await once(socket, 'connect');
  const decoder = new MllpDecoder();
  const frames: string[] = [];
  let notify: (() => void) | undefined;
  socket.on('data', (chunk: Buffer) => {
    frames.push(...decoder.push(chunk));
    notify?.();
  });
  socket.on('error', () => undefined);
  const closed = once(socket, 'close').then(() => undefined);
  const waitFor = async (n: number, ms = 20_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (frames.length < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} frames, got ${frames.length}`);
      await Promise.race([new Promise<void>((r) => (notify = r)), sleep(50), closed]);
      if (socket.destroyed && frames.length < n) throw new Error(`connection closed after ${frames.length} of ${n} frames`);
    }
  };
  return { socket, frames, waitFor, closed };
}

const controlIdOfAck = (ack: string): string => readAck(ack)?.controlId ?? '';

describe('hl7 mllp', () => {
  describe('MllpDecoder', () => {
    it('decodes a frame split byte by byte, multi-byte UTF-8 characters included', () => {
      const decoder = new MllpDecoder();
      const bytes = frame('PID|1||x||Müller^Zoë');
      const out: string[] = [];
      for (const b of bytes) out.push(...decoder.push(Buffer.from([b])));
      assert.deepEqual(out, ['PID|1||x||Müller^Zoë']);
      assert.equal(decoder.discardedBytes, 0);
    });

    it('returns every frame of one chunk, in order', () => {
      const decoder = new MllpDecoder();
      assert.deepEqual(decoder.push(Buffer.concat([frame('a'), frame('b'), frame('c')])), ['a', 'b', 'c']);
    });

    it('discards and counts bytes outside frames', () => {
      const seen: number[] = [];
      const decoder = new MllpDecoder({ onGarbage: (n) => seen.push(n) });
      assert.deepEqual(decoder.push(Buffer.concat([Buffer.from('junk'), frame('a'), Buffer.from('\r\n\n'), frame('b')])), ['a', 'b']);
      assert.equal(decoder.discardedBytes, 7);
      assert.deepEqual(seen, [7]);
    });

    it('keeps FS and CR split across chunks apart from the next frame', () => {
      const decoder = new MllpDecoder();
      const bytes = Buffer.concat([frame('one'), frame('two')]);
      const fs = bytes.indexOf(0x1c);
      assert.deepEqual(decoder.push(bytes.subarray(0, fs + 1)), ['one']);
      assert.deepEqual(decoder.push(bytes.subarray(fs + 1)), ['two']);
      assert.equal(decoder.discardedBytes, 0);
    });

    it('abandons a partial frame when a new start block arrives, counting it as garbage', () => {
      const decoder = new MllpDecoder();
      assert.deepEqual(decoder.push(Buffer.concat([Buffer.from([0x0b]), Buffer.from('half'), frame('whole')])), ['whole']);
      assert.equal(decoder.discardedBytes, 5);
    });

    it('throws once an unterminated frame passes the limit, across chunks', () => {
      const decoder = new MllpDecoder({ maxFrameBytes: 10 });
      assert.deepEqual(decoder.push(Buffer.from('\x0b12345')), []);
      assert.throws(() => decoder.push(Buffer.from('678901')), MllpFrameTooLargeError);
      assert.deepEqual(new MllpDecoder({ maxFrameBytes: 10 }).push(frame('1234567890')), ['1234567890']);
    });
  });

  describe('server', () => {
    const servers: MllpServer[] = [];
    const start = async (handler: (m: string) => Promise<string>, options: Partial<MllpServerOptions> = {}): Promise<MllpServer> => {
      const server = await startMllpServer(handler, { port: 0, host: HOST, ...options });
      servers.push(server);
      return server;
    };
    afterEach(async () => {
      await Promise.all(servers.splice(0).map((s) => s.close()));
    });

    it('acknowledges 1,000 messages on one connection: 1,000 handler calls, one at a time, in order, each ACK echoing its control ID', async () => {
      const handled: string[] = [];
      let inFlight = 0;
      let maxInFlight = 0;
      const server = await start(async (message) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        const result = parseAdt(message);
        handled.push(result.kind === 'ok' ? result.controlId : 'not ok');
        if (handled.length % 97 === 0) await sleep(1); // an occasional real wait, as storage would
        inFlight--;
        return ackFor(message, result);
      });
      const peer = await rawPeer(server.port);
      const ids = Array.from({ length: 1000 }, (_, i) => `C${String(i).padStart(4, '0')}`);
      const started = process.hrtime.bigint();
      for (let i = 0; i < ids.length; i += 50) peer.socket.write(Buffer.concat(ids.slice(i, i + 50).map((id) => frame(adt(id)))));
      await peer.waitFor(1000);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      console.log(`      1,000 ADT messages parsed, mapped and acknowledged in ${(seconds * 1000).toFixed(0)} ms: ${Math.round(1000 / seconds)} messages/s (pipelined, one connection)`);
      assert.deepEqual(handled, ids);
      assert.equal(maxInFlight, 1);
      assert.deepEqual(peer.frames.map(controlIdOfAck), ids);
      assert.ok(peer.frames.every((a) => readAck(a)?.code === 'AA'));
      await sleep(50);
      assert.equal(handled.length, 1000, 'no handler call after the last ACK');
      peer.socket.end();
    });

    it('with concurrency 3: 1,000 pipelined messages in batches, up to 3 batches at once, each message handled once, ACKs in arrival order', async () => {
      const handled: string[] = [];
      let inFlight = 0;
      let maxInFlight = 0;
      let batches = 0;
      const work = async (messages: string[]): Promise<string[]> => {
        inFlight++;
        batches++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        const results = messages.map((m) => parseAdt(m));
        for (const r of results) handled.push(r.kind === 'ok' ? r.controlId : 'not ok');
        // Later batches often finish first: their ACKs must still follow the earlier ones'.
        await sleep(Math.floor(Math.random() * 8));
        inFlight--;
        return messages.map((m, i) => ackFor(m, results[i]!));
      };
      const server = await start((m) => work([m]).then((a) => a[0]!), { batchHandler: (ms) => work(ms), concurrency: 3, maxBatch: 16 });
      const peer = await rawPeer(server.port);
      const ids = Array.from({ length: 1000 }, (_, i) => `K${String(i).padStart(4, '0')}`);
      for (let i = 0; i < ids.length; i += 50) peer.socket.write(Buffer.concat(ids.slice(i, i + 50).map((id) => frame(adt(id)))));
      await peer.waitFor(1000);
      assert.deepEqual(handled, ids, 'every message handed to a handler once, in arrival order');
      assert.deepEqual(peer.frames.map(controlIdOfAck), ids);
      assert.equal(maxInFlight, 3);
      assert.ok(batches < 1000, `${batches} batches`);
      peer.socket.end();
    });

    it('maxHandlers 3 over three connections of concurrency 2: never more than 3 handlers at once, every connection served, ACKs in order on each', async () => {
      let running = 0;
      let maxRunning = 0;
      const byConnection = new Map<string, number>();
      const work = async (messages: string[]): Promise<string[]> => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        const results = messages.map((m) => parseAdt(m));
        for (const r of results) {
          const prefix = r.kind === 'ok' ? r.controlId.slice(0, 1) : '?';
          byConnection.set(prefix, (byConnection.get(prefix) ?? 0) + 1);
        }
        await sleep(1 + Math.floor(Math.random() * 4));
        running--;
        return messages.map((m, i) => ackFor(m, results[i]!));
      };
      const server = await start((m) => work([m]).then((a) => a[0]!), { batchHandler: (ms) => work(ms), concurrency: 2, maxBatch: 4, maxHandlers: 3 });
      const peers = await Promise.all(['A', 'B', 'C'].map(() => rawPeer(server.port)));
      const ids = ['A', 'B', 'C'].map((p) => Array.from({ length: 200 }, (_, i) => `${p}${String(i).padStart(3, '0')}`));
      // A fourth connection put in line and then closed is forgotten: the others go on.
      const quitter = await rawPeer(server.port);
      peers.forEach((peer, n) => {
        for (let i = 0; i < 200; i += 20) peer.socket.write(Buffer.concat(ids[n]!.slice(i, i + 20).map((id) => frame(adt(id)))));
      });
      quitter.socket.write(Buffer.concat(['Q1', 'Q2', 'Q3'].map((id) => frame(adt(id)))));
      quitter.socket.destroy();
      await Promise.all(peers.map((peer) => peer.waitFor(200)));
      peers.forEach((peer, n) => assert.deepEqual(peer.frames.map(controlIdOfAck), ids[n], `connection ${n}: every message acknowledged, in order`));
      assert.equal(maxRunning, 3, 'at most maxHandlers handlers at once (and that many used)');
      for (const p of ['A', 'B', 'C']) assert.equal(byConnection.get(p), 200);
      for (const peer of peers) peer.socket.end();
    });

    it('with concurrency 2: a batch whose handler throws closes the connection; neither it nor any later batch is acknowledged', async () => {
      const errors: unknown[] = [];
      const started: string[][] = [];
      const work = async (messages: string[]): Promise<string[]> => {
        const ids = messages.map((m) => (parseAdt(m) as { controlId: string }).controlId);
        started.push(ids);
        if (ids.includes('F3')) throw new Error('storage down');
        // The batch after the failing one finishes later, without error: its ACKs are never written.
        await sleep(ids.includes('F1') || ids.includes('F2') ? 0 : 100);
        return messages.map((m) => ackFor(m, parseAdt(m)));
      };
      const server = await start((m) => work([m]).then((a) => a[0]!), { batchHandler: (ms) => work(ms), concurrency: 2, maxBatch: 2, onError: (e) => errors.push(e) });
      const peer = await rawPeer(server.port);
      peer.socket.write(Buffer.concat(['F1', 'F2'].map((id) => frame(adt(id)))));
      await peer.waitFor(2);
      peer.socket.write(Buffer.concat(['F3', 'F4', 'F5', 'F6'].map((id) => frame(adt(id)))));
      await peer.closed;
      assert.deepEqual(peer.frames.map(controlIdOfAck), ['F1', 'F2']);
      assert.deepEqual(started.flat(), ['F1', 'F2', 'F3', 'F4', 'F5', 'F6']);
      assert.ok(started.length > 2 && started.length <= 6);
      assert.match(String(errors[0]), /storage down/);
    });

    it('answers a sender that waits for each ACK (MllpClient), 1,000 round trips', async () => {
      const server = await start((message) => Promise.resolve(ackFor(message, parseAdt(message))));
      const client = await MllpClient.connect({ host: HOST, port: server.port, timeoutMs: 5000 });
      const started = process.hrtime.bigint();
      for (let i = 0; i < 1000; i++) {
        const reply = await client.send(adt(`R${i}`));
        assert.equal(controlIdOfAck(reply), `R${i}`);
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      console.log(`      1,000 round trips in ${(seconds * 1000).toFixed(0)} ms: ${Math.round(1000 / seconds)} messages/s (one in flight)`);
      await client.close();
    });

    it('reassembles frames written one byte at a time', async () => {
      const handled: string[] = [];
      const server = await start((m) => (handled.push(m), Promise.resolve(ackFor(m, parseAdt(m)))));
      const peer = await rawPeer(server.port);
      peer.socket.setNoDelay(true);
      for (const b of Buffer.concat([frame(adt('B1', 'Zoë')), frame(adt('B2'))])) {
        await new Promise<void>((resolve) => peer.socket.write(Buffer.from([b]), () => resolve()));
      }
      await peer.waitFor(2);
      assert.deepEqual(handled, [adt('B1', 'Zoë'), adt('B2')]);
      assert.deepEqual(peer.frames.map(controlIdOfAck), ['B1', 'B2']);
      peer.socket.end();
    });

    it('handles several frames from one write, and discards garbage between frames', async () => {
      const garbage: number[] = [];
      const handled: string[] = [];
      const server = await start((m) => (handled.push(m), Promise.resolve(ackFor(m, parseAdt(m)))), { onGarbage: (n) => garbage.push(n) });
      const peer = await rawPeer(server.port);
      peer.socket.write(Buffer.concat([Buffer.from('\r\nnoise'), frame(adt('G1')), Buffer.from('\n'), frame(adt('G2')), frame(adt('G3')), Buffer.from('xyz')]));
      await peer.waitFor(3);
      assert.deepEqual(peer.frames.map(controlIdOfAck), ['G1', 'G2', 'G3']);
      assert.equal(handled.length, 3);
      assert.equal(garbage.reduce((a, b) => a + b, 0), 7 + 1 + 3);
      peer.socket.end();
    });

    it('closes the connection when an unterminated frame passes maxFrameBytes, and reports it', async () => {
      const errors: unknown[] = [];
      let calls = 0;
      const server = await start((m) => (calls++, Promise.resolve(ackFor(m, parseAdt(m)))), { maxFrameBytes: 1024, onError: (e) => errors.push(e) });
      const peer = await rawPeer(server.port);
      peer.socket.write(Buffer.concat([Buffer.from([0x0b]), Buffer.alloc(4096, 'A')]));
      await peer.closed;
      assert.equal(calls, 0);
      assert.ok(errors.some((e) => e instanceof MllpFrameTooLargeError), String(errors));
    });

    it('close() stops accepting, lets the running handler finish and write its ACK, starts no queued frame, then closes', async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const started: string[] = [];
      const server = await start(async (m) => {
        const r = parseAdt(m);
        started.push(r.kind === 'ok' ? r.controlId : '?');
        await gate;
        return ackFor(m, r);
      });
      const peer = await rawPeer(server.port);
      peer.socket.write(Buffer.concat([frame(adt('S1')), frame(adt('S2'))]));
      while (started.length === 0) await sleep(5);
      let closed = false;
      const closing = server.close().then(() => (closed = true));
      await sleep(50);
      assert.equal(closed, false, 'close() waits for the running handler');
      const refused = connect({ host: HOST, port: server.port });
      const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ECONNREFUSED');
      release();
      await peer.waitFor(1);
      await closing;
      await peer.closed;
      assert.deepEqual(peer.frames.map(controlIdOfAck), ['S1']);
      assert.deepEqual(started, ['S1'], 'the queued frame is left for the sender to resend');
    });

    it('with concurrency 2, close() lets both running batches finish and write their ACKs in order, and starts no queued one', async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const started: string[][] = [];
      const work = async (messages: string[]): Promise<string[]> => {
        started.push(messages.map((m) => (parseAdt(m) as { controlId: string }).controlId));
        await gate;
        return messages.map((m) => ackFor(m, parseAdt(m)));
      };
      const server = await start((m) => work([m]).then((a) => a[0]!), { batchHandler: (ms) => work(ms), concurrency: 2, maxBatch: 2 });
      const peer = await rawPeer(server.port);
      peer.socket.write(Buffer.concat(['D1', 'D2', 'D3', 'D4'].map((id) => frame(adt(id)))));
      while (started.length < 2) await sleep(5);
      peer.socket.write(frame(adt('D5')));
      await sleep(20);
      const closing = server.close();
      release();
      await closing;
      await peer.closed;
      assert.deepEqual(started, [['D1', 'D2'], ['D3', 'D4']]);
      assert.deepEqual(peer.frames.map(controlIdOfAck), ['D1', 'D2', 'D3', 'D4']);
    });

    it('closes a connection idle longer than idleTimeoutMs, but not one whose handler is still running', async () => {
      const server = await start(async (m) => (await sleep(300), ackFor(m, parseAdt(m))), { idleTimeoutMs: 100 });
      const idle = await rawPeer(server.port);
      const t0 = Date.now();
      await idle.closed;
      assert.ok(Date.now() - t0 < 2000);
      const busy = await rawPeer(server.port);
      busy.socket.write(frame(adt('I1')));
      await busy.waitFor(1);
      assert.equal(controlIdOfAck(busy.frames[0] as string), 'I1');
      await busy.closed;
    });

    it('closes the connection unacknowledged when the handler throws, and reports the error', async () => {
      const errors: unknown[] = [];
      const server = await start(async () => Promise.reject(new Error('storage down')), { onError: (e) => errors.push(e) });
      const peer = await rawPeer(server.port);
      peer.socket.write(frame(adt('T1')));
      await peer.closed;
      assert.deepEqual(peer.frames, []);
      assert.match(String(errors[0]), /storage down/);
    });
  });

  describe('MllpClient', () => {
    let silent: Server | undefined;
    afterEach(async () => {
      if (silent) await new Promise<void>((r) => silent?.close(() => r()));
      silent = undefined;
    });

    it('rejects with MLLP_TIMEOUT when the peer never answers, and cannot be used again', async () => {
      const sockets: Socket[] = [];
      silent = createServer((s) => (sockets.push(s), s.on('error', () => undefined)));
      silent.listen(0, HOST);
      await once(silent, 'listening');
      const port = (silent.address() as { port: number }).port;
      const client = await MllpClient.connect({ host: HOST, port });
      const t0 = Date.now();
      await assert.rejects(client.send(adt('X1'), 200), (e: unknown) => e instanceof MllpError && e.code === 'MLLP_TIMEOUT');
      assert.ok(Date.now() - t0 >= 190);
      assert.equal(client.usable, false);
      await assert.rejects(client.send(adt('X2')), MllpError);
      for (const s of sockets) s.destroy();
    });

    it('refuses a second message while one is in flight', async () => {
      const server = await startMllpServer(async (m) => (await sleep(50), ackFor(m, parseAdt(m))), { port: 0, host: HOST });
      const client = await MllpClient.connect({ host: HOST, port: server.port });
      const first = client.send(adt('Y1'));
      await assert.rejects(client.send(adt('Y2')), (e: unknown) => e instanceof MllpError && e.code === 'MLLP_BUSY');
      assert.equal(controlIdOfAck(await first), 'Y1');
      await client.close();
      await server.close();
    });

    it('fails to connect with MLLP_CONNECT when nothing listens', async () => {
      const probe = createServer();
      probe.listen(0, HOST);
      await once(probe, 'listening');
      const port = (probe.address() as { port: number }).port;
      await new Promise<void>((r) => probe.close(() => r()));
      await assert.rejects(MllpClient.connect({ host: HOST, port }), (e: unknown) => e instanceof MllpError && e.code === 'MLLP_CONNECT');
    });
  });
});
