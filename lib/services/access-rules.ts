import { isIP } from 'node:net';
import type { ResolvedAccessList } from '../config/resolve-options.js';
import { namedTracker } from '../pipeline/tracker.js';

/** Allow and deny lists: client addresses and networks, and tracker names. */
export class AccessRules {
  private readonly allowTrackers: ReadonlySet<string>;
  private readonly denyTrackers: ReadonlySet<string>;
  /** Whether any tracker name is listed (so messages need a lookup at all). */
  readonly hasTrackerRules: boolean;

  constructor(
    private readonly allow: ResolvedAccessList,
    private readonly deny: ResolvedAccessList,
  ) {
    // Tracker names are compared as the limiter names trackers from a `tracker` function.
    this.allowTrackers = new Set([...allow.trackers].map((name) => namedTracker(name).key));
    this.denyTrackers = new Set([...deny.trackers].map((name) => namedTracker(name).key));
    this.hasTrackerRules = this.allowTrackers.size + this.denyTrackers.size > 0;
  }

  /** The address is allow-listed: no limit applies to it. */
  allowsAddress(address: string | undefined): boolean {
    return matches(this.allow, address);
  }

  /** The address is deny-listed: its handshakes are refused. */
  deniesAddress(address: string | undefined): boolean {
    return matches(this.deny, address);
  }

  /** The tracker is allow-listed. */
  allowsTracker(tracker: string): boolean {
    return this.allowTrackers.has(tracker);
  }

  /** The tracker is deny-listed. */
  deniesTracker(tracker: string): boolean {
    return this.denyTrackers.has(tracker);
  }
}

function matches(list: ResolvedAccessList, address: string | undefined): boolean {
  if (list.addresses === undefined || address === undefined) return false;
  const family = isIP(address);
  return family !== 0 && list.addresses.check(address, family === 4 ? 'ipv4' : 'ipv6');
}
