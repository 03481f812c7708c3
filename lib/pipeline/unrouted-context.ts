import type { ExecutionContext } from '@nestjs/common';
import type { AnswerSlot } from '../connection/answer-order.js';
import type { UnroutedCode } from '../protocol/rate-limit-protocol.js';
import { messageMeta, type MessageId } from '../utils/message-id.js';
import { UNROUTED_HANDLERS } from './message-limiter.js';

type WsArgumentsHost = ReturnType<ExecutionContext['switchToWs']>;
type HttpArgumentsHost = ReturnType<ExecutionContext['switchToHttp']>;
type RpcArgumentsHost = ReturnType<ExecutionContext['switchToRpc']>;

/** The gateway of a socket whose gateway the limiter could not tell. */
class UnknownGateway {}

/**
 * The execution context of a frame that reached no handler, so that a guard's steps see it
 * as they see a routed message: type `ws`, arguments `[client, undefined, event, meta?]`
 * (the message id where the client gave one, where `messageIdFromArgs` finds it), the
 * gateway as class, and as handler a stand-in per code (`UNROUTED_HANDLERS`) whose route is
 * the global budget.
 */
export class UnroutedContext implements ExecutionContext {
  private readonly args: unknown[];

  constructor(
    client: object,
    /** Why the frame reached no handler. */
    readonly code: UnroutedCode,
    id: MessageId | undefined,
    private readonly gateway: object | undefined,
    slot?: AnswerSlot,
  ) {
    this.args =
      id === undefined && slot === undefined
        ? [client, undefined, code]
        : [client, undefined, code, messageMeta(id, slot)];
  }

  getType<T extends string = 'ws'>(): T {
    return 'ws' as T;
  }

  getClass<T = unknown>(): T {
    return (this.gateway ?? UnknownGateway) as T;
  }

  getHandler(): (...args: unknown[]) => unknown {
    return UNROUTED_HANDLERS[this.code];
  }

  getArgs<T extends unknown[] = unknown[]>(): T {
    return this.args as T;
  }

  getArgByIndex<T = unknown>(index: number): T {
    return this.args[index] as T;
  }

  switchToWs(): WsArgumentsHost {
    const args = this.args;
    return {
      getClient: <T>() => args[0] as T,
      getData: <T>() => args[1] as T,
      getPattern: () => this.code,
    };
  }

  switchToHttp(): HttpArgumentsHost {
    throw new Error('nestjs-ws-rate-limit: an unrouted WebSocket frame has no HTTP context');
  }

  switchToRpc(): RpcArgumentsHost {
    throw new Error('nestjs-ws-rate-limit: an unrouted WebSocket frame has no RPC context');
  }
}
