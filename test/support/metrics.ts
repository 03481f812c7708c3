import type { Registry } from 'prom-client';

/** The sum of a metric's samples whose labels match `labels` (0 when it has none). */
export async function metricSum(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((entry) => entry.name === name);
  const values = (metric?.values ?? []) as Array<{ value: number; labels: Record<string, string | number> }>;
  return values
    .filter((value) => Object.entries(labels).every(([key, want]) => String(value.labels[key]) === want))
    .reduce((total, value) => total + value.value, 0);
}
