// Real-browser tests of the close-code policy: closes in the 4500 range end the client (no
// reconnect), a refused token ends in an `invalid_token` error after at most two attempts, a full
// node is retried with backoff. The refusals need the server's `refusal=close` handshakes (a
// browser only ever sees 1006 for an HTTP refusal).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  clientLog,
  closeAll,
  health,
  launchBrowser,
  openHarness,
  sleep,
  startProxy,
  startServer,
  startStaticServer,
  waitForLog,
  waitForState,
  waitInPage,
} from "./support.mjs";

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

test("4500 unsupported_data (a binary frame on the SDK's socket): state closed, error, no reconnect", { timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t);
  await page.evaluate(
    ({ url }) => window.H.createClient("alice", { url, token: { sub: "alice" }, minDelayMs: 100, maxDelayMs: 500 }),
    { url: server.wsUrl },
  );
  await waitForLog(page, "alice", "connected");
  const tokenCallsBefore = (await page.evaluate(() => window.H.tokenCalls("alice"))).length;

  const sentAt = Date.now();
  // The SDK exposes no binary send: the harness reaches its WebSocket (the tracked instance).
  await page.evaluate(() => window.H.socket(window.H.sockets("alice")[0].index).send(new Uint8Array([1, 2, 3])));
  await waitForState(page, "alice", "closed", { timeoutMs: 5_000 });
  const socket = (await page.evaluate(() => window.H.sockets("alice")))[0];
  assert.equal(socket.close?.code, 4500, `the server closed with 4500 (${JSON.stringify(socket.close)})`);
  assert.equal(socket.close.reason, "unsupported_data");

  const [disconnected] = await waitForLog(page, "alice", "disconnected", { after: sentAt });
  assert.equal(disconnected.info.code, 4500);
  assert.equal(disconnected.info.willReconnect, false, "disconnected says it will not reconnect");
  const [error] = await waitForLog(page, "alice", "error", { after: sentAt });
  assert.equal(error.error.isRealtimeError, true, "the error is a RealtimeError");
  assert.ok(error.error.code, "the error has a code");

  // Well past several backoff windows (max 500 ms): nothing more happens.
  await sleep(3_000);
  assert.equal((await page.evaluate(() => window.H.sockets("alice"))).length, 1, "no reconnect attempt");
  assert.equal((await page.evaluate(() => window.H.tokenCalls("alice"))).length, tokenCallsBefore, "getToken not called again");
  assert.equal(await page.evaluate(() => window.H.state("alice")), "closed");
  assert.equal((await health(server)).connections, 0);
});

test("4501 invalid_token (wrongly signed token): one retry with a fresh token, then error invalid_token and closed", { timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t);
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  await page.evaluate(
    ({ url }) =>
      window.H.createClient("mallory", { url, token: { sub: "mallory", bad: 1 }, minDelayMs: 100, maxDelayMs: 300 }),
    { url: proxy.wsUrl },
  );
  const [error] = await waitForLog(page, "mallory", "error", { timeoutMs: 10_000, what: "an error event for the refused token" });
  assert.equal(error.error.code, "invalid_token", `the error code is invalid_token (${JSON.stringify(error.error)})`);
  await waitForState(page, "mallory", "closed", { timeoutMs: 5_000 });

  await sleep(3_000); // several backoff windows: no further attempts
  const sockets = await page.evaluate(() => window.H.sockets("mallory"));
  const tokenCalls = await page.evaluate(() => window.H.tokenCalls("mallory"));
  assert.ok(sockets.length >= 1 && sockets.length <= 2, `at most 2 WebSocket attempts (${sockets.length})`);
  assert.ok(proxy.attempts.length <= 2, `at most 2 TCP connections reached the server (${proxy.attempts.length})`);
  assert.ok(tokenCalls.length <= 2, `getToken called at most twice (${tokenCalls.length})`);
  for (const socket of sockets) {
    assert.equal(socket.close?.code, 4501, `each attempt was closed with 4501 (${JSON.stringify(socket.close)})`);
    assert.equal(socket.close.reason, "invalid_token");
  }
  assert.equal(await page.evaluate(() => window.H.state("mallory")), "closed");
  assert.equal((await clientLog(page, "mallory", "connected")).length, 0, "never connected");
  assert.equal((await clientLog(page, "mallory", "error")).length, 1, "exactly one error event");
});

test("4502 origin_forbidden (page origin not in server.allowed_origins): error origin_forbidden, closed, no retry", { timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t, {
    env: { REALTIME_SERVER__ALLOWED_ORIGINS: '["https://app.example.com"]' },
  });
  await page.evaluate(
    ({ url }) => window.H.createClient("alice", { url, token: { sub: "alice" }, minDelayMs: 100, maxDelayMs: 300 }),
    { url: server.wsUrl },
  );
  const [error] = await waitForLog(page, "alice", "error", { timeoutMs: 10_000 });
  assert.equal(error.error.code, "origin_forbidden", JSON.stringify(error.error));
  await waitForState(page, "alice", "closed", { timeoutMs: 5_000 });
  await sleep(2_000);
  const sockets = await page.evaluate(() => window.H.sockets("alice"));
  assert.equal(sockets.length, 1, "one attempt only");
  assert.equal(sockets[0].close?.code, 4502, JSON.stringify(sockets[0].close));
  assert.equal(sockets[0].close.reason, "origin_forbidden");
  assert.equal((await page.evaluate(() => window.H.tokenCalls("alice"))).length, 1);
});

test("4006 node_full: retried with backoff (not a stop code) and connects once a slot is free", { timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t, { env: { REALTIME_SERVER__MAX_CONNECTIONS: "1" } });
  await page.evaluate(({ url }) => window.H.createClient("first", { url, token: { sub: "first" } }), { url: server.wsUrl });
  await waitForLog(page, "first", "connected");
  await page.evaluate(
    ({ url }) => window.H.createClient("second", { url, token: { sub: "second" }, minDelayMs: 200, maxDelayMs: 400 }),
    { url: server.wsUrl },
  );
  await waitInPage(
    page,
    () => window.H.sockets("second").filter((s) => s.close).length >= 2,
    null,
    { timeoutMs: 10_000, what: "two refused attempts of the second client" },
  );
  const refused = (await page.evaluate(() => window.H.sockets("second"))).filter((s) => s.close);
  for (const socket of refused) {
    assert.equal(socket.close.code, 4006, `refused with 4006 node_full (${JSON.stringify(socket.close)})`);
    assert.equal(socket.close.reason, "node_full");
  }
  assert.notEqual(await page.evaluate(() => window.H.state("second")), "closed", "node_full is retried");
  const disconnects = await clientLog(page, "second", "disconnected");
  for (const entry of disconnects) {
    assert.equal(entry.info.willReconnect, true);
    assert.ok(entry.info.delayMs <= 400, `backoff delay ${entry.info.delayMs} <= maxDelayMs`);
  }

  const freedAt = Date.now();
  await page.evaluate(() => window.H.closeClient("first"));
  const [connected] = await waitForLog(page, "second", "connected", { after: freedAt, timeoutMs: 5_000 });
  assert.ok(connected.t - freedAt < 2_000, `connected within 2 s of the slot freeing (${connected.t - freedAt} ms)`);
});
