/**
 * A small HL7 v2 receiver for trying the server's MDM^T02 delivery by hand (README, "The loop, step
 * by step"): it listens for MLLP on --port, answers every message with an ACK (AA when it could save
 * it, AR when the text is not an HL7 message), and saves each message to --out as
 * `<control id>.hl7`; an OBX of type ED holding a base64 PDF is also saved as `<control id>.pdf`,
 * so the report the physician's system would file can be opened.
 *
 *   npm run hl7-peer -- --port 2576 --out ./hl7-received
 *
 * It is a test peer, not an interface engine: no routing, no persistence guarantees.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ack, mshField } from '../src/hl7/adt.js';
import { startMllpServer } from '../src/hl7/mllp.js';

const { values } = parseArgs({
  options: { port: { type: 'string', default: '2576' }, host: { type: 'string', default: '127.0.0.1' }, out: { type: 'string', default: './hl7-received' } },
});
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`hl7-peer: --port ${values.port} is not a TCP port\n`);
  process.exit(2);
}
const out = resolve(values.out);
mkdirSync(out, { recursive: true });

/** The base64 PDFs of the message's OBX segments of type ED (OBX-5: ^application^pdf^Base64^data). */
function pdfsOf(message: string): Buffer[] {
  const pdfs: Buffer[] = [];
  for (const segment of message.split(/\r\n?|\n/)) {
    const fields = segment.split('|');
    if (fields[0] !== 'OBX' || fields[2] !== 'ED') continue;
    const [, type, subtype, encoding, data] = (fields[5] ?? '').split('^');
    if (type === 'application' && subtype?.toLowerCase() === 'pdf' && encoding === 'Base64' && data) pdfs.push(Buffer.from(data, 'base64'));
  }
  return pdfs;
}

const server = await startMllpServer(
  (message) => Promise.resolve(answer(message)),
  { port, host: values.host, onError: (err) => process.stderr.write(`hl7-peer: ${String(err)}\n`) },
);
process.stdout.write(`hl7-peer: listening for MLLP on ${values.host}:${server.port}, saving to ${out}\n`);

/** Saves one message (and its PDFs) and answers its ACK. */
function answer(message: string): string {
  const controlId = mshField(message, 10);
  if (!message.startsWith('MSH') || !controlId) return ack(message, 'AR', 'not an HL7 v2 message with a control id (MSH-10)');
  const name = controlId.replace(/[^A-Za-z0-9._-]/g, '_');
  writeFileSync(join(out, `${name}.hl7`), message.replace(/\r/g, '\n'));
  const pdfs = pdfsOf(message);
  pdfs.forEach((pdf, i) => writeFileSync(join(out, `${name}${i ? `-${i + 1}` : ''}.pdf`), pdf));
  process.stdout.write(`${new Date().toISOString()} ${mshField(message, 9, 2) ?? '?'} ${controlId}: saved${pdfs.length ? ` with ${pdfs.length} PDF` : ''}\n`);
  return ack(message, 'AA');
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void server.close().then(() => process.exit(0));
  });
}
