// Real-browser test of room recovery: a page joins a competition room (a room type with history),
// receives scores, loses its network path (a proxy goes silent, then refuses new connections)
// while more scores are published, and gets it back. The SDK re-joins with the position it had,
// the server replays what was missed, and the page shows every score exactly once, in order.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  clientLog,
  closeAll,
  launchBrowser,
  openHarness,
  publish,
  randomHex,
  sleep,
  startProxy,
  startServer,
  startStaticServer,
  waitForLog,
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

test("a network hiccup: the re-join recovers every missed score, once and in order (resubscribed recovered:true)", { timeout: 90_000 }, async (t) => {
  const room = `competition:${randomHex(4)}`;
  const server = await startServer(); // heartbeat_interval_ms = 1000; competition keeps history
  t.after(() => server.stop());
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));

  await page.evaluate(
    ({ url }) =>
      window.H.createClient("alice", {
        url,
        token: { sub: "alice", rooms: "competition:*" },
        heartbeatTimeoutMs: 1_500,
        minDelayMs: 200,
        maxDelayMs: 1_000,
      }),
    { url: proxy.wsUrl },
  );
  await waitForLog(page, "alice", "connected");
  const joined = await page.evaluate((id) => window.H.join("alice", id), room);
  assert.equal(joined.ok, true, `join: ${JSON.stringify(joined)}`);
  assert.equal(joined.result.offset, 0, "a new room's history is empty: position 0");
  assert.equal(typeof joined.result.epoch, "string");
  const epoch = joined.result.epoch;

  const score = (n) => ({ score: [n, 0] });
  const shown = async () => (await clientLog(page, "alice", "room-event")).map((entry) => entry.data.score[0]);

  // Three live scores, each carrying its position.
  for (let n = 1; n <= 3; n++) await publish(server, room, "match.update", score(n));
  const live = await waitForLog(page, "alice", "room-event", { count: 3 });
  assert.deepEqual(
    live.map((entry) => [entry.data.score[0], entry.push.offset, entry.push.epoch]),
    [
      [1, 1, epoch],
      [2, 2, epoch],
      [3, 3, epoch],
    ],
  );
  assert.deepEqual(
    await page.evaluate((id) => window.H.client("alice").rooms.get(id).position, room),
    { offset: 3, epoch },
  );

  // The hiccup: the path goes silent (no FIN, no RST) and new connections are refused.
  const cutAt = Date.now();
  proxy.refuseNew(true);
  assert.equal(proxy.freeze(), 1, "one connection frozen");
  // Scores 4-6 go out while the server still thinks the socket is fine: into the silent path.
  for (let n = 4; n <= 6; n++) await publish(server, room, "match.update", score(n));
  await waitForLog(page, "alice", "disconnected", { after: cutAt, what: "the SDK to notice the silent path" });
  // Scores 7-9 while the page has no connection at all (its attempts are refused).
  for (let n = 7; n <= 9; n++) await publish(server, room, "match.update", score(n));
  await sleep(500);
  assert.deepEqual(await shown(), [1, 2, 3], "nothing arrived while cut off");

  proxy.refuseNew(false);
  const [resubscribed] = await waitForLog(page, "alice", "resubscribed", {
    after: cutAt,
    timeoutMs: 10_000,
    what: "the automatic re-join",
  });
  assert.deepEqual(resubscribed.info, { recovered: true }, "the server replayed what was missed");
  await waitForLog(page, "alice", "room-event", { count: 9, what: "the 6 missed scores" });
  await publish(server, room, "match.update", score(10));
  const all = await waitForLog(page, "alice", "room-event", { count: 10, what: "the next live score" });
  assert.deepEqual(
    all.map((entry) => entry.data.score[0]),
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    "every score once, in order",
  );
  assert.deepEqual(
    all.map((entry) => entry.push.offset),
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
  );
  await sleep(300);
  assert.equal((await shown()).length, 10, "no duplicate arrived late");
  assert.deepEqual(
    await page.evaluate((id) => window.H.client("alice").rooms.get(id).position, room),
    { offset: 10, epoch },
  );

  // The room's history, as an app reads it (e.g. a late joiner).
  const history = await page.evaluate(async (id) => {
    const reply = await window.H.client("alice").rooms.get(id).history(4);
    return { offset: reply.offset, epoch: reply.epoch, scores: reply.events.map((event) => event.data.score[0]) };
  }, room);
  assert.deepEqual(history, { offset: 10, epoch, scores: [7, 8, 9, 10] });
  // (The browser logs each refused connection attempt as a console error: expected here.)
  assert.deepEqual(
    page.problems.filter((problem) => !problem.startsWith("console: WebSocket connection to")),
    [],
    "no page errors",
  );
});
