// Real-browser tests of the connection life cycle: connect, join, receive, clean close; a killed
// and restarted server; a token refreshed on the live socket.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  closeAll,
  clientLog,
  health,
  launchBrowser,
  openHarness,
  publish,
  sleep,
  startServer,
  startStaticServer,
  until,
  waitForLog,
  waitForState,
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

async function setup(t, serverOptions = {}) {
  const server = await startServer(serverOptions);
  t.after(() => server.stop());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));
  return { server, page };
}

test("connect, join, receive a publish, and close cleanly (SDK close and a raw WebSocket)", { timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t);

  await page.evaluate(
    ({ url }) => window.H.createClient("alice", { url, token: { sub: "alice", rooms: "competition:*" } }),
    { url: server.wsUrl },
  );
  const [connected] = await waitForLog(page, "alice", "connected", { what: "alice connected" });
  assert.equal(connected.info.node, server.nodeId, "connected.info.node names the server's node id");
  assert.equal(connected.info.reconnected, false, "the first connect is not a reconnect");
  assert.equal(typeof connected.info.expiresAt, "number", "connected.info.expiresAt is a number");
  assert.equal(await page.evaluate(() => window.H.state("alice")), "connected");
  const states = (await clientLog(page, "alice", "state")).map((entry) => entry.state);
  assert.deepEqual(states, ["connecting", "connected"], "state goes connecting -> connected");

  const joined = await page.evaluate((room) => window.H.join("alice", room), ROOM);
  assert.equal(joined.ok, true, `join succeeds: ${JSON.stringify(joined)}`);
  assert.equal((await health(server)).connections, 1, "the server holds one connection");

  const reply = await publish(server, ROOM, "match.update", { score: [2, 1] });
  assert.equal(reply.ok, true);
  assert.equal(reply.delivered, true);
  const [received] = await waitForLog(page, "alice", "room-event", { where: "e.event === 'match.update'" });
  assert.deepEqual(received.data, { score: [2, 1] }, "the room handler gets the data");
  assert.equal(received.push.room, ROOM);
  const [pushed] = await waitForLog(page, "alice", "event", { where: "e.event.event === 'match.update'" });
  assert.equal(pushed.event.type, "event");
  assert.equal(pushed.event.room, ROOM);
  assert.deepEqual(pushed.event.data, { score: [2, 1] });
  assert.equal(typeof pushed.event.ts, "number");

  // The SDK's close: one Close frame each way, so the browser reports a clean close.
  const closeAt = Date.now();
  await page.evaluate(() => window.H.closeClient("alice"));
  await waitForState(page, "alice", "closed");
  const closedSocket = await waitInPage(
    page,
    () => {
      const socket = window.H.sockets("alice")[0];
      return socket && socket.close ? socket : null;
    },
    null,
    { timeoutMs: 5_000, what: "the SDK's socket to report its close event" },
  );
  assert.equal(closedSocket.clientClosedWith?.code ?? 1000, 1000, "the SDK closes with 1000");
  assert.equal(
    closedSocket.close.wasClean,
    true,
    `the server answered the SDK's Close frame (close event: ${JSON.stringify(closedSocket.close)})`,
  );
  assert.equal(closedSocket.close.code, 1000);
  assert.ok(closedSocket.closedAt - closeAt < 2_000, "the close completes promptly");
  await until(async () => (await health(server))?.connections === 0, { timeoutMs: 5_000, what: "server to drop the socket" });
  await sleep(1_500);
  const sockets = await page.evaluate(() => window.H.sockets("alice"));
  assert.equal(sockets.length, 1, "no reconnect after close()");
  assert.equal(await page.evaluate(() => window.H.state("alice")), "closed");
  assert.equal((await clientLog(page, "alice", "error")).length, 0, "no error event on a deliberate close");

  // A raw browser WebSocket, no SDK: close(1000) from the page ends clean too.
  const raw = await page.evaluate(async ({ url }) => {
    const token = await (await fetch("/token?sub=bob")).text();
    const ws = new window.H.NativeWebSocket(`${url}?token=${encodeURIComponent(token)}`);
    const first = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no connected frame in 5 s")), 5_000);
      ws.onmessage = (event) => {
        clearTimeout(timer);
        resolve(JSON.parse(event.data));
      };
      ws.onclose = (event) => reject(new Error(`closed before the connected frame: ${event.code}`));
    });
    const closed = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ timeout: true }), 5_000);
      ws.onclose = (event) => {
        clearTimeout(timer);
        resolve({ code: event.code, reason: event.reason, wasClean: event.wasClean });
      };
      ws.close(1000, "bye");
    });
    return { first, closed };
  }, { url: server.wsUrl });
  assert.equal(raw.first.type, "connected");
  assert.equal(raw.first.user_id, "bob");
  assert.equal(raw.first.heartbeat_interval_ms, 1000);
  assert.notEqual(raw.closed.timeout, true, "the raw socket's close event arrives within 5 s");
  assert.equal(raw.closed.wasClean, true, `raw close is clean: ${JSON.stringify(raw.closed)}`);
  assert.equal(raw.closed.code, 1000);
  assert.deepEqual(page.problems.filter((p) => p.startsWith("pageerror")), [], "no uncaught page errors");
});

test("server killed (-9) and restarted on the same port: reconnect within the backoff bound, re-join, receive", { timeout: 90_000 }, async (t) => {
  const MIN_DELAY = 200;
  const MAX_DELAY = 2_000;
  const DOWN_FOR = 4_000;
  let { server, page } = await setup(t);
  const port = server.port;

  await page.evaluate(
    ({ url, min, max }) =>
      window.H.createClient("alice", {
        url,
        token: { sub: "alice", rooms: "competition:*" },
        minDelayMs: min,
        maxDelayMs: max,
        stableAfterMs: 500,
      }),
    { url: server.wsUrl, min: MIN_DELAY, max: MAX_DELAY },
  );
  await waitForLog(page, "alice", "connected");
  assert.equal((await page.evaluate((room) => window.H.join("alice", room), ROOM)).ok, true);
  await publish(server, ROOM, "match.update", { score: [1, 0] });
  await waitForLog(page, "alice", "room-event", { where: "e.data.score[0] === 1" });
  await sleep(700); // past stableAfterMs: the backoff starts from attempt 0

  const killedAt = Date.now();
  await server.kill("SIGKILL");
  const [disconnected] = await waitForLog(page, "alice", "disconnected", { after: killedAt, what: "disconnect seen after kill -9" });
  assert.equal(disconnected.info.willReconnect, true, "a killed server is reconnected to");
  assert.ok(disconnected.t - killedAt < 2_000, `the page notices within 2 s (took ${disconnected.t - killedAt} ms)`);
  assert.ok(
    disconnected.info.delayMs >= 0 && disconnected.info.delayMs <= MIN_DELAY,
    `the first retry waits within [0, minDelayMs=${MIN_DELAY}] (got ${disconnected.info.delayMs})`,
  );
  await waitInPage(page, () => ["reconnecting", "connecting"].includes(window.H.state("alice")), null, { what: "reconnecting state" });

  await sleep(DOWN_FOR);
  const duringDown = await page.evaluate(() => window.H.log("alice", "disconnected"));
  const attemptsWhileDown = (await page.evaluate(() => window.H.sockets("alice"))).filter((s) => s.createdAt > killedAt);
  assert.ok(attemptsWhileDown.length >= 2, `it kept trying while the server was down (${attemptsWhileDown.length} attempts)`);
  assert.ok(attemptsWhileDown.length <= 20, `no hot loop while down (${attemptsWhileDown.length} attempts in ${DOWN_FOR} ms)`);
  duringDown.forEach((entry, index) => {
    if (entry.t < killedAt) return;
    assert.ok(entry.info.delayMs <= MAX_DELAY, `retry delay ${entry.info.delayMs} <= maxDelayMs ${MAX_DELAY}`);
    assert.equal(entry.info.willReconnect, true);
    void index;
  });
  // Consecutive failures: the k-th retry's delay is within [0, min(max, min * 2^k)].
  const retries = duringDown.filter((entry) => entry.t >= killedAt);
  retries.forEach((entry, k) => {
    const ceiling = Math.min(MAX_DELAY, MIN_DELAY * 2 ** k);
    assert.ok(entry.info.delayMs <= ceiling, `retry ${k}: delay ${entry.info.delayMs} <= ceiling ${ceiling}`);
  });

  server = await startServer({ port, nodeId: server.nodeId });
  t.after(() => server.stop());
  const [reconnected] = await waitForLog(page, "alice", "connected", {
    after: killedAt,
    timeoutMs: MAX_DELAY + 5_000,
    what: "reconnect after the server came back",
  });
  assert.equal(reconnected.info.reconnected, true, "connected.info.reconnected is true");
  const sinceUp = reconnected.t - server.readyAt;
  assert.ok(reconnected.t >= server.spawnedAt, "connected only after the new server started");
  assert.ok(
    sinceUp <= MAX_DELAY + 1_000,
    `reconnected ${sinceUp} ms after the server was back (bound: maxDelayMs ${MAX_DELAY} + 1000 ms slack)`,
  );
  t.diagnostic(
    `server down ${server.spawnedAt - killedAt} ms, ${attemptsWhileDown.length} attempts meanwhile ` +
      `(delays ${retries.map((entry) => entry.info.delayMs).join(", ")} ms); connected ${sinceUp} ms after it was back`,
  );
  const [resubscribed] = await waitForLog(page, "alice", "resubscribed", { after: killedAt, what: "room resubscribed" });
  assert.equal(resubscribed.room, ROOM);
  assert.equal(typeof resubscribed.info.recovered, "boolean", "resubscribed carries `recovered`");
  assert.equal((await health(server)).connections, 1, "one socket on the new server");

  await publish(server, ROOM, "match.update", { score: [2, 0] });
  await waitForLog(page, "alice", "room-event", { after: killedAt, where: "e.data.score[0] === 2", what: "publish after restart" });
  assert.equal(await page.evaluate(() => window.H.state("alice")), "connected");
});

test("token refresh on the live socket: getToken called again, no disconnect, still connected past the first expiry", { timeout: 60_000 }, async (t) => {
  const TTL = 6;
  const startedAt = Date.now();
  const { server, page } = await setup(t);
  await page.evaluate(
    ({ url, ttl }) =>
      window.H.createClient("alice", {
        url,
        token: { sub: "alice", rooms: "competition:*", ttl },
        refreshBeforeExpiryMs: 2_000,
      }),
    { url: server.wsUrl, ttl: TTL },
  );
  const [connected] = await waitForLog(page, "alice", "connected");
  assert.equal((await page.evaluate((room) => window.H.join("alice", room), ROOM)).ok, true);
  const firstExp = statics.tokens.filter((token) => token.sub === "alice" && token.at >= startedAt)[0].exp;
  assert.equal(connected.info.expiresAt, firstExp, "connected.info.expiresAt is the token's exp (Unix seconds)");

  // Past the first token's expiry (leeway 0) by 2.5 s: the server would have closed with 4001.
  const waitUntil = firstExp * 1000 + 2_500;
  await sleep(Math.max(0, waitUntil - Date.now()));

  const tokenCalls = await page.evaluate(() => window.H.tokenCalls("alice"));
  assert.ok(tokenCalls.length >= 2, `getToken was called again (${tokenCalls.length} calls)`);
  assert.deepEqual(await clientLog(page, "alice", "disconnected"), [], "no disconnect during the refresh");
  assert.equal(await page.evaluate(() => window.H.state("alice")), "connected");
  const sockets = await page.evaluate(() => window.H.sockets("alice"));
  assert.equal(sockets.length, 1, "the same socket throughout");
  assert.equal(sockets[0].close, null, "the socket is still open");
  assert.ok(sockets[0].ops.includes("refresh"), `a refresh op went over the socket (ops: ${sockets[0].ops.join(",")})`);
  assert.equal((await health(server)).connections, 1);

  const sent = Date.now();
  await publish(server, ROOM, "match.update", { score: [5, 5] });
  await waitForLog(page, "alice", "room-event", { after: sent, where: "e.data.score[0] === 5", what: "publish after the first token's expiry" });
  assert.equal((await page.evaluate(() => window.H.sockets("alice"))).length, 1);
});
