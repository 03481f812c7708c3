import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { isIP } from 'node:net';
import { DEFAULT_IPV6_PREFIX, clientAddressKey, plainAddress } from '../../lib/utils/client-ip.js';
import { check, fcParams } from './support/exact-model.js';

const hex = (n: number): string => n.toString(16);

describe('C-18: clientAddressKey', () => {
  it.each([
    ['::ffff:1.2.3.4', '1.2.3.4'],
    ['::ffff:102:304', '1.2.3.4'],
    ['::FFFF:0102:0304', '1.2.3.4'],
    ['0:0:0:0:0:ffff:1.2.3.4', '1.2.3.4'],
    ['1.2.3.4', '1.2.3.4'],
    ['255.255.255.255', '255.255.255.255'],
    ['2001:db8::1.2.3.4', '2001:db8::/64'],
    ['2001:db8::1', '2001:db8::/64'],
    ['2001:0db8:0000:0000:ffff:ffff:ffff:ffff', '2001:db8::/64'],
    ['2001:DB8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:db8:0:1::', '2001:db8:0:1::/64'],
    ['::1', '::/64'],
    ['::', '::/64'],
    ['fe80::1%eth0', 'fe80::/64'],
    ['fe80::1234:5678%25', 'fe80::/64'],
  ])('%s -> %s', (address, key) => {
    expect(clientAddressKey(address)).toBe(key);
  });

  it.each([
    [undefined],
    [''],
    ['localhost'],
    ['1.2.3'],
    ['1.2.3.4.5'],
    ['256.1.1.1'],
    ['1.2.3.4:5678'],
    ['[2001:db8::1]'],
    ['[2001:db8::1]:443'],
    ['::8:8:8:8:8:8:8:8:8'],
    ['2001:db8::1::2'],
    ['gggg::1'],
    ['%eth0'],
    ['1.2.3.4, 5.6.7.8'],
    [' 1.2.3.4'],
  ])('%s is not an address -> undefined', (address) => {
    expect(clientAddressKey(address)).toBeUndefined();
  });

  it.each([['1.2.3.4%eth0'], ['fe80::1%'], ['1.2.3.4%']])(
    '%s: a zone id only follows an IPv6 address, and is never empty -> undefined (net.isIP agrees)',
    (address) => {
      expect(isIP(address)).toBe(0);
      expect(clientAddressKey(address)).toBeUndefined();
    },
  );

  it('groups IPv6 by /64 by default: 65,536 addresses inside one /64 give one key', () => {
    expect(DEFAULT_IPV6_PREFIX).toBe(64);
    const keys = new Set<string | undefined>();
    for (let i = 0; i < 65_536; i++) {
      keys.add(
        clientAddressKey(
          `2001:db8:aaaa:bbbb:${hex(i)}:${hex((i * 7919) & 0xffff)}:${hex(i ^ 0x5a5a)}:${hex(65_535 - i)}`,
        ),
      );
    }
    expect([...keys]).toEqual(['2001:db8:aaaa:bbbb::/64']);
  });

  it('gives neighbouring /64s different keys', () => {
    const keys = new Set<string | undefined>();
    for (let i = 0; i < 512; i++) keys.add(clientAddressKey(`2001:db8:aaaa:${hex(i)}::1`));
    expect(keys.size).toBe(512);
    expect(clientAddressKey('2001:db8:aaaa:ffff:ffff:ffff:ffff:ffff')).not.toBe(clientAddressKey('2001:db8:aaab::'));
  });

  it('groups by /48 when asked: the 65,536 /64s of a /48 share a key, the next /48 does not', () => {
    const keys = new Set<string | undefined>();
    for (let i = 0; i < 65_536; i += 257) keys.add(clientAddressKey(`2001:db8:aaaa:${hex(i)}::${hex(i)}`, 48));
    expect([...keys]).toEqual(['2001:db8:aaaa::/48']);
    expect(clientAddressKey('2001:db8:aaab::1', 48)).toBe('2001:db8:aaab::/48');
    // A prefix that is not a multiple of 16 masks inside a group.
    expect(clientAddressKey('2001:db8:aaaa:bbff::1', 56)).toBe('2001:db8:aaaa:bb00::/56');
    expect(clientAddressKey('2001:db8:aaaa:bbff::1', 56)).toBe(clientAddressKey('2001:db8:aaaa:bb00::2', 56));
  });

  it('never keys an IPv6 client as an IPv4 one unless it is IPv4-mapped (express-rate-limit #667)', () => {
    fc.assert(
      fc.property(fc.ipV6(), (address) => {
        const key = clientAddressKey(address);
        check(key !== undefined, () => `${address} refused`);
        const groups = new URL(`http://[${address}]/`).hostname.slice(1, -1);
        const mapped = /^::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(groups);
        check(mapped === (isIP(key!) === 4), () => `${address} -> ${key}`);
        if (!mapped) check(key!.endsWith('/64'), () => `${address} -> ${key}`);
      }),
      fcParams(3_000),
    );
  });

  it('gives every spelling of one address the same key, and the key is a valid /64 prefix', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 }), (groups) => {
        const full = groups.map(hex).join(':');
        const padded = groups.map((g) => hex(g).padStart(4, '0').toUpperCase()).join(':');
        const canonical = new URL(`http://[${full}]/`).hostname.slice(1, -1);
        const key = clientAddressKey(full);
        check(
          clientAddressKey(padded) === key && clientAddressKey(canonical) === key,
          () => `${full} spelled differently`,
        );
        const [prefix, bits] = key!.split('/');
        if (bits === undefined) return; // IPv4-mapped
        check(bits === '64' && isIP(prefix!) === 6, () => `${full} -> ${key}`);
        const first = new URL(`http://[${prefix}]/`).hostname.slice(1, -1);
        check(first === prefix, () => `${prefix} is not in RFC 5952 form (${first})`);
      }),
      fcParams(3_000),
    );
  });
});

describe('plainAddress: the address a tracker function and events see', () => {
  // An IPv4-mapped address in any notation is the IPv4 client (before, only the dotted
  // `::ffff:a.b.c.d` was unmapped: a forwarded `::ffff:102:304` reached a tracker function's
  // `address` as it was, while its `ip` key was 1.2.3.4).
  it.each([
    ['::ffff:1.2.3.4', '1.2.3.4'],
    ['::ffff:102:304', '1.2.3.4'],
    ['::FFFF:0102:0304', '1.2.3.4'],
    ['0:0:0:0:0:ffff:1.2.3.4', '1.2.3.4'],
    ['::0:ffff:0102:0304', '1.2.3.4'],
    ['fe80::1%eth0', 'fe80::1'],
    ['2001:db8::1', '2001:db8::1'],
    ['::1', '::1'],
    ['1.2.3.4', '1.2.3.4'],
  ])('%s -> %s', (address, plain) => {
    expect(plainAddress(address)).toBe(plain);
  });

  it('is undefined for anything that is not an IP address', () => {
    for (const text of [undefined, '', 'localhost', '1.2.3', '::ffff:1.2.3'])
      expect(plainAddress(text)).toBeUndefined();
  });
});
