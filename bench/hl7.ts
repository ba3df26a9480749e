/**
 * Inbound HL7 v2 throughput: ADT^A04 messages with three DG1 each, sent one after another over one
 * MLLP connection (the next after the previous ACK, as senders do), each a new patient. Every one
 * is parsed, applied (Patient, three Conditions, Provenance, the stored message, one transaction)
 * and acknowledged; the phase counts only AA answers.
 */
import { readFileSync } from 'node:fs';
import { readAck } from '../src/hl7/adt.js';
import { MllpClient } from '../src/hl7/mllp-client.js';

export const HL7_FACILITY = 'BENCHFAC';

export interface Hl7Result {
  messages: number;
  acknowledged: number;
  seconds: number;
  messagesPerSecond: number;
  latencyMs: { p50: number; p99: number };
}

export async function runHl7Phase(host: string, port: number, sampleFile: string, count: number, log: (m: string) => void): Promise<Hl7Result> {
  const template = readFileSync(sampleFile, 'utf8').replace(/\r?\n/g, '\r').trimEnd().replace(/^(MSH\|[^|]*\|[^|]*\|)([^|^]*)/, `$1${HL7_FACILITY}`);
  const client = await MllpClient.connect({ host, port, timeoutMs: 30_000 });
  const latencies: number[] = [];
  let acknowledged = 0;
  const started = process.hrtime.bigint();
  try {
    for (let i = 0; i < count; i++) {
      const message = template.split('E4471023').join(`B${i}`).split('RVS000123').join(`BENCH${i}`);
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
  return { messages: count, acknowledged, seconds: Math.round(seconds * 100) / 100, messagesPerSecond: Math.round((acknowledged / seconds) * 10) / 10, latencyMs: { p50: at(0.5), p99: at(0.99) } };
}
