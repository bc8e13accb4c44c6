// Real-browser test of the example page (examples/web/): it connects, shows presence and the last
// score (from the room's history), survives a killed and restarted server, shows a published
// score and a live notification, marks it read, and renders (screenshot).

import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import {
  closeAll,
  createNotification,
  launchBrowser,
  mintToken,
  publish,
  startServer,
  startStaticServer,
  withTimeout,
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

async function text(page, selector) {
  return (await page.textContent(selector, { timeout: 2_000 }))?.trim();
}

async function waitText(page, selector, expected, timeoutMs = 15_000) {
  try {
    await page.waitForFunction(
      ({ selector, expected }) => document.querySelector(selector)?.textContent.trim() === expected,
      { selector, expected },
      { timeout: timeoutMs, polling: 50 },
    );
  } catch (error) {
    const log = await page.textContent("#log").catch(() => "(no log)");
    throw new Error(
      `${selector} never showed ${JSON.stringify(expected)} (shows ${JSON.stringify(await text(page, selector).catch(() => null))})\n` +
        `page log:\n${log}\nproblems: ${JSON.stringify(page.problems)}\n${error.message.split("\n")[0]}`,
    );
  }
}

test("the example page shows state, score, presence and notifications, across a server restart", { timeout: 90_000 }, async (t) => {
  let server = await startServer();
  t.after(() => server.stop());
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  t.after(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`pageerror: ${error.message}`));

  // A score from before the page opened: the page reads it from the room's history on join.
  await publish(server, ROOM, "match.update", { score: [0, 1] });
  const token = mintToken({ sub: "alice", rooms: ["competition:*"] });
  const query = new URLSearchParams({ server: server.httpUrl, token, room: ROOM });
  await page.goto(`${statics.origin}/examples/web/index.html?${query}`, { timeout: 15_000 });

  await waitText(page, "#state", "connected");
  assert.equal(await page.getAttribute("#state", "data-state"), "connected");
  assert.equal(await text(page, "#node"), server.nodeId);
  assert.equal(await text(page, "#user"), "alice");
  assert.equal(await text(page, "#room-id"), ROOM);
  await page.waitForSelector('#presence li[data-user="alice"]', { timeout: 10_000 });
  await waitText(page, "#score", "0 : 1");
  await publish(server, ROOM, "match.update", { score: [1, 0] });
  await waitText(page, "#score", "1 : 0");

  // kill -9 and restart on the same port; the page must come back by itself.
  const port = server.port;
  await server.kill("SIGKILL");
  await page.waitForFunction(() => document.querySelector("#state").dataset.state !== "connected", null, { timeout: 5_000 });
  server = await startServer({ port, nodeId: server.nodeId });
  t.after(() => server.stop());
  await waitText(page, "#state", "connected", 20_000);
  // Presence comes from the restarted server (the SDK re-joined the room).
  await page.waitForSelector('#presence li[data-user="alice"]', { timeout: 10_000 });

  await publish(server, ROOM, "match.update", { score: [3, 2] });
  await waitText(page, "#score", "3 : 2");
  assert.equal(await page.getAttribute("#score", "data-score"), "3:2");

  // A notification created now (the restarted server's database is new) arrives live.
  await createNotification(server, { userId: "alice", type: "lesson.completed", content: { lesson: "Fractions" }, id: "n1" });
  await createNotification(server, { userId: "alice", type: "tournament.start", content: { tournament: "Spring cup" }, id: "n2" });
  await page.waitForSelector('#notifications li[data-id="n2"]', { timeout: 10_000 });
  await page.waitForSelector('#notifications li[data-id="n1"]', { timeout: 10_000 });
  await waitText(page, "#unread", "2");
  await page.click('#notifications li[data-id="n1"] button.mark-read');
  await page.waitForSelector('#notifications li[data-id="n1"][data-read="true"]', { timeout: 10_000 });
  await waitText(page, "#unread", "1");

  const shot = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "realtime-example-")), "example.png");
  await withTimeout(page.screenshot({ path: shot, fullPage: true }), 15_000, "screenshot");
  const png = await fs.readFile(shot);
  assert.ok(png.length > 5_000, `the screenshot has content (${png.length} bytes)`);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "it is a PNG");
  t.diagnostic(`screenshot: ${shot}`);

  // The DOM at the end.
  assert.equal(await text(page, "#state"), "connected");
  assert.equal(await text(page, "#score"), "3 : 2");
  const members = await page.$$eval("#presence li", (items) => items.map((item) => item.dataset.user));
  assert.ok(members.includes("alice"), `presence lists alice: ${members}`);
  const listed = await page.$$eval("#notifications li", (items) =>
    items.map((item) => ({ id: item.dataset.id, read: item.dataset.read, type: item.querySelector(".type").textContent })),
  );
  assert.deepEqual(listed, [
    { id: "n2", read: "false", type: "tournament.start" },
    { id: "n1", read: "true", type: "lesson.completed" },
  ]);
  assert.equal(await page.isDisabled('#notifications li[data-id="n1"] button.mark-read'), true);
  assert.equal(await page.isDisabled('#notifications li[data-id="n2"] button.mark-read'), false);
  assert.equal(await text(page, "#last-error"), "");
  assert.deepEqual(page.problems, [], "no page errors");
});
