// Real-browser test of a rolling restart: two nodes sharing Redis and NATS behind a TCP load
// balancer; SIGTERM on node A sends its sockets 1012, and its clients come back through the load
// balancer on node B, still in their rooms.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  clientLog,
  closeAll,
  clusterEnv,
  deleteNatsStream,
  health,
  launchBrowser,
  openHarness,
  publish,
  randomHex,
  startLoadBalancer,
  startServer,
  startStaticServer,
  waitForLog,
  waitInPage,
} from "./support.mjs";

const ROOM = "competition:42";
const CLIENTS = 6;
let browser;
let statics;

before(async () => {
  statics = await startStaticServer();
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser, statics);
});

test("SIGTERM on node A: its clients get 1012, reconnect via the load balancer to node B, stay in their rooms", { timeout: 90_000 }, async (t) => {
  const RESTART_JITTER = 500;
  const env = clusterEnv();
  const nodes = [];
  // Nodes first, then the JetStream stream they made (a running node would make it again).
  t.after(async () => {
    for (const node of nodes) await node.stop();
    const deleted = await deleteNatsStream(env.REALTIME_NATS__SUBJECT_PREFIX);
    if (!deleted) t.diagnostic("could not delete the test's JetStream stream");
  });
  const id = randomHex(2);
  const nodeA = await startServer({ nodeId: `node-a-${id}`, env });
  nodes.push(nodeA);
  const nodeB = await startServer({ nodeId: `node-b-${id}`, env });
  nodes.push(nodeB);
  const lb = await startLoadBalancer([
    { port: nodeA.port, name: nodeA.nodeId },
    { port: nodeB.port, name: nodeB.nodeId },
  ]);
  t.after(() => lb.close());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));

  const names = Array.from({ length: CLIENTS }, (_, i) => `u${i}`);
  // One at a time, so that the round-robin spreads them over both nodes.
  for (const name of names) {
    await page.evaluate(
      ({ url, name, jitter }) =>
        window.H.createClient(name, {
          url,
          token: { sub: name, rooms: "competition:*" },
          restartJitterMs: jitter,
          minDelayMs: 200,
          maxDelayMs: 1_000,
        }),
      { url: lb.wsUrl, name, jitter: RESTART_JITTER },
    );
    await waitForLog(page, name, "connected");
    assert.equal((await page.evaluate(({ name, room }) => window.H.join(name, room), { name, room: ROOM })).ok, true);
  }
  const firstNode = {};
  for (const name of names) {
    firstNode[name] = (await clientLog(page, name, "connected"))[0].info.node;
  }
  const onA = names.filter((name) => firstNode[name] === nodeA.nodeId);
  const onB = names.filter((name) => firstNode[name] === nodeB.nodeId);
  assert.equal(onA.length + onB.length, CLIENTS, `every client is on A or B: ${JSON.stringify(firstNode)}`);
  assert.ok(onA.length >= 2 && onB.length >= 2, `the load balancer spread them: ${JSON.stringify(firstNode)}`);
  assert.equal((await health(nodeA)).connections, onA.length);
  assert.equal((await health(nodeB)).connections, onB.length);

  // The cluster works before the restart: a publish on A reaches the clients on B too.
  const before1 = Date.now();
  await publish(nodeA, ROOM, "match.update", { score: [1, 0] });
  await waitInPage(
    page,
    ({ names, after }) => names.every((n) => window.H.log(n, "room-event").some((e) => e.t >= after && e.data.score[0] === 1)),
    { names, after: before1 },
    { what: "every client got the publish sent to node A" },
  );

  const termAt = Date.now();
  const exit = await nodeA.kill("SIGTERM", 15_000);
  assert.equal(exit.code, 0, `node A exits 0 after SIGTERM (${JSON.stringify(exit)})\n${nodeA.output().slice(-2000)}`);

  for (const name of onA) {
    const [disconnected] = await waitForLog(page, name, "disconnected", { after: termAt, what: `${name} told of the restart` });
    assert.equal(disconnected.info.code, 1012, `${name} got 1012 (${JSON.stringify(disconnected.info)})`);
    assert.equal(disconnected.info.willReconnect, true);
    assert.ok(
      disconnected.info.delayMs >= 0 && disconnected.info.delayMs <= RESTART_JITTER,
      `${name}: restart delay ${disconnected.info.delayMs} within [0, restartJitterMs ${RESTART_JITTER}]`,
    );
    const socket = (await page.evaluate((name) => window.H.sockets(name), name))[0];
    assert.equal(socket.close?.code, 1012);
    assert.equal(socket.close.reason, "server_restart");
    const [reconnected] = await waitForLog(page, name, "connected", { after: termAt, timeoutMs: 10_000, what: `${name} back` });
    assert.equal(reconnected.info.node, nodeB.nodeId, `${name} now on node B`);
    assert.equal(reconnected.info.reconnected, true);
    await waitForLog(page, name, "resubscribed", { after: termAt, where: `e.room === "${ROOM}"`, what: `${name} re-joined` });
  }
  for (const name of onB) {
    assert.deepEqual(
      (await clientLog(page, name, "disconnected")).filter((e) => e.t >= termAt),
      [],
      `${name} (on B) was not disturbed`,
    );
  }
  assert.equal((await health(nodeB)).connections, CLIENTS, "node B holds every client now");

  const before2 = Date.now();
  const reply = await publish(nodeB, ROOM, "match.update", { score: [2, 0] });
  assert.equal(reply.delivered, true);
  await waitInPage(
    page,
    ({ names, after }) => names.every((n) => window.H.log(n, "room-event").some((e) => e.t >= after && e.data.score[0] === 2)),
    { names, after: before2 },
    { what: "every client got the publish sent to node B" },
  );
  // Still in the room by the server's account: presence lists every user (A's teardown removed
  // its sockets, the re-joins on B added them back).
  const presence = await page.evaluate(({ name, room }) => window.H.presence(name, room), { name: onB[0], room: ROOM });
  assert.equal(presence.ok, true, JSON.stringify(presence));
  assert.deepEqual([...presence.members].sort(), [...names].sort());
});
