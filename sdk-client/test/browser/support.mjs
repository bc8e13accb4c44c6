// Shared support for the real-browser end-to-end tests (node:test + playwright-core + Chromium):
// the realtime server launcher, token minting, a TCP load balancer and a freezable TCP proxy, the
// static server that serves the test pages and the built SDK (another origin than the realtime
// server, so CORS is exercised), and the browser launch.
//
// Environment overrides: REALTIME_BIN (server binary), CHROMIUM_PATH (browser),
// REALTIME_TEST_REDIS (redis://127.0.0.1:6379), REALTIME_TEST_NATS (nats://127.0.0.1:4222).

import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const SDK_ROOT = path.resolve(here, "..", "..");
export const REPO_ROOT = path.resolve(SDK_ROOT, "..");
export const DIST_DIR = process.env.SDK_DIST_DIR ? path.resolve(process.env.SDK_DIST_DIR) : path.join(SDK_ROOT, "dist");
export const FIXTURES_DIR = path.join(here, "fixtures");
export const EXAMPLE_DIR = path.join(REPO_ROOT, "examples", "web");
export const SERVER_BIN = process.env.REALTIME_BIN || path.join(REPO_ROOT, "target", "debug", "realtime");
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const REDIS_URL = process.env.REALTIME_TEST_REDIS || "redis://127.0.0.1:6379";
export const NATS_URL = process.env.REALTIME_TEST_NATS || "nats://127.0.0.1:4222";
export const DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef";
export const API_KEY = "k";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `promise`, or rejects after `ms` with `what` in the message. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** Polls `check` (sync or async) until it returns a truthy value; throws after `timeoutMs`. */
export async function until(check, { timeoutMs = 10_000, intervalMs = 25, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      if (error && error.fatal) throw error;
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
    }
    await sleep(intervalMs);
  }
}

/** A TCP port that was free a moment ago (listen on 0, then close). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const randomHex = (bytes = 4) => crypto.randomBytes(bytes).toString("hex");

// ---------------------------------------------------------------------------------------------
// Tokens

const b64url = (value) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/**
 * An HS256 JWT. `ttlSecs` from now (default 1 h); `rooms` becomes the `rooms` claim; `secret`
 * defaults to the server's development secret (pass another one for a wrongly signed token).
 */
export function mintToken({ sub, ttlSecs = 3600, rooms, secret = DEV_SECRET, claims = {} } = {}) {
  if (!sub) throw new Error("mintToken needs a sub");
  const now = Math.floor(Date.now() / 1000);
  const payload = { sub, iat: now, exp: now + ttlSecs, ...claims };
  if (rooms) payload.rooms = rooms;
  const signingInput = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(payload)}`;
  const signature = crypto.createHmac("sha256", secret).update(signingInput).digest("base64url");
  return `${signingInput}.${signature}`;
}

/** The payload of a JWT, unverified. */
export function decodeToken(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));
}

// ---------------------------------------------------------------------------------------------
// The realtime server

/** Fresh key and subject prefixes on the shared Redis and NATS, for one test's cluster. */
export function clusterEnv() {
  const id = randomHex(5);
  return {
    REALTIME_REDIS__URL: REDIS_URL,
    REALTIME_NATS__URL: NATS_URL,
    REALTIME_REDIS__KEY_PREFIX: `t-${id}:`,
    REALTIME_NATS__SUBJECT_PREFIX: `t${id}`,
  };
}

async function httpStatus(url, timeoutMs = 500) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const body = await response.text();
    return { status: response.status, body };
  } catch {
    return null;
  }
}

/** Every server process started here and not yet exited: killed if this process exits first. */
const liveChildren = new Set();
function killLiveChildren() {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killLiveChildren);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    killLiveChildren();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

/**
 * Starts `target/debug/realtime` on 127.0.0.1:`port` (a free one when not given) and waits until
 * `/health` answers. `env` adds to or overrides the defaults below. Returns a handle whose
 * `kill(signal)` signals the process and resolves once it has exited.
 */
export async function startServer({ port, nodeId, env = {}, readyTimeoutMs = 30_000 } = {}) {
  if (!fs.existsSync(SERVER_BIN)) {
    throw new Error(`server binary ${SERVER_BIN} is missing: build it first (cargo build)`);
  }
  port ??= await freePort();
  nodeId ??= `node-${randomHex(3)}`;
  const cwd = await fsp.mkdtemp(path.join(os.tmpdir(), "realtime-e2e-"));
  const childEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    REALTIME_SERVER__LISTEN: `127.0.0.1:${port}`,
    REALTIME_SERVER__NODE_ID: nodeId,
    REALTIME_API__KEY: API_KEY,
    REALTIME_DATABASE__URL: "sqlite::memory:",
    REALTIME_LOG__LEVEL: "warn",
    REALTIME_PRESENCE__HEARTBEAT_INTERVAL_SECS: "1",
    REALTIME_PRESENCE__TTL_SECS: "4",
    REALTIME_SERVER__SHUTDOWN_GRACE_SECS: "2",
    // SIGTERM drains: sockets are closed with 1012 spread over this window (default 10 s).
    REALTIME_SERVER__DRAIN_WINDOW_SECS: "1",
    REALTIME_AUTH__LEEWAY_SECS: "0",
    ...env,
  };
  const spawnedAt = Date.now();
  const child = spawn(SERVER_BIN, [], { cwd, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  liveChildren.add(child);
  let output = "";
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      liveChildren.delete(child);
      exitInfo = { code, signal, at: Date.now() };
      resolve(exitInfo);
    });
  });
  const handle = {
    port,
    nodeId,
    pid: child.pid,
    httpUrl: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    graphqlUrl: `http://127.0.0.1:${port}/graphql`,
    spawnedAt,
    readyAt: null,
    child,
    exited,
    output: () => output,
    get running() {
      return exitInfo === null;
    },
    /** Sends `signal` and waits (bounded) for the exit; SIGKILL after `timeoutMs`. */
    async kill(signal = "SIGKILL", timeoutMs = 10_000) {
      if (exitInfo) return exitInfo;
      child.kill(signal);
      try {
        return await withTimeout(exited, timeoutMs, `server ${nodeId} exiting on ${signal}`);
      } catch (error) {
        child.kill("SIGKILL");
        await withTimeout(exited, 5_000, `server ${nodeId} exiting on SIGKILL`);
        throw error;
      }
    },
    async stop() {
      await handle.kill("SIGKILL").catch(() => {});
      await fsp.rm(cwd, { recursive: true, force: true }).catch(() => {});
    },
  };
  try {
    await until(
      async () => {
        if (exitInfo) {
          throw Object.assign(new Error("exited"), { fatal: true });
        }
        const health = await httpStatus(`${handle.httpUrl}/health`, 400);
        return health && health.status === 200 ? health : null;
      },
      { timeoutMs: readyTimeoutMs, intervalMs: 20, what: `server ${nodeId} on port ${port} to answer /health` },
    );
  } catch (error) {
    await handle.stop();
    throw new Error(
      `server ${nodeId} did not start (${exitInfo ? `exit ${exitInfo.code} ${exitInfo.signal}` : error.message}):\n${output.slice(-4000)}`,
    );
  }
  handle.readyAt = Date.now();
  return handle;
}

/** GET /health of a server (null when it does not answer). */
export async function health(server) {
  const result = await httpStatus(`${server.httpUrl}/health`, 1_000);
  return result && result.status === 200 ? JSON.parse(result.body) : null;
}

async function apiPost(server, route, body) {
  const response = await fetch(`${server.httpUrl}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": API_KEY },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5_000),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = { raw: text };
  }
  if (!response.ok) {
    throw new Error(`POST ${route} -> ${response.status}: ${text}`);
  }
  return json;
}

/** POST /api/publish into a room; returns the reply (`{ok, delivered}`). */
export function publish(server, room, event, data) {
  return apiPost(server, "/api/publish", { room, event, data });
}

/** POST /api/notifications; returns the stored notification. */
export function createNotification(server, { userId, type, content, id }) {
  return apiPost(server, "/api/notifications", id ? { userId, type, content, id } : { userId, type, content });
}

/**
 * Deletes the JetStream stream a test cluster created on the shared NATS (the server creates
 * `<PREFIX>_NOTIFICATIONS`, file storage, for each subject prefix). Best effort, bounded;
 * resolves true when NATS confirmed the deletion.
 */
export async function deleteNatsStream(subjectPrefix, natsUrl = NATS_URL) {
  const streamName = `${subjectPrefix.toUpperCase().replace(/[.-]/g, "_")}_NOTIFICATIONS`;
  const { hostname, port } = new URL(natsUrl);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port) || 4222, hostname);
    const inbox = `_INBOX.e2e${randomHex(6)}`;
    let buffer = "";
    const done = (result) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done(false), 3_000);
    socket.on("error", () => done(false));
    socket.on("data", (chunk) => {
      buffer += chunk.toString();
      if (buffer.startsWith("INFO") && !socket.sentConnect) {
        socket.sentConnect = true;
        socket.write(
          `CONNECT {"verbose":false,"pedantic":false,"lang":"node","version":"0","protocol":1}\r\n` +
            `SUB ${inbox} 1\r\nPUB $JS.API.STREAM.DELETE.${streamName} ${inbox} 0\r\n\r\n`,
        );
      }
      if (buffer.includes("PING\r\n")) {
        buffer = buffer.replace("PING\r\n", "");
        socket.write("PONG\r\n");
      }
      const header = buffer.match(/MSG \S+ \d+ (\d+)\r\n/);
      if (header) {
        const payload = buffer.slice(header.index + header[0].length);
        if (payload.length >= Number(header[1])) done(payload.includes('"success":true'));
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// TCP load balancer and freezable proxy

/**
 * A TCP load balancer: each new connection goes to the next live backend, round-robin among the
 * live ones. A backend is live while its readiness probe `/ready` answers 200 (checked every
 * `checkEveryMs`; a draining node answers 503 at once) and a connect to it does not fail; a
 * failed connect tries the next live backend.
 * `backends`: [{ port, name }]. `connections` lists [{ at, backend }] for each forwarded
 * connection ("none" when no backend took it).
 */
export async function startLoadBalancer(backends, { checkEveryMs = 100 } = {}) {
  const state = backends.map((backend) => ({ ...backend, live: true }));
  const connections = [];
  const sockets = new Set();
  let next = 0;
  let stopped = false;

  const check = async () => {
    await Promise.all(
      state.map(async (backend) => {
        const result = await httpStatus(`http://127.0.0.1:${backend.port}/ready`, 300);
        backend.live = Boolean(result && result.status === 200);
      }),
    );
  };
  await check();
  const loop = (async () => {
    while (!stopped) {
      await sleep(checkEveryMs);
      if (!stopped) await check();
    }
  })();

  const server = net.createServer((client) => {
    client.pause();
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => {});
    const live = state.filter((backend) => backend.live);
    const order = live.length ? live : state;
    const start = next++ % order.length;
    const candidates = [...order.slice(start), ...order.slice(0, start)];
    const attempt = (index) => {
      if (index >= candidates.length || client.destroyed) {
        connections.push({ at: Date.now(), backend: "none" });
        client.destroy();
        return;
      }
      const backend = candidates[index];
      const upstream = net.connect(backend.port, "127.0.0.1");
      sockets.add(upstream);
      upstream.on("close", () => sockets.delete(upstream));
      upstream.once("error", () => {
        if (!upstream.connected) {
          backend.live = false;
          attempt(index + 1);
        }
      });
      upstream.once("connect", () => {
        upstream.connected = true;
        upstream.setNoDelay(true);
        client.setNoDelay(true);
        connections.push({ at: Date.now(), backend: backend.name ?? String(backend.port) });
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    backends: state,
    connections,
    async close() {
      stopped = true;
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
      await withTimeout(loop, 2_000, "load balancer health loop").catch(() => {});
    },
  };
}

/**
 * A TCP proxy to 127.0.0.1:`targetPort` that counts connection attempts and can freeze the
 * connections it holds: `freeze()` stops forwarding in both directions on every current
 * connection without closing anything (a half-open path: no FIN, no RST, bytes vanish); new
 * connections are forwarded normally. `refuseNew(true)` makes new connections fail at once.
 */
export async function startProxy(targetPort) {
  const links = new Set();
  const attempts = [];
  let refusing = false;
  const server = net.createServer((client) => {
    attempts.push(Date.now());
    if (refusing) {
      client.destroy();
      return;
    }
    const link = { client, upstream: net.connect(targetPort, "127.0.0.1"), frozen: false, openedAt: Date.now() };
    links.add(link);
    const { upstream } = link;
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on("data", (data) => {
      if (!link.frozen) upstream.write(data);
    });
    upstream.on("data", (data) => {
      if (!link.frozen) client.write(data);
    });
    const end = () => {
      if (link.frozen) return; // a frozen path passes nothing on, not even its end
      client.destroy();
      upstream.destroy();
      links.delete(link);
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    attempts,
    links,
    /** Freezes every connection currently held; returns how many. */
    freeze() {
      let count = 0;
      for (const link of links) {
        if (!link.frozen) {
          link.frozen = true;
          count++;
        }
      }
      return count;
    },
    liveLinks() {
      return [...links].filter((link) => !link.frozen && !link.client.destroyed).length;
    },
    refuseNew(value) {
      refusing = value;
    },
    async close() {
      for (const link of links) {
        link.client.destroy();
        link.upstream.destroy();
      }
      links.clear();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Static server for the pages and the built SDK

const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
};

/** Maps URL prefixes to directories. */
const MOUNTS = [
  ["/sdk/", DIST_DIR],
  ["/sdk-client/dist/", DIST_DIR],
  ["/examples/web/", EXAMPLE_DIR],
  ["/fixtures/", FIXTURES_DIR],
];

/**
 * Serves the built SDK (`/sdk/`, also `/sdk-client/dist/` as the example imports it), the
 * example (`/examples/web/`), the test fixtures (`/fixtures/`), and `/token?sub=..&ttl=..&rooms=a,b&bad=1`
 * (a freshly minted token; `bad=1` signs it with a wrong secret). Each `/token` call is recorded in
 * `tokens` ({ at, sub, exp, bad }).
 */
export async function startStaticServer() {
  if (!fs.existsSync(path.join(DIST_DIR, "realtime-client.js"))) {
    throw new Error(`${path.join(DIST_DIR, "realtime-client.js")} is missing: build the SDK first (npm run build)`);
  }
  const tokens = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname === "/token") {
      const sub = url.searchParams.get("sub");
      const ttlSecs = Number(url.searchParams.get("ttl") || 3600);
      const rooms = url.searchParams.get("rooms") ? url.searchParams.get("rooms").split(",") : undefined;
      const bad = url.searchParams.get("bad") === "1";
      const token = mintToken({ sub, ttlSecs, rooms, secret: bad ? "a-wrong-secret-0123456789abcdef-0123456789" : DEV_SECRET });
      tokens.push({ at: Date.now(), sub, exp: decodeToken(token).exp, bad });
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" });
      res.end(token);
      return;
    }
    if (url.pathname === "/" || url.pathname === "/favicon.ico") {
      res.writeHead(url.pathname === "/" ? 200 : 204, { "content-type": "text/html" });
      res.end(url.pathname === "/" ? "<!doctype html><title>e2e</title>" : undefined);
      return;
    }
    const mount = MOUNTS.find(([prefix]) => url.pathname.startsWith(prefix));
    if (!mount) {
      res.writeHead(404).end("not found");
      return;
    }
    let relative = decodeURIComponent(url.pathname.slice(mount[0].length));
    if (relative === "" || relative.endsWith("/")) relative += "index.html";
    const file = path.resolve(mount[1], relative);
    if (!file.startsWith(mount[1] + path.sep)) {
      res.writeHead(403).end("forbidden");
      return;
    }
    try {
      const body = await fsp.readFile(file);
      res.writeHead(200, {
        "content-type": CONTENT_TYPES[path.extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    tokens,
    tokenUrl: (params) => `/token?${new URLSearchParams(params)}`,
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Browser

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--headless",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
}

/**
 * A page on the static server's harness (`fixtures/harness.html`): it tracks every WebSocket the
 * page creates and exposes the SDK and helpers as `window.H` (see fixtures/harness.js).
 * Console errors and page errors are collected in `page.problems`.
 */
export async function openHarness(browser, statics, { path: pagePath = "/fixtures/harness.html" } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") page.problems.push(`console: ${message.text()}`);
  });
  page.setDefaultTimeout(15_000);
  await page.goto(`${statics.origin}${pagePath}`, { timeout: 15_000 });
  if (pagePath.startsWith("/fixtures/harness")) {
    await page.waitForFunction(() => window.H && (window.H.ready || window.H.loadError), null, { timeout: 15_000 });
    const loadError = await page.evaluate(() => window.H.loadError);
    if (loadError) throw new Error(`harness failed to load the SDK: ${loadError}`);
  }
  return page;
}

/**
 * Waits (bounded) until `fn(arg)` is truthy in the page; on timeout the error carries `dump()`'s
 * result (by default the harness logs) so a failure says what the page saw.
 */
export async function waitInPage(page, fn, arg, { timeoutMs = 10_000, what = "condition", dump } = {}) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 25 });
    return await handle.jsonValue();
  } catch (error) {
    let detail = "";
    try {
      detail = dump ? await dump() : await page.evaluate(() => window.H?.summary?.());
    } catch (dumpError) {
      detail = `(no dump: ${dumpError.message})`;
    }
    throw new Error(
      `timed out after ${timeoutMs} ms waiting for ${what}: ${error.message.split("\n")[0]}\n` +
        `page saw: ${typeof detail === "string" ? detail : JSON.stringify(detail, null, 1)}\n` +
        `page problems: ${JSON.stringify(page.problems)}`,
    );
  }
}

/** Closes whatever is given (servers, proxies, browsers), ignoring failures, bounded. */
export async function closeAll(...things) {
  for (const thing of things.flat()) {
    if (!thing) continue;
    const close = thing.stop ?? thing.close;
    if (!close) continue;
    await withTimeout(Promise.resolve().then(() => close.call(thing)), 15_000, "closing").catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Harness helpers (the page must be a harness page: window.H)

/**
 * Waits until client `name`'s log holds `count` entries of `kind` at or after `after` (ms since
 * the epoch) for which the JS expression `where` (over `e`, the entry) is true; returns them.
 */
export function waitForLog(page, name, kind, { after = 0, count = 1, where = "true", timeoutMs = 10_000, what } = {}) {
  return waitInPage(
    page,
    ({ name, kind, after, count, where }) => {
      const test = new Function("e", `return (${where});`);
      const found = window.H.log(name, kind).filter((e) => e.t >= after && test(e));
      return found.length >= count ? found : null;
    },
    { name, kind, after, count, where },
    { timeoutMs, what: what ?? `${name}: ${count} x ${kind} where ${where}` },
  );
}

/** Waits until client `name` is in `state`. */
export function waitForState(page, name, state, { timeoutMs = 10_000 } = {}) {
  return waitInPage(page, ({ name, state }) => window.H.state(name) === state, { name, state }, {
    timeoutMs,
    what: `${name} to be ${state}`,
  });
}

/** Client `name`'s log (optionally of one kind). */
export function clientLog(page, name, kind) {
  return page.evaluate(({ name, kind }) => window.H.log(name, kind), { name, kind });
}
