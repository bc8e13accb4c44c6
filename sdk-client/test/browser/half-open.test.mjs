// Real-browser test of a half-open connection: the path between the page and the server goes
// silent in both directions without any FIN or RST (a TCP proxy stops forwarding). The browser
// cannot see that; only the SDK's heartbeat reply timeout can.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  closeAll,
  launchBrowser,
  openHarness,
  publish,
  startProxy,
  startServer,
  startStaticServer,
  waitForLog,
  waitInPage,
} from "./support.mjs";

const ROOM = "competition:42";
let browser;
let statics;

before(async () => {
  statics = await startStaticServer();
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser, statics);
});

test("half-open path: heartbeat timeout detects it, the client reconnects and receives the next publish", { timeout: 60_000 }, async (t) => {
  const HEARTBEAT_TIMEOUT = 1_500;
  const server = await startServer(); // heartbeat_interval_ms = 1000
  t.after(() => server.stop());
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));

  await page.evaluate(
    ({ url, timeout }) =>
      window.H.createClient("alice", {
        url,
        token: { sub: "alice", rooms: "competition:*" },
        heartbeatTimeoutMs: timeout,
        minDelayMs: 200,
        maxDelayMs: 1_000,
      }),
    { url: proxy.wsUrl, timeout: HEARTBEAT_TIMEOUT },
  );
  const [connected] = await waitForLog(page, "alice", "connected");
  assert.equal(connected.info.node, server.nodeId);
  assert.equal((await page.evaluate((room) => window.H.join("alice", room), ROOM)).ok, true);
  await publish(server, ROOM, "match.update", { score: [1, 1] });
  await waitForLog(page, "alice", "room-event", { where: "e.data.score[0] === 1" });
  // The SDK heartbeats on the live path (the server asked for one every 1000 ms).
  await waitInPage(page, () => (window.H.sockets("alice")[0]?.ops ?? []).includes("heartbeat"), null, {
    timeoutMs: 4_000,
    what: "a heartbeat op on the socket",
  });
  assert.equal(proxy.attempts.length, 1);

  const frozenAt = Date.now();
  assert.equal(proxy.freeze(), 1, "one connection frozen");
  const [disconnected] = await waitForLog(page, "alice", "disconnected", {
    after: frozenAt,
    timeoutMs: 10_000,
    what: "the SDK to notice the silent path",
  });
  const detectedAfter = disconnected.t - frozenAt;
  assert.ok(disconnected.info.willReconnect, "it will reconnect");
  assert.ok(
    detectedAfter >= HEARTBEAT_TIMEOUT - 100,
    `not before a heartbeat could have timed out (detected after ${detectedAfter} ms)`,
  );
  assert.ok(
    detectedAfter <= 1_000 + HEARTBEAT_TIMEOUT + 1_500,
    `within one heartbeat interval + heartbeatTimeoutMs + slack (detected after ${detectedAfter} ms)`,
  );

  t.diagnostic(`silent path detected ${detectedAfter} ms after the freeze (heartbeat every 1000 ms, timeout ${HEARTBEAT_TIMEOUT} ms)`);
  const [reconnected] = await waitForLog(page, "alice", "connected", { after: frozenAt, timeoutMs: 5_000 });
  assert.equal(reconnected.info.reconnected, true);
  assert.ok(proxy.attempts.length >= 2, `a new TCP connection through the proxy (${proxy.attempts.length})`);
  assert.equal(proxy.liveLinks(), 1, "exactly one live (unfrozen) path");
  await waitForLog(page, "alice", "resubscribed", { after: frozenAt, where: `e.room === "${ROOM}"` });
  const sent = Date.now();
  await publish(server, ROOM, "match.update", { score: [2, 2] });
  const [received] = await waitForLog(page, "alice", "room-event", { after: sent, where: "e.data.score[0] === 2" });
  assert.deepEqual(received.data, { score: [2, 2] });
  const sockets = await page.evaluate(() => window.H.sockets("alice"));
  assert.equal(sockets.length, 2, "one new socket, not a burst");
});
