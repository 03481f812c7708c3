import { createRequire } from 'node:module';

/** Whether prom-client resolves: the module's metrics are on by default when it does. */
export const metricsOn = ((): boolean => {
  try {
    createRequire(import.meta.url).resolve('prom-client');
    return true;
  } catch {
    return false;
  }
})();
