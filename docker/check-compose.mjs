#!/usr/bin/env node
// Validates docker/compose.yaml offline, without a Docker engine:
//   1. structure: against the official Compose Specification JSON schema (draft-07), vendored as
//      docker/compose-spec.schema.json. That file is byte-for-byte the one shipped in the npm
//      package dclint@3.1.0 (schemas/compose.schema.json), which that project downloads verbatim
//      from the compose-spec/compose-spec repository (schema/compose-spec.json, Apache-2.0).
//      Its sha256 is pinned below so an accidental edit is caught; to update it, replace the file
//      with a newer copy from an npm package and update SCHEMA_SHA256.
//   2. what the schema cannot see: named volumes declared, depends_on targets exist and have a
//      healthcheck when service_healthy is required, the database healthcheck and its volume.
// Usage: node docker/check-compose.mjs [compose.yaml]
// Prints one line per check ("PASS|FAIL  what: detail"); exits 1 when any check fails.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SCHEMA_SHA256 = '46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496';
const here = dirname(fileURLToPath(import.meta.url));
const composePath = process.argv[2] ?? join(here, 'compose.yaml');
const schemaPath = join(here, 'compose-spec.schema.json');

let failed = false;
const pass = (what, detail) => console.log(`PASS  ${what}: ${detail}`);
const fail = (what, detail) => {
  failed = true;
  console.log(`FAIL  ${what}: ${detail}`);
};

async function load(name) {
  try {
    return (await import(name)).default;
  } catch {
    fail('compose file', `npm package "${name}" is not installed (run npm ci in the repository root)`);
    process.exit(1);
  }
}

const Ajv = await load('ajv');
const yaml = await load('js-yaml');

let doc;
try {
  doc = yaml.load(readFileSync(composePath, 'utf8'), { filename: composePath });
} catch (err) {
  fail('compose YAML', `${composePath} does not parse: ${err.message.split('\n')[0]}`);
  process.exit(1);
}

// 1. Compose Specification schema.
const schemaText = readFileSync(schemaPath);
const sha = createHash('sha256').update(schemaText).digest('hex');
if (sha !== SCHEMA_SHA256) {
  fail('compose schema', `${schemaPath} has sha256 ${sha}, expected ${SCHEMA_SHA256} (file changed?)`);
} else {
  // The file names its meta-schema as https://json-schema.org/draft-07/schema; Ajv knows draft-07
  // under its canonical id, so point it there (same meta-schema).
  const { $schema: _ignored, ...schema } = JSON.parse(schemaText.toString('utf8'));
  const ajv = new Ajv({ strict: false, allErrors: true });
  const validate = ajv.compile({ $schema: 'http://json-schema.org/draft-07/schema#', ...schema });
  if (validate(doc)) {
    pass('compose schema', `${composePath} is valid against the Compose Specification schema (sha256 ${sha.slice(0, 12)}…)`);
  } else {
    const errors = validate.errors.map((e) => `${e.instancePath || '/'} ${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ''}`);
    fail('compose schema', [...new Set(errors)].join('; '));
  }
}

// 2. Cross-references and required content the schema cannot express.
const problems = [];
const services = doc?.services ?? {};
const declaredVolumes = Object.keys(doc?.volumes ?? {});
const isNamed = (source) => typeof source === 'string' && source !== '' && !/^[./~]/.test(source) && !source.includes('$');
for (const [name, svc] of Object.entries(services)) {
  for (const v of svc?.volumes ?? []) {
    const source = typeof v === 'string' ? (v.includes(':') ? v.split(':')[0] : undefined) : v?.type === 'volume' ? v.source : undefined;
    if (isNamed(source) && !declaredVolumes.includes(source)) problems.push(`service ${name} mounts volume "${source}" that is not declared under top-level volumes`);
  }
  const deps = Array.isArray(svc?.depends_on) ? Object.fromEntries(svc.depends_on.map((d) => [d, {}])) : (svc?.depends_on ?? {});
  for (const [dep, opts] of Object.entries(deps)) {
    if (!(dep in services)) problems.push(`service ${name} depends on unknown service "${dep}"`);
    else if (opts?.condition === 'service_healthy' && !services[dep]?.healthcheck) problems.push(`service ${name} waits for ${dep} to be healthy but ${dep} has no healthcheck`);
  }
}
const db = services.db;
const test = db?.healthcheck?.test;
const testText = Array.isArray(test) ? test.join(' ') : String(test ?? '');
if (!/\bpg_isready\b/.test(testText) || !/-U\s+met\b/.test(testText) || !/-d\s+met\b/.test(testText)) problems.push('service db has no healthcheck running "pg_isready -U met -d met"');
if (services.fhir?.depends_on?.db?.condition !== 'service_healthy') problems.push('service fhir does not wait for db with condition service_healthy');
if (!declaredVolumes.includes('pgdata')) problems.push('top-level volume "pgdata" is not declared');
const mountsPgdata = (db?.volumes ?? []).some((v) =>
  typeof v === 'string' ? /^pgdata:\/var\/lib\/postgresql\/data(:|$)/.test(v) : v?.source === 'pgdata' && v?.target === '/var/lib/postgresql/data');
if (!mountsPgdata) problems.push('service db does not mount volume pgdata at /var/lib/postgresql/data');
if (problems.length === 0) pass('compose content', 'db healthcheck (pg_isready -U met -d met), fhir waits for db healthy, named volume pgdata declared and mounted, all references resolve');
else fail('compose content', problems.join('; '));

process.exit(failed ? 1 : 0);
