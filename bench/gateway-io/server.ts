/**
 * Child process: serves one socket.io variant of the echo gateway on 127.0.0.1 (a free port),
 * on NestJS's stock `IoAdapter` or on `WsRateLimitIoAdapter`, with the `ws` part's protocol
 * (`ready`, `mark-start`/`mark-end`, `stop`).
 * Usage (from run.js): server.js <variant>
 */
import { NestFactory } from '@nestjs/core';
import { IoAdapter } from '@nestjs/platform-socket.io';
import { WsRateLimitIoAdapter } from 'nestjs-ws-rate-limit/socket.io';
import type { AddressInfo } from 'node:net';
import { serveMeasured } from '../support/child.js';
import { IO_VARIANTS, ioAppModule, type IoVariantId } from './apps.js';

const variant = process.argv[2] as IoVariantId;
if (!(variant in IO_VARIANTS)) throw new Error(`unknown variant: ${variant}`);

const app = await NestFactory.create(ioAppModule(variant), { logger: ['error', 'warn'] });
app.useWebSocketAdapter(IO_VARIANTS[variant].adapter === 'ours' ? new WsRateLimitIoAdapter(app) : new IoAdapter(app));
await app.listen(0, '127.0.0.1');
const { port } = app.getHttpServer().address() as AddressInfo;

await serveMeasured(app, port);
