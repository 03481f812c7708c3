import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { ResolvedTrustProxy } from '../config/resolve-options.js';
import { plainAddress } from './client-ip.js';

/** Most forwarding entries walked; beyond it the chain is not believed any further. */
const MAX_HOPS = 64;

/**
 * The client's address for an upgrade request: the socket's peer unless that peer is a
 * trusted proxy, in which case the forwarding chain of `header` (`X-Forwarded-For` or
 * `Forwarded`, never one in place of the other) is walked from the right, skipping trusted hops, to the right-most untrusted entry
 * (Express's `trust proxy` semantics). An entry that is not an IP address stops the walk at
 * the nearest trusted hop. Headers are split, never matched with regular expressions.
 * Returns the address (without port, zone or IPv4 mapping), or `undefined` when the peer
 * address is unknown (the socket is already gone).
 */
export function resolveClientAddress(
  request: IncomingMessage,
  trust: ResolvedTrustProxy,
  header: 'x-forwarded-for' | 'forwarded' = 'x-forwarded-for',
): string | undefined {
  const peer = plainAddress(request.socket.remoteAddress);
  if (peer === undefined) return undefined;
  if (trust.kind === 'none') return peer;
  const chain = header === 'forwarded' ? forwardedChain(request) : xForwardedForChain(request);
  let address = peer;
  for (let hop = 0; hop < chain.length && hop < MAX_HOPS; hop++) {
    if (!isTrusted(address, hop, trust)) break;
    const next = plainAddress(stripPort(chain[chain.length - 1 - hop]!));
    if (next === undefined) break;
    address = next;
  }
  return address;
}

/**
 * Whether a TCP peer is a proxy whose forwarding header is believed: on the list, or any peer
 * with a hop count.
 */
export function isTrustedProxy(peerAddress: string | undefined, trust: ResolvedTrustProxy): boolean {
  const peer = plainAddress(peerAddress);
  return peer !== undefined && isTrusted(peer, 0, trust);
}

function isTrusted(address: string, hop: number, trust: ResolvedTrustProxy): boolean {
  if (trust.kind === 'hops') return hop < trust.hops;
  if (trust.kind === 'none') return false;
  return trust.list.check(address, isIP(address) === 4 ? 'ipv4' : 'ipv6');
}

/** The `X-Forwarded-For` addresses, left (client) to right (nearest proxy). */
function xForwardedForChain(request: IncomingMessage): string[] {
  const xff = request.headers['x-forwarded-for'];
  if (xff === undefined) return [];
  // Node joins repeated X-Forwarded-For headers with ", ".
  return (Array.isArray(xff) ? xff.join(',') : xff).split(',').map((entry) => entry.trim());
}

/** The `for=` addresses of `Forwarded` (RFC 7239), left (client) to right (nearest proxy). */
function forwardedChain(request: IncomingMessage): string[] {
  const forwarded = request.headers.forwarded;
  if (forwarded === undefined) return [];
  const chain: string[] = [];
  for (const element of forwarded.split(',')) {
    let found = '';
    for (const pair of element.split(';')) {
      const eq = pair.indexOf('=');
      if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== 'for') continue;
      found = pair.slice(eq + 1).trim();
      if (found.startsWith('"') && found.endsWith('"') && found.length >= 2) found = found.slice(1, -1);
    }
    chain.push(found);
  }
  return chain;
}

/** `1.2.3.4:5678` and `[2001:db8::1]:443` without their ports; anything else unchanged. */
function stripPort(entry: string): string {
  if (entry.startsWith('[')) {
    const end = entry.indexOf(']');
    return end < 0 ? entry : entry.slice(1, end);
  }
  const colon = entry.indexOf(':');
  if (colon >= 0 && colon === entry.lastIndexOf(':') && entry.includes('.')) return entry.slice(0, colon);
  return entry;
}
