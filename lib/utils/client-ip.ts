import { isIP } from 'node:net';

/** A valid IP address without zone id or IPv4 mapping (`::ffff:1.2.3.4` is `1.2.3.4`), or `undefined`. */
export function plainAddress(address: string | undefined): string | undefined {
  if (address === undefined) return undefined;
  const zone = address.indexOf('%');
  const text = zone >= 0 ? address.slice(0, zone) : address;
  const family = isIP(text);
  if (family === 0) return undefined;
  if (family === 6) return mappedIPv4(expandIPv6(text)) ?? text;
  return text;
}

/** The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, in any notation) stands for. */
function mappedIPv4(groups: number[]): string | undefined {
  for (let i = 0; i < 5; i++) if (groups[i] !== 0) return undefined;
  if (groups[5] !== 0xffff) return undefined;
  return `${groups[6]! >> 8}.${groups[6]! & 0xff}.${groups[7]! >> 8}.${groups[7]! & 0xff}`;
}

/** Default IPv6 grouping: one /64 is one client (a single host is usually given a /64). */
export const DEFAULT_IPV6_PREFIX = 64;

/**
 * The key of a client address: IPv4 as dotted quad (IPv4-mapped IPv6 forms included),
 * IPv6 as its first `ipv6Prefix` bits in the canonical `x:x:x:x::/64` form, so that the
 * many addresses of one IPv6 host share one budget. `undefined` for anything that is not
 * an IP address.
 */
export function clientAddressKey(address: string | undefined, ipv6Prefix = DEFAULT_IPV6_PREFIX): string | undefined {
  if (address === undefined) return undefined;
  const family = isIP(address);
  if (family === 4) return address;
  if (family !== 6) return undefined;
  // A zone id (fe80::1%eth0) names the interface, not the host.
  const zone = address.indexOf('%');
  const text = zone >= 0 ? address.slice(0, zone) : address;
  const groups = expandIPv6(text);
  // IPv4-mapped (::ffff:a.b.c.d, in either notation) is the IPv4 client itself.
  const mapped = mappedIPv4(groups);
  if (mapped !== undefined) return mapped;
  let bits = ipv6Prefix;
  for (let i = 0; i < 8; i++) {
    if (bits >= 16) bits -= 16;
    else {
      groups[i] = bits === 0 ? 0 : groups[i]! & (0xffff << (16 - bits));
      bits = 0;
    }
  }
  return `${compressIPv6(groups)}/${ipv6Prefix}`;
}

/** The 8 groups of a valid IPv6 address (embedded IPv4 tails included). */
export function expandIPv6(address: string): number[] {
  let text = address.toLowerCase();
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const maybeV4 = text.slice(lastColon + 1);
  if (maybeV4.includes('.')) {
    const [a, b, c, d] = maybeV4.split('.').map(Number) as [number, number, number, number];
    tail.push((a << 8) | b, (c << 8) | d);
    text = text.slice(0, lastColon + 1) + '0';
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((group) => parseInt(group, 16)));
  const left = parse(head);
  let right = rest === undefined ? [] : parse(rest);
  if (tail.length) {
    // The "0" placeholder stood for the two IPv4 groups.
    if (rest === undefined) left.pop();
    else right = right.slice(0, -1);
  }
  const fill = 8 - left.length - right.length - tail.length;
  return [...left, ...new Array<number>(Math.max(0, fill)).fill(0), ...right, ...tail];
}

/** RFC 5952 text of 8 groups: the longest run of two or more zero groups becomes `::`. */
function compressIPv6(groups: number[]): string {
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}
