/**
 * What the bench measures about processes, from /proc (Linux): a process's peak RSS, sampled every
 * 250 ms, and CPU time at the start and end of a window, split between the server, this process
 * (the load generator), the PostgreSQL processes of the bench's databases, a peer process (the EHR
 * of the delivery phase) and anything else on the machine.
 */
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';

export const RSS_SAMPLE_MS = 250;
/** USER_HZ: the unit of utime/stime in /proc/<pid>/stat; 100 on every mainstream Linux build. */
const CLOCK_TICKS_PER_S = 100;

export interface CpuFigures {
  /** CPU time of the server process, in % of one core. */
  serverPct: number;
  /** CPU time of this (load generator) process, in % of one core. */
  loadGeneratorPct: number;
  /** Whole machine busy time, in % of all cores. */
  machinePct: number;
  /** CPU time of the PostgreSQL server's processes serving the bench databases (0 for PGlite), in % of one core. */
  postgresPct: number;
  /** CPU time of a peer process the scenario drives through the server (the EHR of the delivery phase), in % of one core. */
  peerPct?: number;
  /** Machine busy time not spent in any of those (other workloads on the machine), in % of one core. */
  otherPct: number;
}

export function readRssKiB(pid: number): number | undefined {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match?.[1] ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** utime + stime of a process, in seconds. */
export function processCpuS(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S;
}

/** Machine-wide busy and total CPU time (all cores), in clock ticks. */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const values = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = values.reduce((sum, value) => sum + value, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * utime + stime, in seconds, of every PostgreSQL process that works for the bench databases: their
 * backends (whose title names the database) and the server's own auxiliary processes. Other
 * databases' backends on the same server are left out: they count as "other".
 */
function postgresCpuS(databases: string[]): Map<number, number> {
  const times = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (!stat.includes(' (postgres) ')) continue;
      const title = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (!databases.some((database) => title.includes(` ${database} `)) && !POSTGRES_AUXILIARY.test(title)) continue;
      times.set(Number(entry), processCpuS(Number(entry)));
    } catch {
      // the process ended meanwhile
    }
  }
  return times;
}

const POSTGRES_AUXILIARY = /bin\/postgres |: (checkpointer|background writer|walwriter|autovacuum launcher|autovacuum worker|logical replication launcher|stats collector|archiver)/;

export interface Window {
  /** `seconds`: the window's wall-clock length. */
  end(): { peakRssMiB: number; rssSamples: number; cpu: CpuFigures; seconds: number };
}

/**
 * Starts measuring server `pid`; `postgresDatabases`: the bench's databases on PostgreSQL (none for
 * PGlite); `peerPid`: a second server process whose CPU time is reported apart (peerPct).
 */
export function openWindow(pid: number, postgresDatabases: string | string[] = [], peerPid?: number): Window {
  const databases = typeof postgresDatabases === 'string' ? [postgresDatabases] : postgresDatabases;
  let peakKiB = 0;
  let samples = 0;
  const sample = (): void => {
    const kib = readRssKiB(pid);
    if (kib === undefined) return;
    samples += 1;
    if (kib > peakKiB) peakKiB = kib;
  };
  sample();
  const timer = setInterval(sample, RSS_SAMPLE_MS);
  const wallStart = process.hrtime.bigint();
  const serverStart = processCpuS(pid);
  const selfStart = process.cpuUsage();
  const machineStart = machineCpu();
  const postgresStart = databases.length > 0 ? postgresCpuS(databases) : new Map<number, number>();
  const peerStart = peerPid === undefined ? 0 : processCpuS(peerPid);
  return {
    end() {
      clearInterval(timer);
      sample();
      const wallS = Number(process.hrtime.bigint() - wallStart) / 1e9;
      const serverS = processCpuS(pid) - serverStart;
      const self = process.cpuUsage(selfStart);
      const selfS = (self.user + self.system) / 1e6;
      const machineEnd = machineCpu();
      let postgresS = 0;
      if (databases.length > 0) {
        for (const [processId, seconds] of postgresCpuS(databases)) postgresS += seconds - (postgresStart.get(processId) ?? 0);
      }
      const peerPct = peerPid === undefined ? undefined : (100 * (processCpuS(peerPid) - peerStart)) / wallS;
      const postgresPct = (100 * postgresS) / wallS;
      const busy = machineEnd.busy - machineStart.busy;
      const total = machineEnd.total - machineStart.total;
      const machinePct = total > 0 ? (100 * busy) / total : 0;
      const cores = os.cpus().length;
      const serverPct = (100 * serverS) / wallS;
      const loadGeneratorPct = (100 * selfS) / wallS;
      return {
        seconds: wallS,
        peakRssMiB: round(peakKiB / 1024, 1),
        rssSamples: samples,
        cpu: {
          serverPct: round(serverPct, 0),
          loadGeneratorPct: round(loadGeneratorPct, 0),
          machinePct: round(machinePct, 0),
          postgresPct: round(postgresPct, 0),
          ...(peerPct === undefined ? {} : { peerPct: round(peerPct, 0) }),
          otherPct: round(Math.max(0, machinePct * cores - serverPct - loadGeneratorPct - postgresPct - (peerPct ?? 0)), 0),
        },
      };
    },
  };
}

/** The median (the mean of the two middle values of an even count). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? 0;
}

export function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}
