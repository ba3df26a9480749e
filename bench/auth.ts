/**
 * The bench is a SMART Backend Services client like any other: a client registered with the
 * admin command (`node dist/admin.js`, as `npm run admin` runs it) before the server starts, and
 * an access token from /auth/token (client_secret_post), fetched again every two minutes (tokens
 * last five) so that long phases (the million-Observation load) never send an expired one.
 */
import { spawnSync } from 'node:child_process';

const current = { token: '' };
let timer: NodeJS.Timeout | undefined;

export interface BenchClient {
  client_id: string;
  client_secret: string;
}

/** Runs the admin command (`node dist/admin.js …`) on the database `dbEnv` names; returns its output. */
export function runAdmin(root: string, dbEnv: Record<string, string>, args: string[]): string {
  const env = { ...process.env, NODE_ENV: 'production', LOG_LEVEL: 'warn', ...dbEnv };
  const run = spawnSync(process.execPath, ['dist/admin.js', ...args], { cwd: root, env, encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`admin ${args.join(' ')}: ${run.stderr.trim()}`);
  return run.stdout;
}

/** Registers tenant `bench` and a system/*.* client in the database `dbEnv` names. */
export function registerBenchClient(root: string, dbEnv: Record<string, string>): BenchClient {
  runAdmin(root, dbEnv, ['tenant', 'create', 'bench']);
  return JSON.parse(runAdmin(root, dbEnv, ['client', 'create', '--tenant', 'bench', '--name', 'bench', '--scopes', 'system/*.*'])) as BenchClient;
}

/** Routes a sending facility's HL7 v2 messages to a tenant (admin command). */
export function routeHl7(root: string, dbEnv: Record<string, string>, facility: string, tenant: string): void {
  runAdmin(root, dbEnv, ['hl7', 'route', '--facility', facility, '--tenant', tenant]);
}

/** An access token (client_secret_post) from the server at `baseUrl`. */
export async function requestToken(baseUrl: string, client: BenchClient): Promise<string> {
  const response = await fetch(`${baseUrl}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/*.*', client_id: client.client_id, client_secret: client.client_secret }).toString(),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`/auth/token answered ${response.status}: ${text.slice(0, 300)}`);
  return (JSON.parse(text) as { access_token: string }).access_token;
}

async function fetchToken(baseUrl: string, client: BenchClient): Promise<void> {
  current.token = await requestToken(baseUrl, client);
}

/** Gets a token from the server at `baseUrl` and keeps it fresh until stopAuth(). */
export async function startAuth(baseUrl: string, client: BenchClient): Promise<void> {
  stopAuth();
  await fetchToken(baseUrl, client);
  timer = setInterval(() => void fetchToken(baseUrl, client).catch((error: unknown) => process.stderr.write(`[bench] token refresh failed: ${String(error)}\n`)), 120_000);
  timer.unref();
}

export function stopAuth(): void {
  if (timer) clearInterval(timer);
  timer = undefined;
}

/** The Authorization header value with the current token. */
export function authorization(): string {
  return `Bearer ${current.token}`;
}
