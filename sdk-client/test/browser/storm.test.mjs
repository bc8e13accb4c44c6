// Real-browser test of a reconnect storm: 200 clients in one page, the server killed and restarted.
// Full jitter must spread their returns over the backoff window instead of one wave.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  closeAll,
  health,
  launchBrowser,
  openHarness,
  startServer,
  startStaticServer,
  until,
  waitInPage,
} from "./support.mjs";

const CLIENTS = 200;
let browser;
let statics;

before(async () => {
  statics = await startStaticServer();
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser, statics);
});

/** Counts per 50 ms bucket of `values` (ms). */
function buckets(values, width = 50) {
  const counts = new Map();
  for (const value of values) {
    const bucket = Math.floor(value / width);
    counts.set(bucket, (counts.get(bucket) ?? 0) + 1);
  }
  return counts;
}

function describe(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return `n=${sorted.length} min=${sorted[0]} p10=${at(0.1)} p50=${at(0.5)} p90=${at(0.9)} max=${sorted.at(-1)}`;
}

test(`${CLIENTS} clients, server killed and restarted: reconnects spread over the jitter window`, { timeout: 120_000 }, async (t) => {
  const MIN_DELAY = 1_000; // the first attempt's window: [0, 1000] ms
  const MAX_DELAY = 4_000;
  let server = await startServer();
  t.after(() => server.stop());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));

  await page.evaluate(
    ({ url, count, min, max }) => {
      for (let i = 0; i < count; i++) {
        window.H.createClient(`c${i}`, {
          url,
          token: { sub: `c${i}` },
          minDelayMs: min,
          maxDelayMs: max,
          stableAfterMs: 1_000,
        });
      }
    },
    { url: server.wsUrl, count: CLIENTS, min: MIN_DELAY, max: MAX_DELAY },
  );
  await waitInPage(
    page,
    (count) => window.H.names().filter((n) => window.H.state(n) === "connected").length === count,
    CLIENTS,
    { timeoutMs: 40_000, what: `all ${CLIENTS} clients connected` },
  );
  await until(async () => (await health(server))?.connections === CLIENTS, { timeoutMs: 5_000, what: "server holds every socket" });
  await new Promise((resolve) => setTimeout(resolve, 1_500)); // past stableAfterMs

  const killedAt = Date.now();
  const port = server.port;
  await server.kill("SIGKILL");
  server = await startServer({ port, nodeId: server.nodeId });
  t.after(() => server.stop());
  const upAfter = server.readyAt - killedAt;

  await waitInPage(
    page,
    ({ after }) =>
      window.H.names().every((n) => window.H.log(n, "connected").some((e) => e.t > after)),
    { after: killedAt },
    { timeoutMs: 40_000, what: `all ${CLIENTS} clients reconnected` },
  );
  await until(async () => (await health(server))?.connections === CLIENTS, { timeoutMs: 10_000, what: "new server holds every socket" });

  const per = await page.evaluate(({ after }) => {
    return window.H.names().map((name) => {
      const disconnected = window.H.log(name, "disconnected").find((e) => e.t >= after);
      // The SDK's reconnect timer fires, then it asks getToken for a fresh token: that call is
      // the attempt's start (the socket follows once the token is fetched).
      const firstAttempt = window.H.tokenCalls(name).find((c) => c.t >= (disconnected?.t ?? after));
      const firstSocket = window.H.sockets(name).find((s) => s.createdAt >= after);
      const connected = window.H.log(name, "connected").find((e) => e.t > after);
      return {
        name,
        disconnectedAt: disconnected?.t ?? null,
        scheduledDelay: disconnected?.info?.delayMs ?? null,
        firstAttemptAt: firstAttempt?.t ?? null,
        firstSocketAt: firstSocket?.createdAt ?? null,
        firstSocketOpenedAt: firstSocket?.openedAt ?? null,
        connectedAt: connected?.t ?? null,
        attempts: window.H.sockets(name).filter((s) => s.createdAt >= after).length,
      };
    });
  }, { after: killedAt });

  for (const client of per) {
    assert.ok(client.disconnectedAt, `${client.name} saw the disconnect`);
    assert.ok(client.firstAttemptAt, `${client.name} attempted a reconnect`);
    assert.ok(
      client.scheduledDelay >= 0 && client.scheduledDelay <= MIN_DELAY,
      `${client.name}: first delay ${client.scheduledDelay} within [0, minDelayMs ${MIN_DELAY}]`,
    );
  }
  // When each client actually tried again, measured from its own disconnect (the browser's
  // timers may run a little late, never early).
  const firstAttemptDelays = per.map((c) => c.firstAttemptAt - c.disconnectedAt);
  const reconnectTimes = per.map((c) => c.connectedAt - killedAt);
  const scheduled = per.map((c) => c.scheduledDelay);
  const report =
    `server back ${upAfter} ms after the kill\n` +
    `scheduled first delays: ${describe(scheduled)}\n` +
    `first attempt after disconnect: ${describe(firstAttemptDelays)}\n` +
    `connected after kill: ${describe(reconnectTimes)}\n` +
    `first socket created after disconnect: ${describe(per.map((c) => c.firstSocketAt - c.disconnectedAt))}\n` +
    `its handshake (created -> open; Chromium lets one WebSocket per host:port connect at a time): ` +
    `${describe(per.filter((c) => c.firstSocketOpenedAt).map((c) => c.firstSocketOpenedAt - c.firstSocketAt))}\n` +
    `attempts per client: ${describe(per.map((c) => c.attempts))}`;
  t.diagnostic(report);

  const windowMs = MIN_DELAY;
  for (const [label, values] of [
    ["first attempt delays", firstAttemptDelays],
    ["reconnect times", reconnectTimes],
  ]) {
    const spread = Math.max(...values) - Math.min(...values);
    assert.ok(spread >= 0.4 * windowMs, `${label}: spread ${spread} ms >= 40% of the ${windowMs} ms window\n${report}`);
    const fullest = Math.max(...buckets(values).values());
    assert.ok(
      fullest <= 0.25 * CLIENTS,
      `${label}: the fullest 50 ms bucket holds ${fullest} clients (<= 25% of ${CLIENTS})\n${report}`,
    );
  }
  // First attempts cover the window roughly uniformly: each quarter of [0, window] holds some.
  for (let quarter = 0; quarter < 4; quarter++) {
    const low = (quarter * windowMs) / 4;
    const high = ((quarter + 1) * windowMs) / 4;
    const inQuarter = scheduled.filter((d) => d >= low && d < high).length;
    assert.ok(inQuarter >= CLIENTS * 0.1, `scheduled delays in [${low}, ${high}): ${inQuarter} (>= 10%)\n${report}`);
  }
  // The delay the SDK announced (disconnected.delayMs) is the one it waited.
  for (const client of per) {
    const late = client.firstAttemptAt - client.disconnectedAt - client.scheduledDelay;
    assert.ok(late >= -5 && late <= 750, `${client.name}: attempted ${late} ms after its announced delay\n${report}`);
  }
});
