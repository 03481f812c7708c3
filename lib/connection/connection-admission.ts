import type { IncomingMessage } from 'node:http';
import type { ConnectionRefusalReason } from '../interfaces/event.interface.js';
import type { RateLimitDecision, TierSpec, TierStatus } from '../interfaces/plan.interface.js';
import type { Telemetry } from '../metrics/telemetry.js';
import type { MessageLimiter } from '../pipeline/message-limiter.js';
import { addressTracker } from '../pipeline/tracker.js';
import type { AccessRules } from '../services/access-rules.js';
import type { OperatorBlocks } from '../services/operator-blocks.js';
import { isPromise } from '../services/shared-store.js';
import type { MaybePromise, RateLimitStore } from '../storage/rate-limit-store.js';
import type { ConnectionRegistry } from './connection-registry.js';
import type { ConnectionState } from './connection-state.js';

/** The outcome of a connection attempt at the upgrade, and how to give its slot back. */
export interface ConnectionAdmission {
  /** Whether the handshake may complete (always, in shadow mode). */
  readonly accepted: boolean;
  /** Why it was refused (or, in shadow mode, would have been). */
  readonly reason?: ConnectionRefusalReason;
  /** Whole milliseconds until a retry could succeed, for refusals. */
  readonly retryAfter: number;
  /** Gives back the open-connection slot (no-op when none was taken); call once. */
  readonly release: () => void;
  /**
   * The connection's record (address, address key, allow status, `release`), to attach to
   * the socket when it opens.
   */
  readonly connection: ConnectionState;
}

/**
 * Decides new connections from a client address, before any socket exists: deny list,
 * operator blocks, allow list, then the connection-rate bucket and, when capped, the
 * open-connection count, together in one decision.
 */
export class ConnectionAdmitter {
  /**
   * Open connections this process holds per address (of a capped limiter), whichever store
   * took their slots. While Redis is out, the fallback starts empty; after, Redis does not
   * know the slots the fallback took: either way one process could hold the cap again on top
   * of what it held. This count keeps one process at most at the cap per address.
   */
  private readonly open = new Map<string, number>();
  /** The open-connection cap per address (`maxConnectionsPerIp`), when capped. */
  private readonly maxOpen: number;
  /** The tiers of an attempt that opens no connection: all but the open-connection cap. */
  private readonly attemptSpecs: readonly TierSpec[];

  constructor(
    private readonly limiter: MessageLimiter,
    private readonly registry: ConnectionRegistry,
    private readonly access: AccessRules,
    private readonly blocks: OperatorBlocks,
    private readonly telemetry: Telemetry,
    private readonly specs: readonly TierSpec[],
    private readonly capped: boolean,
    /** Names this process's open-connection leases in a shared store. */
    private readonly instanceId: string,
    private readonly releaseFailed: (error: unknown) => void,
  ) {
    this.maxOpen = specs.find((spec) => spec.tier === 'concurrency')?.limit ?? Infinity;
    this.attemptSpecs = specs.filter((spec) => spec.tier !== 'concurrency');
  }

  /**
   * Decides a connection; the slot, if taken, is given back by `release` in whichever store
   * took it. Without `slot`, an attempt that opens no connection: no open-connection slot.
   */
  admit(address: string, request?: IncomingMessage, slot = true): MaybePromise<ConnectionAdmission> {
    const record = this.registry.create(address, request);
    const ip = record.ip!;
    if (this.access.deniesAddress(address)) return this.admitted(record, 'denied', 0);
    const byAddress = (record.addressTracker = addressTracker(ip));
    const blocked = this.blocks.remainingFor(undefined, byAddress.key);
    if (blocked > 0) return this.admitted(record, 'blocked', blocked);
    if (record.allowed) return this.admitted(record, undefined, 0);
    const specs = slot ? this.specs : this.attemptSpecs;
    if (specs.length === 0) return this.admitted(record, undefined, 0);
    const capped = slot && this.capped;
    const plan = this.limiter.buildPlan(byAddress, specs, '', this.instanceId);
    // The slot is given back to whichever store took it: the store, or the fallback.
    let taker: RateLimitStore | undefined;
    const settle = (decision: RateLimitDecision): ConnectionAdmission => {
      const store = taker;
      if (decision.allowed && capped && store) {
        const giveBack = (): void => {
          try {
            const released = store.release(plan);
            if (isPromise(released)) released.catch(this.releaseFailed);
          } catch (error) {
            this.releaseFailed(error);
          }
        };
        const open = this.open.get(ip) ?? 0;
        // The store admitted it, but this process holds the cap already (slots one store
        // took that the other does not know of, across an outage): refused, slot given back.
        if (open >= this.maxOpen) {
          giveBack();
          return this.admitted(record, 'concurrency', 1000);
        }
        this.open.set(ip, open + 1);
        record.release = once(() => {
          const left = (this.open.get(ip) ?? 1) - 1;
          if (left > 0) this.open.set(ip, left);
          else this.open.delete(ip);
          giveBack();
        });
      }
      if (decision.allowed) return this.admitted(record, undefined, 0);
      const reason = decision.storeUnavailable ? 'store' : decision.tier === 'concurrency' ? 'concurrency' : 'rate';
      return this.admitted(record, reason, decision.retryAfter);
    };
    const decision = this.limiter.shared.consume(plan, (store) => (taker = store));
    return isPromise(decision) ? decision.then(settle) : settle(decision);
  }

  /**
   * What this process holds of `status`, the concurrency tier of an address as a store
   * reports it: never more slots left than the cap less the connections this process holds
   * (while Redis is out, the fallback that answers knows none of them).
   */
  ownOpen(ip: string, status: TierStatus): TierStatus {
    const open = this.open.get(ip) ?? 0;
    if (status.tier !== 'concurrency' || open === 0) return status;
    const left = Math.max(0, this.maxOpen - open);
    return left >= status.remaining ? status : { ...status, remaining: left };
  }

  /** A connection ended before it could be decided (see `WsRateLimitService.handshakeDropped`). */
  dropped(ip: string, reason: ConnectionRefusalReason): void {
    this.telemetry.metrics.connection('refused', reason);
    if (this.telemetry.observed)
      this.telemetry.emit({ kind: 'connection', accepted: false, ip, reason, enforced: true });
  }

  private admitted(
    record: ConnectionState,
    reason: ConnectionRefusalReason | undefined,
    retryAfter: number,
  ): ConnectionAdmission {
    const ip = record.ip!;
    const enforced = this.telemetry.enforced;
    const accepted = reason === undefined || !enforced;
    this.telemetry.metrics.connection(
      reason === undefined ? 'accepted' : enforced ? 'refused' : 'shadow_refused',
      reason ?? '',
    );
    if (this.telemetry.observed) {
      this.telemetry.emit(
        reason === undefined
          ? { kind: 'connection', accepted: true, ip, enforced: true }
          : { kind: 'connection', accepted, ip, reason, enforced },
      );
    }
    const release = record.release;
    return { accepted, ...(reason === undefined ? {} : { reason }), retryAfter, release, connection: record };
  }
}

function once(run: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    run();
  };
}
