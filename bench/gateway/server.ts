/**
 * Child process: serves one variant of the echo gateway on 127.0.0.1 (a free port) and
 * reports it. The parent then sends `mark-start`/`mark-end` around the measured window (this
 * process answers with the CPU time it used in between) and `stop`.
 * Usage (from run.js): server.js <variant>
 */
import { NestFactory } from '@nestjs/core';
import { WsAdapter } from '@nestjs/platform-ws';
import { WsRateLimitAdapter } from 'nestjs-ws-rate-limit';
import type { AddressInfo } from 'node:net';
import { serveMeasured } from '../support/child.js';
import { appModule, VARIANTS, type GatewayVariant, type VariantId } from './apps.js';

const variant = process.argv[2] as VariantId;
if (!(variant in VARIANTS)) throw new Error(`unknown variant: ${variant}`);

const app = await NestFactory.create(appModule(variant), { logger: ['error', 'warn'] });
const ours = (VARIANTS[variant] as GatewayVariant).adapter === 'ours';
app.useWebSocketAdapter(ours ? new WsRateLimitAdapter(app) : new WsAdapter(app));
await app.listen(0, '127.0.0.1');
const { port } = app.getHttpServer().address() as AddressInfo;

await serveMeasured(app, port);
