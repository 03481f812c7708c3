import { isIP } from 'node:net';
import { expandIPv6 } from '../utils/client-ip.js';

/** One address range: its first and last address, as IPv4 (32-bit) or IPv6 (128-bit) numbers. */
export interface AddressRange {
  readonly family: 4 | 6;
  readonly first: bigint;
  readonly last: bigint;
}

/** `::ffff:0:0/96`: IPv4 addresses written as IPv6 (a client address is read without it). */
const MAPPED = 0xffffn << 32n;
const V4_LAST = (1n << 32n) - 1n;
const V6_LAST = (1n << 128n) - 1n;

/** The range of an address (`prefix` undefined) or a CIDR; the input must be valid. */
export function addressRange(address: string, prefix?: number): AddressRange {
  const family = isIP(address) === 4 ? 4 : 6;
  const bits = family === 4 ? 32 : 128;
  let value = 0n;
  if (family === 4) {
    for (const part of address.split('.')) value = (value << 8n) | BigInt(Number(part));
  } else {
    const zone = address.indexOf('%');
    for (const group of expandIPv6(zone >= 0 ? address.slice(0, zone) : address)) {
      value = (value << 16n) | BigInt(group);
    }
  }
  const free = BigInt(bits - (prefix ?? bits));
  const first = (value >> free) << free;
  return { family, first, last: first + (1n << free) - 1n };
}

/**
 * The address family whose every address the ranges cover together (4 or 6), or
 * `undefined`. An IPv4 range also covers its IPv4-mapped IPv6 form and the other way round,
 * as `BlockList` matches them.
 */
export function familyCoveredBy(ranges: readonly AddressRange[]): 4 | 6 | undefined {
  const v4: [bigint, bigint][] = [];
  const v6: [bigint, bigint][] = [];
  for (const { family, first, last } of ranges) {
    if (family === 4) {
      v4.push([first, last]);
      v6.push([MAPPED + first, MAPPED + last]);
    } else {
      v6.push([first, last]);
      const low = first > MAPPED ? first : MAPPED;
      const high = last < MAPPED + V4_LAST ? last : MAPPED + V4_LAST;
      if (low <= high) v4.push([low - MAPPED, high - MAPPED]);
    }
  }
  if (covers(v4, V4_LAST)) return 4;
  if (covers(v6, V6_LAST)) return 6;
  return undefined;
}

/** Whether the union of the intervals is the whole of `[0, end]`. */
function covers(intervals: [bigint, bigint][], end: bigint): boolean {
  intervals.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  let next = 0n;
  for (const [first, last] of intervals) {
    if (first > next) return false;
    if (last + 1n > next) next = last + 1n;
    if (next > end) return true;
  }
  return false;
}
