/**
 * Inbound HL7 v2 throughput: ADT^A04 messages with three DG1 each over one MLLP connection, each a
 * new patient. Every one is parsed, applied (Patient, three Conditions, Provenance, the stored
 * message) and acknowledged; the phase counts only AA answers. Two ways of sending:
 *  - window 1: the next message after the previous ACK, as most senders do (MllpClient);
 *  - window N: up to N messages sent before their ACKs arrive (the next one as each ACK comes
 *    back); the server then applies what has arrived together, one transaction and one commit.
 */
import { readFileSync } from 'node:fs';
import { readAck } from '../src/hl7/adt.js';
import { connect } from 'node:net';
import { MllpClient } from '../src/hl7/mllp-client.js';
import { frame, MllpDecoder } from '../src/hl7/mllp.js';

export const HL7_FACILITY = 'BENCHFAC';

export interface Hl7Result {
  /** Messages in flight at most (1: each waits for the previous ACK). */
  window: number;
  messages: number;
  acknowledged: number;
  seconds: number;
  messagesPerSecond: number;
  latencyMs: { p50: number; p99: number };
}

export async function runHl7Phase(host: string, port: number, sampleFile: string, count: number, log: (m: string) => void, window = 1, prefix = 'B'): Promise<Hl7Result> {
  const template = readFileSync(sampleFile, 'utf8').replace(/\r?\n/g, '\r').trimEnd().replace(/^(MSH\|[^|]*\|[^|]*\|)([^|^]*)/, `$1${HL7_FACILITY}`);
  const messageOf = (i: number): string => template.split('E4471023').join(`${prefix}${i}`).split('RVS000123').join(`${prefix}BENCH${i}`);
  if (window > 1) return runPipelined(host, port, messageOf, count, window, log);
  const client = await MllpClient.connect({ host, port, timeoutMs: 30_000 });
  const latencies: number[] = [];
  let acknowledged = 0;
  const started = process.hrtime.bigint();
  try {
    for (let i = 0; i < count; i++) {
      const message = messageOf(i);
      const t0 = process.hrtime.bigint();
      const ack = readAck(await client.send(message));
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (ack?.code === 'AA') acknowledged++;
      if ((i + 1) % 1000 === 0) log(`  ${i + 1} ADT messages acknowledged`);
    }
  } finally {
    await client.close();
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const at = (q: number): number => Math.round((latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0) * 100) / 100;
  return { window: 1, messages: count, acknowledged, seconds: Math.round(seconds * 100) / 100, messagesPerSecond: Math.round((acknowledged / seconds) * 10) / 10, latencyMs: { p50: at(0.5), p99: at(0.99) } };
}

/** Up to `window` messages in flight on one connection; the next goes as each ACK arrives. */
async function runPipelined(host: string, port: number, messageOf: (i: number) => string, count: number, window: number, log: (m: string) => void): Promise<Hl7Result> {
  const socket = connect(port, host);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.setNoDelay(true);
  const decoder = new MllpDecoder({});
  const sentAt: bigint[] = [];
  const latencies: number[] = [];
  let sent = 0;
  let answered = 0;
  let acknowledged = 0;
  const started = process.hrtime.bigint();
  const sendNext = (): void => {
    sentAt.push(process.hrtime.bigint());
    socket.write(frame(messageOf(sent++)));
  };
  await new Promise<void>((resolve, reject) => {
    socket.on('error', reject);
    socket.on('close', () => (answered < count ? reject(new Error(`MLLP connection closed after ${answered} of ${count} ACKs`)) : resolve()));
    socket.on('data', (chunk: Buffer) => {
      for (const reply of decoder.push(chunk)) {
        latencies.push(Number(process.hrtime.bigint() - (sentAt[answered] as bigint)) / 1e6);
        answered++;
        if (readAck(reply)?.code === 'AA') acknowledged++;
        if (answered % 1000 === 0) log(`  ${answered} ADT messages acknowledged (${window} in flight)`);
        if (sent < count) sendNext();
      }
      if (answered >= count) resolve();
    });
    for (let i = 0; i < Math.min(window, count); i++) sendNext();
  });
  socket.destroy();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const at = (q: number): number => Math.round((latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0) * 100) / 100;
  return { window, messages: count, acknowledged, seconds: Math.round(seconds * 100) / 100, messagesPerSecond: Math.round((acknowledged / seconds) * 10) / 10, latencyMs: { p50: at(0.5), p99: at(0.99) } };
}
