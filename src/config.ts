/**
 * Configuration: every environment variable declared once here with its check and default,
 * parsed once at start, every problem listed, then frozen. main.ts is the only caller.
 * The public ones are in ../shared/INTERFACE.md; all are documented in the README.
 */
import { ehrTokensOf } from './ehr/secrets.js';
import { parseAllowedHost } from './ehr/egress.js';

export interface Config {
  port: number;
  host: string;
  baseUrl: string;
  databaseUrl?: string;
  dataDir: string;
  hl7Port: number;
  production: boolean;
  /** False only for measuring what the audit log costs (AUDIT=off), never in production. */
  audit: boolean;
  /** Whether this process delivers queued documents to EHRs (DELIVERY=off: another process does). */
  delivery: boolean;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  maxBodyBytes: number;
  /** Longest request target (path and query) accepted; longer is 400 query-too-long. */
  maxQueryBytes: number;
  /** Requests per minute per client on /fhir and /met/v1 (0: no limit), and the burst allowed. */
  rateLimitPerMinute: number;
  rateLimitBurst: number;
  /** Token requests per minute per source address at /auth/token (0: no limit). */
  tokenRateLimitPerMinute: number;
  dbPoolSize: number;
  shutdownTimeoutMs: number;
  /**
   * How long a delivery attempt may run before another worker (or this one, restarted) takes the
   * job up again as ambiguous: longer than any EHR round trip.
   */
  deliveryLeaseSeconds: number;
  /**
   * Static bearer tokens for EHRs: every EHR_TOKEN_<NAME> variable, by name, with its value as set:
   * `<tenant>:<token>`, the one tenant whose Endpoints may use the token. An Endpoint names one
   * (tokenRef `env:EHR_TOKEN_<NAME>`) and never holds the token (src/ehr/secrets.ts). Absent: none.
   */
  ehrTokens?: Readonly<Record<string, string>>;
  /**
   * EHR_ALLOWED_HOSTS: host names, IP addresses and CIDR ranges the server may connect to for EHRs
   * though they are not public (an EHR on the practice's own network). In production every other
   * non-public address is refused (src/ehr/egress.ts); outside production none is.
   */
  ehrAllowedHosts: readonly string[];
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

export function loadConfig(env: Record<string, string | undefined>): Readonly<Config> {
  const problems: string[] = [];
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problems.push(`${name}=${raw} is invalid: expected a whole number from ${min} to ${max}`);
      return fallback;
    }
    return value;
  };
  const port = int('PORT', 8080, 0, 65535);
  const host = env.HOST || '127.0.0.1';
  const baseUrl = (env.BASE_URL || `http://localhost:${port}`).replace(/\/+$/, '');
  if (!/^https?:\/\/[^/\s]+(\/\S*)?$/.test(baseUrl)) problems.push(`BASE_URL=${baseUrl} is invalid: expected an http(s) URL such as https://fhir.example.org`);
  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push('DATABASE_URL is invalid: expected postgres://user@host:port/database');
  }
  const logLevel = (env.LOG_LEVEL || 'info') as Config['logLevel'];
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL=${logLevel} is invalid: expected one of ${LOG_LEVELS.join(', ')}`);
  const nodeEnv = env.NODE_ENV;
  if (nodeEnv !== undefined && nodeEnv !== '' && !['production', 'development', 'test'].includes(nodeEnv)) {
    problems.push(`NODE_ENV=${nodeEnv} is invalid: expected production, development or test`);
  }
  const audit = env.AUDIT || 'on';
  if (audit !== 'on' && audit !== 'off') problems.push(`AUDIT=${audit} is invalid: expected on or off`);
  else if (audit === 'off' && nodeEnv === 'production') problems.push('AUDIT=off is refused with NODE_ENV=production: every access is audited');
  const delivery = env.DELIVERY || 'on';
  if (delivery !== 'on' && delivery !== 'off') problems.push(`DELIVERY=${delivery} is invalid: expected on or off`);
  const ehr = ehrTokensOf(env);
  problems.push(...ehr.problems);
  const ehrAllowedHosts = (env.EHR_ALLOWED_HOSTS ?? '').split(',').map((h) => h.trim()).filter((h) => h !== '');
  for (const entry of ehrAllowedHosts) {
    const parsed = parseAllowedHost(entry);
    if ('problem' in parsed) problems.push(`EHR_ALLOWED_HOSTS is invalid: ${parsed.problem}`);
  }
  const config: Config = {
    port,
    host,
    baseUrl,
    ...(databaseUrl ? { databaseUrl } : {}),
    dataDir: env.DATA_DIR || './data',
    hl7Port: int('HL7_PORT', 2575, 0, 65535),
    production: nodeEnv === 'production',
    audit: audit !== 'off',
    delivery: delivery !== 'off',
    logLevel,
    maxBodyBytes: int('MAX_BODY_BYTES', 10 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    // Node itself refuses request heads over 16 KiB (431); a search longer than this goes as POST _search.
    maxQueryBytes: int('MAX_QUERY_BYTES', 8192, 256, 16_000),
    rateLimitPerMinute: int('RATE_LIMIT_PER_MINUTE', 6000, 0, 10_000_000),
    rateLimitBurst: int('RATE_LIMIT_BURST', 1000, 1, 10_000_000),
    tokenRateLimitPerMinute: int('TOKEN_RATE_LIMIT_PER_MINUTE', 120, 0, 1_000_000),
    dbPoolSize: int('DB_POOL_SIZE', 20, 1, 500),
    shutdownTimeoutMs: int('SHUTDOWN_TIMEOUT_MS', 10_000, 0, 600_000),
    deliveryLeaseSeconds: int('DELIVERY_LEASE_SECONDS', 300, 1, 86_400),
    ...(Object.keys(ehr.tokens).length > 0 ? { ehrTokens: Object.freeze(ehr.tokens) } : {}),
    ehrAllowedHosts: Object.freeze(ehrAllowedHosts),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}
