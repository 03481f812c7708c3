/**
 * The `ws` types the adapter's public declarations use. `ws` ships no types of its own
 * (they are `@types/ws`, which NestJS's declarations never need, so a NestJS app may not
 * have them): each alias below carries `@ts-ignore` as the last line of its JSDoc
 * (TypeScript keeps JSDoc in the emitted .d.ts, and honours a directive there), so an app
 * without `@types/ws` that type-checks libraries (`skipLibCheck: false`) sees `any` instead
 * of TS7016. Import ws types from here, never from 'ws', in any file whose declarations are
 * shipped (a value import of 'ws' is fine: it is not in the declarations).
 */
/* eslint-disable @typescript-eslint/ban-ts-comment -- @ts-expect-error would fail where @types/ws IS installed */

/**
 * ws's server.
 * @ts-ignore @types/ws may be absent */
export type WebSocketServer = import('ws').WebSocketServer;
/**
 * ws's socket.
 * @ts-ignore @types/ws may be absent */
export type WebSocket = import('ws').WebSocket;
