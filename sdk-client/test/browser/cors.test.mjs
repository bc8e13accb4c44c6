// Real-browser tests of the notifications API from a page on another origin (CORS): GraphQL list,
// unread count, mark-as-read, live `notification.new`; and that `server.allowed_origins` shuts
// out pages it does not list.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  API_KEY,
  closeAll,
  createNotification,
  launchBrowser,
  openHarness,
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

async function preflight(server, route, origin, headers = "authorization, content-type") {
  const response = await fetch(`${server.httpUrl}${route}`, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": headers,
    },
    signal: AbortSignal.timeout(5_000),
  });
  await response.arrayBuffer();
  return {
    status: response.status,
    allowOrigin: response.headers.get("access-control-allow-origin"),
    allowHeaders: (response.headers.get("access-control-allow-headers") ?? "").toLowerCase(),
    allowMethods: (response.headers.get("access-control-allow-methods") ?? "").toUpperCase(),
  };
}

test("notifications from another origin: list, unreadCount, live notification.new, markRead (CORS)", { timeout: 60_000 }, async (t) => {
  const server = await startServer(); // server.allowed_origins: default, any origin
  t.after(() => server.stop());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));
  assert.notEqual(new URL(statics.origin).port, String(server.port), "the page is on another origin than the server");

  // The browser's preflight, as the page's fetch would send it.
  const graphqlPreflight = await preflight(server, "/graphql", statics.origin);
  assert.ok(graphqlPreflight.status >= 200 && graphqlPreflight.status < 300, `preflight /graphql: ${JSON.stringify(graphqlPreflight)}`);
  assert.ok([statics.origin, "*"].includes(graphqlPreflight.allowOrigin), JSON.stringify(graphqlPreflight));
  assert.ok(graphqlPreflight.allowHeaders.includes("authorization"), JSON.stringify(graphqlPreflight));

  const first = await createNotification(server, { userId: "alice", type: "lesson.completed", content: { lesson: "l1" }, id: "n1" });
  assert.equal(first.id, "n1");

  await page.evaluate(
    ({ url, graphqlUrl }) => window.H.createClient("alice", { url, graphqlUrl, token: { sub: "alice" } }),
    { url: server.wsUrl, graphqlUrl: server.graphqlUrl },
  );
  await waitForLog(page, "alice", "connected");
  await page.evaluate(() => window.H.watchNotifications("alice"));

  const listed = await page.evaluate(() => window.H.notifications("alice", "list", { first: 10 }));
  assert.equal(listed.ok, true, `list() from the page works: ${JSON.stringify(listed)}\n${page.problems.join("\n")}`);
  assert.equal(listed.value.items.length, 1);
  const [n1] = listed.value.items;
  assert.equal(n1.id, "n1");
  assert.equal(n1.type, "lesson.completed");
  assert.deepEqual(n1.content, { lesson: "l1" });
  assert.equal(n1.read, false);
  assert.equal(n1.readAt, null);
  assert.ok(!Number.isNaN(Date.parse(n1.createdAt)), `createdAt is a date: ${n1.createdAt}`);
  assert.equal(listed.value.hasNextPage, false);

  const unread = await page.evaluate(() => window.H.notifications("alice", "unreadCount"));
  assert.deepEqual(unread, { ok: true, value: 1 });

  const sentAt = Date.now();
  await createNotification(server, { userId: "alice", type: "tournament.start", content: { tournament: "t9" }, id: "n2" });
  const [live] = await waitForLog(page, "alice", "notification", { after: sentAt, what: "onNew handler called" });
  assert.equal(live.notification.id, "n2");
  assert.equal(live.notification.type, "tournament.start");
  assert.deepEqual(live.notification.content, { tournament: "t9" });
  const [push] = await waitForLog(page, "alice", "event", { after: sentAt, where: "e.event.event === 'notification.new'" });
  assert.equal(push.event.data.id, "n2");
  assert.equal(push.event.room, undefined, "a user push carries no room");

  const marked = await page.evaluate(() => window.H.notifications("alice", "markRead", "n2"));
  assert.equal(marked.ok, true, JSON.stringify(marked));
  const after = await page.evaluate(() => window.H.notifications("alice", "list", { first: 10 }));
  assert.equal(after.ok, true);
  assert.deepEqual(after.value.items.map((n) => n.id), ["n2", "n1"], "newest first");
  assert.equal(after.value.items[0].read, true);
  assert.ok(after.value.items[0].readAt, "readAt is set");
  assert.equal(after.value.items[1].read, false);
  assert.deepEqual(await page.evaluate(() => window.H.notifications("alice", "unreadCount")), { ok: true, value: 1 });

  const markedAll = await page.evaluate(() => window.H.notifications("alice", "markAllRead"));
  assert.equal(markedAll.ok, true, JSON.stringify(markedAll));
  assert.deepEqual(await page.evaluate(() => window.H.notifications("alice", "unreadCount")), { ok: true, value: 0 });

  const deleted = await page.evaluate(() => window.H.notifications("alice", "delete", "n1"));
  assert.equal(deleted.ok, true, JSON.stringify(deleted));
  const remaining = await page.evaluate(() => window.H.notifications("alice", "list", { first: 10 }));
  assert.deepEqual(remaining.value.items.map((n) => n.id), ["n2"]);

  // /api/* answers pages too (a preflighted POST with X-API-Key).
  const apiPreflight = await preflight(server, "/api/publish", statics.origin, "content-type, x-api-key");
  assert.ok(apiPreflight.status >= 200 && apiPreflight.status < 300, `preflight /api/publish: ${JSON.stringify(apiPreflight)}`);
  assert.ok(apiPreflight.allowHeaders.includes("x-api-key"), JSON.stringify(apiPreflight));
  const fromPage = await page.evaluate(
    async ({ url, key }) => {
      try {
        const response = await fetch(`${url}/api/publish`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-api-key": key },
          body: JSON.stringify({ user: "alice", event: "progress.updated", data: { pct: 50 } }),
        });
        return { status: response.status, body: await response.json() };
      } catch (error) {
        return { error: String(error) };
      }
    },
    { url: server.httpUrl, key: API_KEY },
  );
  assert.equal(fromPage.status, 200, JSON.stringify(fromPage));
  assert.equal(fromPage.body.ok, true);
  await waitForLog(page, "alice", "event", { where: "e.event.event === 'progress.updated'", what: "the page-published user event" });
});

test("server.allowed_origins without the page's origin: the page's GraphQL call fails, a listed origin passes", { timeout: 60_000 }, async (t) => {
  const allowed = "https://app.example.com";
  const server = await startServer({ env: { REALTIME_SERVER__ALLOWED_ORIGINS: JSON.stringify([allowed]) } });
  t.after(() => server.stop());
  const page = await openHarness(browser, statics);
  t.after(() => page.context().close().catch(() => {}));

  const refused = await preflight(server, "/graphql", statics.origin);
  assert.notEqual(refused.allowOrigin, statics.origin, `no CORS grant for an unlisted origin: ${JSON.stringify(refused)}`);
  assert.notEqual(refused.allowOrigin, "*", JSON.stringify(refused));
  const granted = await preflight(server, "/graphql", allowed);
  assert.ok(granted.status >= 200 && granted.status < 300, JSON.stringify(granted));
  assert.equal(granted.allowOrigin, allowed, JSON.stringify(granted));

  await page.evaluate(
    ({ url, graphqlUrl }) => window.H.createClient("alice", { url, graphqlUrl, token: { sub: "alice" }, connect: false }),
    { url: server.wsUrl, graphqlUrl: server.graphqlUrl },
  );
  const listed = await page.evaluate(() => window.H.notifications("alice", "list", { first: 5 }));
  assert.equal(listed.ok, false, `the page's list() must fail: ${JSON.stringify(listed)}`);
  assert.ok(listed.error.code, `the failure carries a code: ${JSON.stringify(listed.error)}`);

  // Without an Origin (a service) the same request is not checked.
  const token = await (await fetch(`${statics.origin}/token?sub=alice`)).text();
  const direct = await fetch(server.graphqlUrl, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: "{ unreadNotificationCount }" }),
    signal: AbortSignal.timeout(5_000),
  });
  assert.equal(direct.status, 200);
  assert.deepEqual(await direct.json(), { data: { unreadNotificationCount: 0 } });
});
