import { Logger } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { ResolvedTrustProxy, ResolvedWsRateLimitOptions } from '../config/resolved-options.js';
import { isTrustedProxy } from '../utils/client-address.js';

/**
 * Warns once (per adapter, so once per application) when an upgrade carries the forwarding
 * header the module reads (`forwardedHeader`) from a peer that is not a trusted proxy: the
 * header is ignored, and behind a reverse proxy every client would spend the proxy's
 * budget. On the upgrade path: before the warning, one header lookup (and, with a list of
 * proxies, an address check when the header is there); after it, one boolean test. With a
 * hop count every peer is trusted, so it never warns.
 */
export class ForwardingWarning {
  private done: boolean;
  private readonly trust: ResolvedTrustProxy;
  private readonly header: 'x-forwarded-for' | 'forwarded';

  constructor(
    options: Pick<ResolvedWsRateLimitOptions, 'trustProxy' | 'forwardedHeader'>,
    private readonly warn: (message: string) => void = (message) => new Logger('WsRateLimit').warn(message),
  ) {
    this.trust = options.trustProxy;
    this.header = options.forwardedHeader;
    this.done = this.trust.kind === 'hops';
  }

  /** Looks at one upgrade request. */
  check(request: IncomingMessage): void {
    if (this.done || request.headers[this.header] === undefined) return;
    const peer = request.socket.remoteAddress;
    if (this.trust.kind === 'list' && isTrustedProxy(peer, this.trust)) return;
    this.done = true;
    this.warn(forwardingMessage(peer, this.trust, this.header));
  }
}

function forwardingMessage(peer: string | undefined, trust: ResolvedTrustProxy, header: string): string {
  const name = header === 'forwarded' ? 'Forwarded' : 'X-Forwarded-For';
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
