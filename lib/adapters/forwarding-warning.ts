import { Logger } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { ResolvedTrustProxy, ResolvedWsRateLimitOptions } from '../config/resolved-options.js';
import { isTrustedProxy } from '../utils/client-address.js';

/**
 * Warns once (per adapter, so once per application) when an upgrade carries the forwarding
 * header the module reads (`forwardedHeader`) from a peer that is not a trusted proxy: the
 * header is ignored, and behind a reverse proxy every client would spend the proxy's
 * budget. Also once when a trusted proxy sends the other forwarding header and not this one:
 * its address is taken for the client's, and every client behind it shares one budget. On
 * the upgrade path: before the warnings, two header lookups (and, with a list of proxies, an
 * address check when one is there); after both, one boolean test. With a hop count every
 * peer is trusted, so only the second is said.
 */
export class ForwardingWarning {
  private done = false;
  /** The warning about an untrusted peer was said (or cannot be: every peer is trusted). */
  private untrustedSaid: boolean;
  /** The warning about a trusted proxy sending the other header was said (or cannot be: no proxy is trusted). */
  private otherSaid: boolean;
  private readonly trust: ResolvedTrustProxy;
  private readonly header: 'x-forwarded-for' | 'forwarded';
  private readonly other: 'x-forwarded-for' | 'forwarded';

  constructor(
    options: Pick<ResolvedWsRateLimitOptions, 'trustProxy' | 'forwardedHeader'>,
    private readonly warn: (message: string) => void = (message) => new Logger('WsRateLimit').warn(message),
  ) {
    this.trust = options.trustProxy;
    this.header = options.forwardedHeader;
    this.other = this.header === 'forwarded' ? 'x-forwarded-for' : 'forwarded';
    this.untrustedSaid = this.trust.kind === 'hops';
    this.otherSaid = this.trust.kind === 'none';
  }

  /** Looks at one upgrade request. */
  check(request: IncomingMessage): void {
    if (this.done) return;
    const { headers } = request;
    if (headers[this.header] !== undefined) {
      if (this.untrustedSaid) return;
      const peer = request.socket.remoteAddress;
      if (this.trust.kind === 'list' && isTrustedProxy(peer, this.trust)) return;
      this.untrustedSaid = true;
      this.warn(forwardingMessage(peer, this.trust, this.header));
    } else if (!this.otherSaid && headers[this.other] !== undefined) {
      const peer = request.socket.remoteAddress;
      if (this.trust.kind === 'list' && !isTrustedProxy(peer, this.trust)) return;
      this.otherSaid = true;
      this.warn(otherHeaderMessage(peer, this.header));
    }
    this.done = this.untrustedSaid && this.otherSaid;
  }
}

const HEADER_NAMES = { 'x-forwarded-for': 'X-Forwarded-For', forwarded: 'Forwarded' } as const;

function otherHeaderMessage(peer: string | undefined, header: 'x-forwarded-for' | 'forwarded'): string {
  const other = header === 'forwarded' ? 'x-forwarded-for' : 'forwarded';
  return (
    `An upgrade from the trusted proxy ${peer ?? '(unknown peer)'} carries ${HEADER_NAMES[other]} but not ` +
    `${HEADER_NAMES[header]}, the header read (WS_RATE_LIMIT_FORWARDED_HEADER=${header}), so the proxy's address is ` +
    `taken for the client's: every client behind it shares one budget. Set WS_RATE_LIMIT_FORWARDED_HEADER=${other}, ` +
    `or have the proxy send ${HEADER_NAMES[header]}. (Said once.)`
  );
}

function forwardingMessage(
  peer: string | undefined,
  trust: ResolvedTrustProxy,
  header: 'x-forwarded-for' | 'forwarded',
): string {
  const name = HEADER_NAMES[header];
  const why =
    trust.kind === 'list'
      ? `${peer ?? 'its peer'} is not among the trusted proxies (WS_RATE_LIMIT_TRUST_PROXY=${trust.entries.join(',')})`
      : 'WS_RATE_LIMIT_TRUST_PROXY is not set';
  return (
    `An upgrade from ${peer ?? 'an unknown peer'} carries ${name}, but ${why}, so the header is ignored and the ` +
    `peer's address is the client's: behind a reverse proxy without WS_RATE_LIMIT_TRUST_PROXY every client ` +
    `shares the proxy's budget. Set it to the proxy's addresses (or a hop count); if clients reach this server ` +
    `directly, the header is theirs and may be ignored. (Said once.)`
  );
}
