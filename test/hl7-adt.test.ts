/**
 * src/hl7/adt.ts: every sample in /work/shared/data/hl7v2 (the project's own and the public ones)
 * gets a result and an ACK; ADT A01/A04/A08/A31 map to a Patient and one Condition per DG1 that are
 * valid R4 (the validator the server uses on writes); malformed messages are NAKed with a reason,
 * other message types get AE "unsupported message type". Then field-by-field checks, sender
 * quirks (BOM, LF, continuation lines, "MSH|" inside a field), escape sequences and the ACK layout.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { Condition, Patient } from 'fhir/r4.js';
import { Message } from 'node-hl7-client';
import { ack, ackFor, hl7DateTime, parseAdt, readAck, segmentsOf, SYSTEMS, type AdtOk, type AdtResult } from '../src/hl7/adt.js';
import type { JsonResource } from '../src/fhir/resource.js';
import { ResourceValidator } from '../src/validation/validator.js';

const DATA = '/work/shared/data/hl7v2';
const files = (dir: string): string[] => readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : n.endsWith('.hl7') ? [join(dir, n)] : []));
const read = (name: string): string => readFileSync(join(DATA, name), 'utf8');
const validator = new ResourceValidator();

function ok(result: AdtResult): AdtOk {
  assert.equal(result.kind, 'ok', JSON.stringify(result));
  return result;
}
const segments = (message: string): string[][] => message.split('\r').map((s) => s.split('|'));
const condition = (r: AdtOk, code: string): Condition => {
  const found = r.conditions.find((c) => c.code?.coding?.[0]?.code === code);
  assert.ok(found, `a Condition with code ${code}`);
  return found;
};
const MSH = 'MSH|^~\\&|EPICADT|RIVERSIDE|MEDEX|WELLNESSCTR|20260305093000-0500||ADT^A04^ADT_A01|CTRL1|P|2.5.1';

/** A field read through the library's own nodes (field → repetitions → components → subcomponents). */
function libraryReps(message: Message, segment: number, field: number): string[][][] {
  const node = message.toArray()[segment];
  if (!node) return [];
  return node
    .get(node.name === 'MSH' ? field - 1 : field)
    .toArray()
    .map((rep) => rep.toArray().map((comp) => (comp.toArray().length > 0 ? comp.toArray().map((s) => s.toString()) : [comp.toString()])));
}

describe('hl7 adt', () => {
  describe('segment reading equals the library\'s node walk', () => {
    const crafted = [
      `${MSH}\rPID|1||A~~B^^C&&D~||E\\F\\G^H\\S\\I&J\\T\\K~\\R\\\\E\\||||||`,
      'MSH#$*!@#APP#FAC#R#RF#20260101##ADT$A04#C1#P#2.5\rPID#1##X*Y$Z!W@V$$#!E!A!F!#',
      `${MSH}\rDG1|1||I10^Knee^I10C||20260101|||||||||||||||`,
      `${MSH}\rPID|`,
    ];
    const samples = [...files(DATA).sort().map((f) => ({ name: relative(DATA, f), text: readFileSync(f, 'utf8') })), ...crafted.map((text, i) => ({ name: `crafted ${i + 1}`, text }))];
    for (const { name, text } of samples) {
      it(name, () => {
        const normal = text.replace(/^\uFEFF/, '').replace(/\r\n|\n/g, '\r');
        let message: Message;
        try {
          message = new Message({ text: normal });
        } catch {
          return; // a batch or a message the library refuses: parseAdt rejects it before reading any field
        }
        const segs = segmentsOf(message);
        assert.ok(segs.length > 0);
        let compared = 0;
        segs.forEach((seg, i) => {
          const count = (message.toArray()[i]?.toRaw().split(normal.charAt(3)).length ?? 0) + 2;
          for (let field = 1; field <= count; field++) {
            assert.deepEqual(seg.reps(field), libraryReps(message, i, field), `${seg.name}-${field}`);
            compared++;
          }
        });
        assert.ok(compared > segs.length);
      });
    }
  });

  describe('every sample message', () => {
    const all = files(DATA).sort();
    before(() => assert.ok(all.length >= 33, `found ${all.length} samples`));

    for (const file of files(DATA).sort()) {
      const name = relative(DATA, file);
      it(`gets a result and an ACK: ${name}`, () => {
        const text = readFileSync(file, 'utf8');
        const result = parseAdt(text);
        const reply = readAck(ackFor(text, result));
        const type = /^\uFEFF?MSH\|[^|]*\|(?:[^|]*\|){6}([^|^]*)\^?([^|^]*)/.exec(text);
        if (/malformed-/.test(name)) {
          assert.notEqual(result.kind, 'ok');
          assert.ok(result.kind !== 'ok' && result.reason.length > 0);
          assert.equal(reply?.code, result.kind === 'reject' ? 'AR' : 'AE');
        } else if (type?.[1] !== 'ADT') {
          assert.equal(result.kind, 'error');
          assert.match(result.kind === 'error' ? result.reason : '', /^unsupported message type /);
          assert.equal(reply?.code, 'AE');
        } else if (!['A01', 'A04', 'A08', 'A31'].includes(type[2] ?? '')) {
          assert.equal(result.kind, 'error');
          assert.match(result.kind === 'error' ? result.reason : '', /^unsupported event ADT\^A03/);
        } else {
          const r = ok(result);
          assert.equal(reply?.code, 'AA');
          assert.equal(reply?.controlId, r.controlId);
          assert.deepEqual(validator.problems(r.patient as unknown as JsonResource), [], JSON.stringify(r.patient));
          assert.equal(r.conditions.length, (text.match(/^DG1\|/gm) ?? []).length);
          for (const c of r.conditions) assert.deepEqual(validator.problems(c as unknown as JsonResource), [], JSON.stringify(c));
        }
      });
    }
  });

  describe('mapping', () => {
    it('adt-a04-knee-oa: PID-3 with two identifiers, names, birth date, sex, address, phone; three ICD-10-CM diagnoses', () => {
      const r = ok(parseAdt(read('adt-a04-knee-oa.hl7')));
      assert.deepEqual([r.event, r.controlId, r.sendingApplication, r.sendingFacility, r.version], ['A04', 'RVS000123', 'EPICADT', 'RIVERSIDE', '2.5.1']);
      const p: Patient = r.patient;
      assert.deepEqual(p.identifier, [
        { type: { coding: [{ system: SYSTEMS.v20203, code: 'MR', display: 'Medical record number' }] }, system: 'urn:hl7v2:assigner:RIVERSIDE', value: 'E4471023' },
        { type: { coding: [{ system: SYSTEMS.v20203, code: 'SS', display: 'Social Security number' }] }, system: 'urn:hl7v2:assigner:SSA', value: '999-44-1234' },
      ]);
      assert.deepEqual(r.mrn, { system: 'urn:hl7v2:assigner:RIVERSIDE', value: 'E4471023' });
      assert.deepEqual(p.name, [{ family: 'Delacroix', given: ['Marguerite', 'J'] }]);
      assert.equal(p.birthDate, '1958-06-14');
      assert.equal(p.gender, 'female');
      assert.deepEqual(p.address, [{ line: ['418 Birch Ln'], city: 'Dayton', state: 'OH', postalCode: '45402', country: 'USA' }]);
      assert.deepEqual(p.telecom, [{ system: 'phone', value: '+1 937 5550142', use: 'home' }]);
      assert.deepEqual(
        r.conditions.map((c) => c.code?.coding?.[0]?.code),
        ['M17.11', 'I10', 'Z96.651'],
      );
      assert.deepEqual(condition(r, 'M17.11'), {
        resourceType: 'Condition',
        identifier: [{ system: 'urn:hl7v2:dg1:RIVERSIDE', value: 'E4471023|M17.11' }],
        clinicalStatus: { coding: [{ system: SYSTEMS.conditionClinical, code: 'active' }] },
        verificationStatus: { coding: [{ system: SYSTEMS.conditionVerStatus, code: 'confirmed' }] },
        category: [
          { coding: [{ system: SYSTEMS.conditionCategory, code: 'encounter-diagnosis', display: 'Encounter Diagnosis' }] },
          { coding: [{ system: SYSTEMS.v20052, code: 'F', display: 'Final' }] },
        ],
        code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'M17.11', display: 'Unilateral primary osteoarthritis, right knee' }], text: 'Unilateral primary osteoarthritis, right knee' },
        subject: { type: 'Patient', identifier: { system: 'urn:hl7v2:assigner:RIVERSIDE', value: 'E4471023' } },
        onsetDateTime: '2026-03-05',
        recordedDate: '2026-03-05',
      });
      assert.deepEqual(r.warnings, []);
    });

    it('adt-a01-escape-sequences: the apostrophe stays, \\T\\ becomes &, admitting and working diagnoses are provisional', () => {
      const r = ok(parseAdt(read('adt-a01-escape-sequences.hl7')));
      assert.equal(r.patient.name?.[0]?.family, "O'Brien-Smith");
      assert.deepEqual(r.patient.address?.[0]?.line, ['12 Main St & 3rd Ave']);
      assert.deepEqual(
        r.conditions.map((c) => [c.code?.coding?.[0]?.code, c.verificationStatus?.coding?.[0]?.code, c.category?.[1]?.coding?.[0]?.code]),
        [
          ['I21.4', 'provisional', 'A'],
          ['I48.91', 'provisional', 'W'],
        ],
      );
    });

    it('decodes every HL7 escape sequence in values', () => {
      const r = ok(parseAdt([MSH, 'PID|1||E1^^^RIVERSIDE^MR||A\\F\\B\\S\\C\\R\\D\\E\\F\\T\\G^Jos\\X65\\'].join('\r')));
      assert.deepEqual(r.patient.name, [{ family: 'A|B^C~D\\F&G', given: ['Jose'] }]);
    });

    it('adt-a08-lf-separators: LF between segments reads like CR', () => {
      const r = ok(parseAdt(read('adt-a08-lf-separators.hl7')));
      assert.deepEqual([r.event, r.controlId, r.patient.gender, r.patient.birthDate], ['A08', 'LK-2001', 'male', '1972-01-01']);
      assert.deepEqual(
        r.conditions.map((c) => c.identifier?.[0]?.value),
        ['LK-77120|M54.50', 'LK-77120|E66.01'],
      );
    });

    it('adt-a08-stroke-update (v2.3): phone in XTN.1, DG1-2 coding method, the Z-segment ignored', () => {
      const r = ok(parseAdt(read('adt-a08-stroke-update.hl7')));
      assert.equal(r.version, '2.3');
      assert.deepEqual(r.patient.telecom, [{ system: 'phone', value: '(207)555-0199', use: 'home' }]);
      assert.deepEqual(
        r.conditions.map((c) => [c.code?.coding?.[0]?.system, c.code?.coding?.[0]?.code, c.verificationStatus?.coding?.[0]?.code, c.onsetDateTime]),
        [
          ['http://hl7.org/fhir/sid/icd-10-cm', 'I69.351', 'provisional', '2026-04-01'],
          ['http://hl7.org/fhir/sid/icd-10-cm', 'E11.9', 'confirmed', '2019-09-17'],
        ],
      );
    });

    it('adt-a31-no-dg1: a demographics update gives a Patient and no Condition', () => {
      const r = ok(parseAdt(read('adt-a31-no-dg1.hl7')));
      assert.equal(r.event, 'A31');
      assert.deepEqual(r.conditions, []);
      assert.deepEqual(r.patient.address?.[0]?.postalCode, '45405');
    });

    it('public ADT-A01-01 (v2.8): OID and namespace authorities, name types, SNOMED code, DG1-20 identifier, a zoned diagnosis time', () => {
      const r = ok(parseAdt(read('public/adt/ADT-A01-01.hl7')));
      assert.deepEqual(r.mrn, { system: 'urn:hl7v2:assigner:test1', value: 'PATID1234' });
      assert.deepEqual(r.patient.name?.map((n) => [n.use, n.family, n.given]), [
        ['usual', 'EVERYMAN', ['ADAM', 'A']],
        ['official', 'Josh', ['stanley']],
      ]);
      assert.deepEqual(r.patient.address?.[0]?.line, ['1000 Hospital Lane', 'Ste. 123']);
      const [c] = r.conditions;
      assert.deepEqual(c?.code, { coding: [{ system: 'http://snomed.info/sct', code: '422504002', display: 'Ischemic stroke(disorder)' }], text: 'Stroke' });
      assert.deepEqual(c?.identifier, [{ system: 'urn:oid:1.3.6.1.4.1.44750.1.2.2', value: 'DI20' }]);
      assert.equal(c?.onsetDateTime, '2004-01-25T11:40:25+04:20');
      assert.equal(r.messageTime, '1989-08-18T11:26:00+02:15');
    });

    it('public ADT04-23: a byte-order mark, and "MSH" as a field value inside PID, still parse', () => {
      const text = read('public/adt/ADT04-23.hl7');
      assert.ok(text.startsWith('\uFEFF') && /\|MSH\|/.test(text.split('\n')[2] ?? ''));
      const r = ok(parseAdt(text));
      assert.equal(r.controlId, 'Q123456789T123456789X123456');
      assert.deepEqual(r.mrn, { system: 'urn:hl7v2:assigner:NINTENDO', value: '123456789' });
      assert.match(r.warnings.join(), /no assigning authority/);
    });

    it('public ADT01-23 (v2.3): an ICD-9 diagnosis with no date', () => {
      const r = ok(parseAdt(read('public/adt/ADT01-23.hl7')));
      const c = condition(r, '71596');
      assert.equal(c.code?.coding?.[0]?.system, 'http://hl7.org/fhir/sid/icd-9-cm');
      assert.equal(c.onsetDateTime, undefined);
    });

    it('gives a diagnosis the same identifier when the message is sent again', () => {
      const text = read('adt-a04-knee-oa.hl7');
      const again = text.replace('RVS000123', 'RVS999999').replace('20260305093000||', '20260306120000||');
      assert.deepEqual(
        ok(parseAdt(again)).conditions.map((c) => c.identifier),
        ok(parseAdt(text)).conditions.map((c) => c.identifier),
      );
    });

    it('keeps a diagnosis in an unknown coding system as text, with a warning', () => {
      const r = ok(parseAdt([MSH, 'PID|1||E1^^^RIVERSIDE^MR||Doe^Jo', 'DG1|1||KNEE-7^Knee pain^LOCAL||20260301|W'].join('\r')));
      assert.deepEqual(r.conditions[0]?.code, { text: 'Knee pain (LOCAL KNEE-7)' });
      assert.equal(r.conditions[0]?.identifier?.[0]?.value, 'E1|KNEE-7');
      assert.match(r.warnings.join(), /coding system 'LOCAL' is not known/);
      assert.deepEqual(validator.problems(r.conditions[0] as unknown as JsonResource), []);
    });

    it('marks a DG1 with action code D as entered-in-error, without clinical status', () => {
      const r = ok(parseAdt([MSH, 'PID|1||E1^^^RIVERSIDE^MR||Doe^Jo', ['DG1', '1', '', 'I10^Hypertension^I10', '', '20260301', 'F', ...Array<string>(14).fill(''), 'D'].join('|')].join('\r')));
      assert.equal(r.conditions[0]?.verificationStatus?.coding?.[0]?.code, 'entered-in-error');
      assert.equal(r.conditions[0]?.clinicalStatus, undefined);
    });

    it('reads CRLF, joins a continuation line to its segment, and treats "" as no value', () => {
      const text = [MSH, 'PID|1||E1^^^RIVERSIDE^MR||Doe^Jo||""|""', 'DG1|1||I10^Essential', ' hypertension^I10||20260301|F'].join('\r\n');
      const r = ok(parseAdt(text));
      assert.equal(r.patient.birthDate, undefined);
      assert.equal(r.patient.gender, undefined);
      assert.equal(r.conditions[0]?.code?.coding?.[0]?.display, 'Essential\n hypertension');
      assert.match(r.warnings.join(), /joined to the DG1 segment/);
    });

    it('uses MSH-7 zone for a diagnosis time without one, and keeps only the date when neither has a zone', () => {
      const r = ok(parseAdt([MSH, 'PID|1||E1^^^RIVERSIDE^MR||Doe^Jo', 'DG1|1||I10^Hypertension^I10||202603011430|F'].join('\r')));
      assert.equal(r.conditions[0]?.onsetDateTime, '2026-03-01T14:30:00-05:00');
      assert.deepEqual(hl7DateTime('202603011430', undefined), { dateTime: '2026-03-01', warning: "'202603011430' has a time but no time zone (nor has MSH-7); only the date is kept" });
      assert.deepEqual(hl7DateTime('20210817151943.4+0200', undefined), { dateTime: '2021-08-17T15:19:43.4+02:00' });
      assert.deepEqual(hl7DateTime('2026', undefined), { dateTime: '2026' });
      assert.equal(hl7DateTime('20260230', undefined).dateTime, undefined);
    });
  });

  describe('rejects and errors', () => {
    it('malformed-no-msh: AR, segment sequence error, an ACK built from nothing', () => {
      const text = read('malformed-no-msh.hl7');
      const result = parseAdt(text);
      assert.deepEqual(result, { kind: 'reject', reason: 'The message does not begin with an MSH segment', err: { segment: 'MSH', sequence: 1, code: 100 } });
      const [msh, msa, err] = segments(ackFor(text, result, { controlId: 'ACK1', now: new Date('2026-03-05T10:00:00Z'), application: 'MEDEX', facility: 'WELLNESSCTR' }));
      assert.deepEqual(msh, ['MSH', '^~\\&', 'MEDEX', 'WELLNESSCTR', '', '', '20260305100000+0000', '', 'ACK', 'ACK1', 'P', '2.5']);
      assert.deepEqual(msa, ['MSA', 'AR', '', 'The message does not begin with an MSH segment']);
      assert.deepEqual(err, ['ERR', '', 'MSH^1', '100^Segment sequence error^HL70357', 'E', '', '', '', 'The message does not begin with an MSH segment']);
    });

    it('malformed-bad-dg1-code: AE, required field missing at DG1^1^3', () => {
      const text = read('malformed-bad-dg1-code.hl7');
      const result = parseAdt(text);
      assert.deepEqual(result, { kind: 'error', reason: 'DG1 1 has no diagnosis code (DG1-3)', controlId: 'RVS000124', err: { segment: 'DG1', sequence: 1, field: 3, code: 101 } });
      const [, msa, err] = segments(ackFor(text, result));
      assert.deepEqual(msa, ['MSA', 'AE', 'RVS000124', 'DG1 1 has no diagnosis code (DG1-3)']);
      assert.deepEqual(err?.slice(0, 5), ['ERR', '', 'DG1^1^3', '101^Required field missing^HL70357', 'E']);
    });

    it('MDM^T02: AE, unsupported message type (200); ADT^A03: unsupported event (201)', () => {
      const mdm = parseAdt(read('public/mdm/MDM-T02-01.hl7'));
      assert.equal(mdm.kind, 'error');
      assert.deepEqual(mdm.kind === 'error' && [mdm.reason, mdm.err], ['unsupported message type MDM^T02: only ADT is accepted', { segment: 'MSH', sequence: 1, field: 9, code: 200 }]);
      const a03 = parseAdt(read('public/adt/ADT-A03-01.hl7'));
      assert.equal(a03.kind === 'error' && a03.err.code, 201);
    });

    it('rejects a batch of two messages in one frame, an empty MSH-10, and a PID without identifiers', () => {
      assert.match(JSON.stringify(parseAdt([MSH, 'PID|1||E1^^^R^MR', MSH].join('\r'))), /"kind":"reject".*batches are not accepted/);
      assert.deepEqual(parseAdt(MSH.replace('CTRL1', '')), { kind: 'reject', reason: 'MSH-10 (message control ID) is empty', err: { segment: 'MSH', sequence: 1, field: 10, code: 101 } });
      const noId = parseAdt([MSH, 'PID|1||||Doe^Jo'].join('\r'));
      assert.deepEqual(noId.kind === 'error' && noId.err, { segment: 'PID', sequence: 1, field: 3, code: 101 });
    });
  });

  describe('ack', () => {
    const original = read('adt-a04-knee-oa.hl7');

    it('swaps sender and receiver, answers ACK^<event>^ACK with a new control ID, same processing ID and version', () => {
      const [msh, msa, ...rest] = segments(ack(original, 'AA', undefined, undefined, { controlId: 'A1', now: new Date('2026-03-05T09:30:01Z') }));
      assert.deepEqual(msh, ['MSH', '^~\\&', 'MEDEX', 'WELLNESSCTR', 'EPICADT', 'RIVERSIDE', '20260305093001+0000', '', 'ACK^A04^ACK', 'A1', 'P', '2.5.1']);
      assert.deepEqual(msa, ['MSA', 'AA', 'RVS000123']);
      assert.deepEqual(rest, []);
    });

    it('generates distinct control IDs of at most 20 characters', () => {
      const ids = Array.from({ length: 500 }, () => segments(ack(original, 'AA'))[0]?.[9] ?? '');
      assert.equal(new Set(ids).size, 500);
      assert.ok(ids.every((id) => id.length > 0 && id.length <= 20 && id !== 'RVS000123'));
    });

    it('escapes delimiters in the text, and adds ERR-1 for versions before 2.5', () => {
      const v23 = read('adt-a08-stroke-update.hl7');
      const [, msa, err] = segments(ack(v23, 'AE', 'bad | value ^ here', { segment: 'PID', sequence: 1, field: 7, code: 102 }));
      assert.equal(msa?.[3], 'bad \\F\\ value \\S\\ here');
      assert.deepEqual(err?.slice(0, 5), ['ERR', 'PID^1^7^102&Data type error&HL70357', 'PID^1^7', '102^Data type error^HL70357', 'E']);
    });

    it('defaults to 207 application internal error when no detail is given', () => {
      const [, , err] = segments(ack(original, 'AR', 'storage unavailable'));
      assert.deepEqual(err?.slice(0, 5), ['ERR', '', '', '207^Application internal error^HL70357', 'E']);
    });

    it('readAck reads MSA back', () => {
      assert.deepEqual(readAck(ack(original, 'AE', 'nope', { code: 207 })), { code: 'AE', controlId: 'RVS000123', text: 'nope' });
      assert.equal(readAck('garbage'), undefined);
    });
  });
});
