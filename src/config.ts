/**
 * Configuration: every environment variable declared once here with its check and default,
 * parsed once at start, every problem listed, then frozen. main.ts is the only caller.
 * The public ones are in ../shared/INTERFACE.md; all are documented in the README.
 */
export interface Config {
  port: number;
  host: string;
  baseUrl: string;
  databaseUrl?: string;
  dataDir: string;
  hl7Port: number;
  production: boolean;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  maxBodyBytes: number;
  dbPoolSize: number;
  shutdownTimeoutMs: number;
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
  const config: Config = {
    port,
    host,
    baseUrl,
    ...(databaseUrl ? { databaseUrl } : {}),
    dataDir: env.DATA_DIR || './data',
    hl7Port: int('HL7_PORT', 2575, 0, 65535),
    production: nodeEnv === 'production',
    logLevel,
    maxBodyBytes: int('MAX_BODY_BYTES', 10 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    dbPoolSize: int('DB_POOL_SIZE', 20, 1, 500),
    shutdownTimeoutMs: int('SHUTDOWN_TIMEOUT_MS', 10_000, 0, 600_000),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}
