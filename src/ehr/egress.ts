/**
 * Where this server may connect on a tenant's behalf. An Endpoint's address is written by a user of
 * a practice, and the server connects to it (FHIR calls, token requests, MLLP): unchecked, that is
 * a way into the server's own network (its database, a cloud metadata service, an admin port on
 * loopback). In production (`restricted`) an EHR must be at a public unicast address, unless the
 * operator lists its host or range in EHR_ALLOWED_HOSTS (an EHR on the practice's own network).
 *
 * The check is made on the address actually connected to: host names are resolved by `lookup`
 * below, which the HTTP dispatcher (undici) and MLLP sockets use for their connections, so a name
 * that resolves to a public address when checked and to a private one when connected (DNS
 * rebinding) is refused too. IP literals are never looked up, and are checked by `refusal` first.
 * Outside production nothing is restricted (EHRs and test peers on loopback).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent } from 'undici';

/** The one range that is reachable without being listed: everything else is refused. */
const PUBLIC = 'unicast';

export class EgressRefused extends Error {
  override readonly name = 'EgressRefused';
  readonly code = 'EHR_ADDRESS_REFUSED';
}

type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** One EHR_ALLOWED_HOSTS entry: a host name, an IP address or a CIDR range; else why not. */
export function parseAllowedHost(entry: string): { host: string } | { range: Cidr } | { problem: string } {
  const value = entry.trim().toLowerCase();
  if (value === '') return { problem: 'an empty entry' };
  if (value.includes('/')) {
    try {
      const [address, bits] = ipaddr.parseCIDR(value);
      const ip = normal(address);
      // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
      return { range: [ip, ip.kind() !== address.kind() ? bits - 96 : bits] };
    } catch {
      return { problem: `${JSON.stringify(entry)} is not a CIDR range (such as 10.20.0.0/16)` };
    }
  }
  if (isIP(value) !== 0) {
    const ip = normal(ipaddr.parse(value));
    return { range: [ip, ip.kind() === 'ipv4' ? 32 : 128] };
  }
  if (/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(value)) return { host: value };
  return { problem: `${JSON.stringify(entry)} is not a host name, an IP address or a CIDR range` };
}

/** IPv4-mapped IPv6 addresses (::ffff:10.0.0.1) are their IPv4 address. */
function normal(address: ipaddr.IPv4 | ipaddr.IPv6): ipaddr.IPv4 | ipaddr.IPv6 {
  return address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() ? (address as ipaddr.IPv6).toIPv4Address() : address;
}

export class EgressGuard {
  private readonly hosts = new Set<string>();
  private readonly ranges: Cidr[] = [];
  private agent: Agent | undefined;

  /**
   * @param restricted refuse every address that is not public unicast, unless allowed
   * @param allowed host names, IP addresses and CIDR ranges that may be reached all the same
   *   (entries that do not parse are refused here: config.ts reports them at start)
   */
  constructor(
    readonly restricted: boolean,
    allowed: readonly string[] = [],
  ) {
    for (const entry of allowed) {
      const parsed = parseAllowedHost(entry);
      if ('problem' in parsed) throw new Error(`EHR_ALLOWED_HOSTS: ${parsed.problem}`);
      if ('host' in parsed) this.hosts.add(parsed.host);
      else this.ranges.push(parsed.range);
    }
  }

  /**
   * Why `address` (an IP address `host` resolved to, or `host` itself when it is one) may not be
   * connected to; undefined when it may.
   */
  refusal(host: string, address: string): string | undefined {
    if (!this.restricted) return undefined;
    const name = host.replace(/^\[|\]$/g, '').toLowerCase();
    if (this.hosts.has(name)) return undefined;
    let ip: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      ip = normal(ipaddr.parse(address));
    } catch {
      return `${address} is not an IP address`;
    }
    if (this.ranges.some(([range, bits]) => range.kind() === ip.kind() && ip.match(range, bits))) return undefined;
    const range = ip.range();
    if (range === PUBLIC) return undefined;
    const shown = name === address ? address : `${name} (${address})`;
    return `${shown} is a ${range} address, which this server does not connect to in production; if the EHR is on the practice's own network, list its host or range in EHR_ALLOWED_HOSTS`;
  }

  /** The refusal of a URL's or MLLP address's host when it is an IP literal (never looked up). */
  literalRefusal(host: string): string | undefined {
    const bare = host.replace(/^\[|\]$/g, '');
    return isIP(bare) !== 0 ? this.refusal(host, bare) : undefined;
  }

  /** net's `lookup` option: resolves as dns.lookup does, and fails for a refused address. */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (error, addresses: LookupAddress[]) => {
      if (error) return callback(error, '', 0);
      const refused = addresses.map((a) => this.refusal(hostname, a.address)).find((r) => r !== undefined);
      if (refused) return callback(new EgressRefused(refused), '', 0);
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
      callback(null, first.address, first.family);
    });
  };

  /** The HTTP dispatcher for fetch: every connection it opens resolves through `lookup`. */
  dispatcher(): Agent | undefined {
    if (!this.restricted) return undefined;
    this.agent ??= new Agent({ connect: { lookup: this.lookup } });
    return this.agent;
  }
}

/** Nothing restricted (outside production). */
export const OPEN_EGRESS = new EgressGuard(false);
/** Public addresses only, nothing listed. */
const PUBLIC_ONLY = new EgressGuard(true);

/**
 * The guard of a connection that names none: open outside production, public addresses only in
 * it. The server always names its own (src/server.ts); this keeps a path that forgets closed.
 */
export function defaultEgress(): EgressGuard {
  return process.env.NODE_ENV === 'production' ? PUBLIC_ONLY : OPEN_EGRESS;
}
