/** The report as HL7 v2.5 MDM^T02 and the ACK that answers it (src/summary/mdm.ts). */
import assert from 'node:assert/strict';
import { Message } from 'node-hl7-client';
import { buildMdmT02, hl7DateTime, parseAck, type MdmT02Input } from '../src/summary/mdm.js';
import { renderPdf } from '../src/summary/report.js';

/** Every byte value, then a PDF-looking tail: base64 of it uses the whole alphabet, '+' and '/' included. */
const BYTES = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_v, i) => i)), Buffer.from('%PDF-1.3\n%\xff\xff\xff\xff\n', 'latin1')]);

function input(overrides: Partial<MdmT02Input> = {}, patient: Partial<MdmT02Input['patient']> = {}): MdmT02Input {
  return {
    sendingApplication: 'MET-FHIR',
    sendingFacility: 'MoveWell',
    receivingApplication: 'EPIC',
    receivingFacility: 'RIVERSIDE',
    controlId: 'mdm-000123',
    timestamp: '2024-04-02T10:15:00+02:00',
    patient: { mrn: 'MRN-004211', assigningAuthority: 'RIVERSIDE', family: "O'Neill", given: 'Margaret', birthDate: '1954-07-19', gender: 'female', ...patient },
    document: { uniqueId: 'urn-doc-7c1b2c4e', title: 'Exercise progress report', typeCode: '11506-3', activityTime: '2024-03-29', authorName: 'Jordan Lee', pdf: BYTES },
    ...overrides,
  };
}

const segments = (text: string): string[] => text.split('\r');
const raw = (text: string, name: string): string[] => (segments(text).find((s) => s.startsWith(`${name}|`)) ?? '').split('|');

describe('MDM^T02', () => {
  it('is an MDM^T02^MDM_T02 of HL7 v2.5 with MSH, EVN, PID, PV1, TXA and OBX, in that order', () => {
    const text = buildMdmT02(input());
    assert.deepEqual(segments(text).map((s) => s.slice(0, 3)), ['MSH', 'EVN', 'PID', 'PV1', 'TXA', 'OBX']);
    const m = new Message({ text });
    assert.deepEqual(
      ['MSH.3', 'MSH.4', 'MSH.5', 'MSH.6', 'MSH.7', 'MSH.9.1', 'MSH.9.2', 'MSH.9.3', 'MSH.10', 'MSH.11', 'MSH.12', 'MSH.18'].map((p) => m.get(p).toString()),
      ['MET-FHIR', 'MoveWell', 'EPIC', 'RIVERSIDE', '20240402101500+0200', 'MDM', 'T02', 'MDM_T02', 'mdm-000123', 'P', '2.5', ''],
    );
    assert.deepEqual(['EVN.1', 'EVN.2'].map((p) => m.get(p).toString()), ['T02', '20240402101500+0200']);
  });

  it('identifies the patient in PID and marks the visit not applicable in PV1 unless told outpatient', () => {
    const m = new Message({ text: buildMdmT02(input()) });
    assert.deepEqual(['PID.3.1', 'PID.3.4', 'PID.3.5', 'PID.5.1', 'PID.5.2', 'PID.7', 'PID.8'].map((p) => m.get(p).toString()), ['MRN-004211', 'RIVERSIDE', 'MR', "O'Neill", 'Margaret', '19540719', 'F']);
    assert.equal(m.get('PV1.2').toString(), 'N');
    assert.equal(new Message({ text: buildMdmT02(input({ patientClass: 'O' })) }).get('PV1.2').toString(), 'O');
    assert.equal(raw(buildMdmT02(input({}, { assigningAuthority: undefined })), 'PID')[3], 'MRN-004211^^^^MR');
  });

  it('describes the document in TXA: progress note, activity time, originator, unique number, authenticated, available', () => {
    const m = new Message({ text: buildMdmT02(input()) });
    const txa = (n: string): string => m.get(`TXA.${n}`).toString();
    assert.equal(txa('1'), '1');
    assert.equal(txa('2'), 'PR'); // table 0270: progress note
    assert.equal(txa('4'), '20240329');
    assert.equal(txa('6'), '20240402101500+0200');
    assert.equal(txa('9.2'), 'Jordan Lee');
    assert.equal(txa('12'), 'urn-doc-7c1b2c4e');
    assert.equal(txa('17'), 'AU');
    assert.equal(txa('19'), 'AV');
    const legal = new Message({ text: buildMdmT02(input({ document: { ...input().document, completionStatus: 'LA' } })) });
    assert.equal(legal.get('TXA.17').toString(), 'LA');
  });

  it('carries the PDF in OBX-5 as ED ^application^pdf^Base64^…, byte for byte', async () => {
    const pdf = await renderPdf({
      kind: 'progress-report',
      patient: { name: "Margaret O'Neill", birthDate: '1954-07-19', gender: 'female', identifiers: [] },
      period: { start: '2024-01-08', end: '2024-03-29' },
      author: { name: 'Jordan Lee', organization: 'MoveWell' },
      recipient: { name: 'Dr. Priya Raman' },
      issued: '2024-04-02T10:15:00+02:00',
      diagnoses: [],
      goals: [],
      outcomes: [{ name: 'Timed Up and Go', code: { system: 'http://loinc.org', code: '89423-8' }, unit: 's', series: [{ date: '2024-01-08', value: 11.4 }, { date: '2024-03-27', value: 9.6 }] }],
      adverseEvents: [],
      recommendations: [],
    });
    for (const bytes of [BYTES, pdf]) {
      const text = buildMdmT02(input({ document: { ...input().document, pdf: bytes } }));
      const m = new Message({ text });
      assert.deepEqual(['OBX.1', 'OBX.2', 'OBX.3.1', 'OBX.3.2', 'OBX.3.3', 'OBX.5.2', 'OBX.5.3', 'OBX.5.4', 'OBX.11', 'OBX.14'].map((p) => m.get(p).toString()), [
        '1', 'ED', '11506-3', 'Progress note', 'LN', 'application', 'pdf', 'Base64', 'F', '20240329',
      ]);
      assert.ok(Buffer.from(m.get('OBX.5.5').toString(), 'base64').equals(bytes));
      // Base64 needs no escaping: the field on the wire is the encoding itself, on one line.
      assert.equal(raw(text, 'OBX')[5], `^application^pdf^Base64^${bytes.toString('base64')}`);
      assert.doesNotMatch(bytes.toString('base64'), /[|^~\\&\r\n]/);
      assert.equal(segments(text).length, 6);
    }
  });

  it('escapes HL7 delimiters in names and declares UTF-8 only when needed', () => {
    const nasty = 'O|Ne^il&l~\\';
    const text = buildMdmT02(input({ document: { ...input().document, authorName: 'Lee ^ & Co' } }, { family: nasty, given: 'Zoë' }));
    assert.equal(raw(text, 'PID')[5], 'O\\F\\Ne\\S\\il\\T\\l\\R\\\\E\\^Zoë');
    assert.equal(raw(text, 'TXA')[9], '^Lee \\S\\ \\T\\ Co');
    const m = new Message({ text });
    assert.equal(m.get('PID.5.1').toString(), nasty);
    assert.equal(m.get('PID.5.2').toString(), 'Zoë');
    assert.equal(m.get('TXA.9.2').toString(), 'Lee ^ & Co');
    assert.equal(m.get('MSH.18').toString(), 'UNICODE UTF-8');
    assert.equal(segments(text).length, 6, 'no segment split by the escaped text');
  });

  it('writes HL7 timestamps from ISO 8601, keeping the offset', () => {
    assert.equal(hl7DateTime('2024-04-02T10:15:00+02:00'), '20240402101500+0200');
    assert.equal(hl7DateTime('2024-04-02T10:15Z'), '20240402101500+0000');
    assert.equal(hl7DateTime(new Date('2024-04-02T08:15:00.123Z')), '20240402081500+0000');
    assert.equal(hl7DateTime('2024-04-02'), '20240402');
    assert.equal(hl7DateTime('1954-07'), '195407');
    assert.throws(() => hl7DateTime('02/04/2024'), /not an ISO 8601/);
  });
});

describe('parseAck', () => {
  const msh = 'MSH|^~\\&|EPIC|RIVERSIDE|MET-FHIR|MoveWell|20240402101600||ACK^T02^ACK|ack-1|P|2.5';

  it('reads the code and the control id of an accept', () => {
    assert.deepEqual(parseAck(`${msh}\rMSA|AA|mdm-000123\r`), { code: 'AA', controlId: 'mdm-000123' });
    assert.deepEqual(parseAck(`${msh}\rMSA|CA|mdm-000123`), { code: 'CA', controlId: 'mdm-000123' });
  });

  it('takes the text from MSA-3, else from ERR', () => {
    assert.deepEqual(parseAck(`${msh}\rMSA|AR|mdm-000123|Unknown patient\r`), { code: 'AR', controlId: 'mdm-000123', text: 'Unknown patient' });
    const err = `${msh}\rMSA|AE|mdm-000123\rERR|||204^Unknown key identifier^HL70357|E||||No patient with MRN-004211\r`;
    assert.deepEqual(parseAck(err), { code: 'AE', controlId: 'mdm-000123', text: 'No patient with MRN-004211' });
    const coded = `${msh}\rMSA|CE|mdm-000123\rERR|||207^Application internal error^HL70357|E\r`;
    assert.deepEqual(parseAck(coded), { code: 'CE', controlId: 'mdm-000123', text: 'Application internal error' });
  });

  it('tolerates MLLP framing, a byte-order mark and LF separators', () => {
    assert.deepEqual(parseAck(`\x0b${msh}\rMSA|AA|mdm-000123\r\x1c\r`), { code: 'AA', controlId: 'mdm-000123' });
    assert.deepEqual(parseAck(`\uFEFF${msh}\nMSA|AA|mdm-000123\n`), { code: 'AA', controlId: 'mdm-000123' });
    assert.deepEqual(parseAck(`${msh}\r\nMSA|AE|mdm-000123|Escaped \\T\\ text\r\n`), { code: 'AE', controlId: 'mdm-000123', text: 'Escaped & text' });
  });

  it('rejects what is not an acknowledgement', () => {
    assert.throws(() => parseAck('hello'), /does not start with MSH/);
    assert.throws(() => parseAck(`${msh}\rPID|1`), /no MSA segment/);
    assert.throws(() => parseAck(`${msh}\rMSA|OK|mdm-000123`), /'OK' is not an acknowledgement code/);
  });
});
