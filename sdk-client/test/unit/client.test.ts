// RealtimeClient against a fake WebSocket under fake timers: states, the
// close-code policy, backoff, tokens and refresh, heartbeats, requests, and
// browser online/offline handling.

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  RealtimeClient,
  RealtimeError,
  type ConnectionState,
  type DisconnectedInfo,
  type RealtimeClientOptions,
} from "../../src/index.js";
import { FakeWebSocket } from "./fake-websocket.js";

const URL_OPTION = "ws://127.0.0.1:8080/ws";

function makeClient(options: Partial<RealtimeClientOptions> = {}) {
  let issued = 0;
  const getToken = vi.fn(async () => `token-${++issued}`);
  const client = new RealtimeClient({
    url: URL_OPTION,
    getToken,
    WebSocket: FakeWebSocket,
    // 0.5: every full-jitter delay is exactly half its window, so timings are exact.
    random: () => 0.5,
    ...options,
  });
  const disconnects: DisconnectedInfo[] = [];
  const errors: RealtimeError[] = [];
  const states: ConnectionState[] = [];
  client.on("disconnected", (info) => disconnects.push(info));
  client.on("error", (error) => errors.push(error));
  client.on("state", (state) => states.push(state));
  return { client, getToken, disconnects, errors, states };
}

/** Lets getToken() resolve and the socket be created. */
async function settle(): Promise<void> {
  await vi.advanceTimersByTimeAsync(0);
}

async function connectedClient(options: Partial<RealtimeClientOptions> = {}, frame: Record<string, unknown> = {}) {
  const harness = makeClient(options);
  harness.client.connect();
  await settle();
  FakeWebSocket.latest().serverConnected(frame);
  return harness;
}

/** Closes the current socket from the server side and returns the reported reconnect delay. */
function serverCloses(harness: ReturnType<typeof makeClient>, code: number): number | undefined {
  FakeWebSocket.latest().serverClose(code);
  return harness.disconnects[harness.disconnects.length - 1]?.delayMs;
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date("2026-12-05T00:00:00Z"));
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("connecting", () => {
  it("starts disconnected, goes connecting -> connected -> reconnecting -> connected", async () => {
    const harness = makeClient();
    expect(harness.client.state).toBe("disconnected");
    const connectedInfos: boolean[] = [];
    harness.client.on("connected", (info) => connectedInfos.push(info.reconnected));
    harness.client.connect();
    expect(harness.client.state).toBe("connecting");
    await settle();
    FakeWebSocket.latest().serverConnected();
    expect(harness.client.state).toBe("connected");
    serverCloses(harness, 1006);
    expect(harness.client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.latest().serverConnected();
    expect(harness.states).toEqual(["connecting", "connected", "reconnecting", "connected"]);
    expect(connectedInfos).toEqual([false, true]);
  });

  it("connect() is idempotent: one socket for several calls", async () => {
    const harness = makeClient();
    harness.client.connect();
    harness.client.connect();
    await settle();
    harness.client.connect();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("puts the token and refusal=close in the URL", async () => {
    await connectedClient();
    const url = new URL(FakeWebSocket.latest().url);
    expect(url.origin + url.pathname).toBe(URL_OPTION);
    expect(url.searchParams.get("token")).toBe("token-1");
    expect(url.searchParams.get("refusal")).toBe("close");
  });

  it("calls getToken() for every connect and reconnect, and uses its new token", async () => {
    const harness = await connectedClient();
    serverCloses(harness, 1000);
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.latest().serverConnected();
    serverCloses(harness, 1006);
    await vi.advanceTimersByTimeAsync(500);
    expect(harness.getToken).toHaveBeenCalledTimes(3);
    expect(FakeWebSocket.instances.map((socket) => socket.token)).toEqual(["token-1", "token-2", "token-3"]);
  });

  it("calls a url function before every attempt", async () => {
    const urls = ["ws://a.example/ws", "ws://b.example/ws"];
    const harness = await connectedClient({ url: () => urls.shift() ?? "ws://c.example/ws" });
    serverCloses(harness, 1006);
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances.map((socket) => new URL(socket.url).host)).toEqual(["a.example", "b.example"]);
  });

  it("reports the connected frame as ConnectedInfo", async () => {
    const harness = makeClient();
    const infos: unknown[] = [];
    harness.client.on("connected", (info) => infos.push(info));
    harness.client.connect();
    await settle();
    FakeWebSocket.latest().serverConnected({ socket_id: "s1", user_id: "bob", node: "n1", heartbeat_interval_ms: 15_000, expires_at: 1_795_645_427 });
    expect(infos).toEqual([
      { socketId: "s1", userId: "bob", node: "n1", heartbeatIntervalMs: 15_000, expiresAt: 1_795_645_427, reconnected: false },
    ]);
  });

  it("throws a clear error when there is no WebSocket implementation", () => {
    vi.stubGlobal("WebSocket", undefined);
    const client = new RealtimeClient({ url: URL_OPTION, getToken: async () => "t" });
    expect(() => client.connect()).toThrow(/No WebSocket implementation/);
  });

  it("abandons a socket that never sends `connected` within requestTimeoutMs", async () => {
    const harness = makeClient();
    harness.client.connect();
    await settle();
    const silent = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(9_999);
    expect(harness.client.state).toBe("connecting");
    await vi.advanceTimersByTimeAsync(1);
    expect(silent.closedByClient?.code).toBe(4000);
    expect(harness.client.state).toBe("reconnecting");
    expect(harness.disconnects[0]).toMatchObject({ code: 1006, willReconnect: true, delayMs: 250 });
  });

  it("retries with backoff when getToken() throws, and reports it", async () => {
    const getToken = vi.fn<() => Promise<string>>().mockRejectedValueOnce(new Error("auth server down")).mockResolvedValue("ok");
    const harness = makeClient({ getToken });
    harness.client.connect();
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(harness.errors[0]?.code).toBe("network");
    expect(harness.client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.latest().token).toBe("ok");
  });
});

describe("close codes", () => {
  it("1000 normal: reconnects after a full-jitter backoff", async () => {
    const harness = await connectedClient();
    expect(serverCloses(harness, 1000)).toBe(250);
    expect(harness.disconnects[0]).toEqual({ code: 1000, reason: "", willReconnect: true, delayMs: 250 });
    await vi.advanceTimersByTimeAsync(249);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("1006 abnormal: backoff window doubles per failed attempt and caps at maxDelayMs", async () => {
    const harness = await connectedClient();
    const delays: Array<number | undefined> = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      delays.push(serverCloses(harness, 1006));
      await vi.advanceTimersByTimeAsync(delays[delays.length - 1] ?? 0);
    }
    expect(delays).toEqual([250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    expect(FakeWebSocket.instances).toHaveLength(9);
  });

  it("resets the backoff only after a connection stayed up stableAfterMs", async () => {
    const harness = await connectedClient({}, { heartbeat_interval_ms: 0 });
    expect(serverCloses(harness, 1006)).toBe(250);
    await vi.advanceTimersByTimeAsync(250);
    // Accepted and dropped at once: the window keeps growing.
    FakeWebSocket.latest().serverConnected({ heartbeat_interval_ms: 0 });
    expect(serverCloses(harness, 1006)).toBe(500);
    await vi.advanceTimersByTimeAsync(500);
    FakeWebSocket.latest().serverConnected({ heartbeat_interval_ms: 0 });
    await vi.advanceTimersByTimeAsync(9_999);
    expect(serverCloses(harness, 1006)).toBe(1000);
    await vi.advanceTimersByTimeAsync(1000);
    FakeWebSocket.latest().serverConnected({ heartbeat_interval_ms: 0 });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(serverCloses(harness, 1006)).toBe(250);
  });

  it("4002 slow_consumer: reconnects with backoff", async () => {
    const harness = await connectedClient();
    expect(serverCloses(harness, 4002)).toBe(250);
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(harness.client.state).toBe("reconnecting");
  });

  it("4003 rate_limited: waits at least rateLimitedMinDelayMs", async () => {
    const harness = await connectedClient({ random: () => 0 });
    expect(serverCloses(harness, 4003)).toBe(5000);
    await vi.advanceTimersByTimeAsync(4999);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("4003 floor is configurable and the jitter comes on top", async () => {
    const harness = await connectedClient({ rateLimitedMinDelayMs: 8000 });
    expect(serverCloses(harness, 4003)).toBe(8250);
  });

  it("1012 server_restart: reconnects after a uniform delay in [0, restartJitterMs], whatever the backoff", async () => {
    const random = vi.fn(() => 0.5);
    const harness = await connectedClient({ random });
    expect(serverCloses(harness, 1012)).toBe(750);
    random.mockReturnValue(0.999);
    await vi.advanceTimersByTimeAsync(750);
    // Several failures later (big backoff window), a restart still waits at most restartJitterMs.
    for (let index = 0; index < 5; index++) {
      const delay = serverCloses(harness, 1006) ?? 0;
      await vi.advanceTimersByTimeAsync(delay);
    }
    FakeWebSocket.latest().serverConnected();
    expect(serverCloses(harness, 1012)).toBe(1498);
    random.mockReturnValue(0);
    await vi.advanceTimersByTimeAsync(1498);
    FakeWebSocket.latest().serverConnected();
    expect(serverCloses(harness, 1012)).toBe(0);
  });

  it("4500 unsupported_data: stops, state closed, typed error, no reconnect", async () => {
    const harness = await connectedClient();
    FakeWebSocket.latest().serverClose(4500, "unsupported_data");
    expect(harness.client.state).toBe("closed");
    expect(harness.disconnects[0]).toEqual({ code: 4500, reason: "unsupported_data", willReconnect: false });
    expect(harness.errors).toHaveLength(1);
    expect(harness.errors[0]).toBeInstanceOf(RealtimeError);
    expect(harness.errors[0]).toMatchObject({ code: "closed", closeCode: 4500 });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("1009 message_too_big: stops with frame_too_large", async () => {
    const harness = await connectedClient();
    serverCloses(harness, 1009);
    expect(harness.client.state).toBe("closed");
    expect(harness.errors[0]).toMatchObject({ code: "frame_too_large", closeCode: 1009 });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("4502 origin_forbidden before connected: stops with origin_forbidden", async () => {
    const harness = makeClient();
    harness.client.connect();
    await settle();
    FakeWebSocket.latest().serverClose(4502);
    expect(harness.client.state).toBe("closed");
    expect(harness.errors[0]).toMatchObject({ code: "origin_forbidden", closeCode: 4502 });
  });

  it("4501 invalid_token: fetches a new token and retries once at once, then stops with an auth error", async () => {
    const harness = makeClient();
    harness.client.connect();
    await settle();
    FakeWebSocket.latest().serverClose(4501, "token has expired");
    expect(harness.disconnects[0]).toMatchObject({ code: 4501, willReconnect: true, delayMs: 0 });
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.latest().token).toBe("token-2");
    FakeWebSocket.latest().serverClose(4501, "token has expired");
    expect(harness.client.state).toBe("closed");
    expect(harness.errors).toHaveLength(1);
    expect(harness.errors[0]).toMatchObject({ code: "invalid_token", closeCode: 4501 });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(harness.getToken).toHaveBeenCalledTimes(2);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("4501 retry budget comes back after a successful connect", async () => {
    const harness = makeClient();
    harness.client.connect();
    await settle();
    FakeWebSocket.latest().serverClose(4501);
    await settle();
    FakeWebSocket.latest().serverConnected();
    serverCloses(harness, 1006);
    await vi.advanceTimersByTimeAsync(250);
    FakeWebSocket.latest().serverClose(4501);
    expect(harness.client.state).toBe("reconnecting");
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(4);
  });

  it("4001 token_expired: reconnects with a freshly fetched token", async () => {
    const harness = await connectedClient();
    expect(serverCloses(harness, 4001)).toBe(250);
    await vi.advanceTimersByTimeAsync(250);
    expect(harness.getToken).toHaveBeenCalledTimes(2);
    expect(FakeWebSocket.latest().token).toBe("token-2");
  });

  it("4008 disconnected_by_server: reconnects with backoff and a fresh token", async () => {
    const harness = await connectedClient();
    expect(serverCloses(harness, 4008)).toBe(250);
    expect(harness.disconnects[0]).toMatchObject({ code: 4008, willReconnect: true });
    expect(harness.client.state).toBe("reconnecting");
    expect(harness.errors).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.latest().token).toBe("token-2");
  });

  it("4503 access_revoked: stops, state closed, error closed with closeCode 4503, no reconnect", async () => {
    const harness = await connectedClient();
    FakeWebSocket.latest().serverClose(4503, "access_revoked");
    expect(harness.client.state).toBe("closed");
    expect(harness.disconnects[0]).toEqual({ code: 4503, reason: "access_revoked", willReconnect: false });
    expect(harness.errors).toHaveLength(1);
    expect(harness.errors[0]).toMatchObject({ code: "closed", closeCode: 4503 });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(harness.getToken).toHaveBeenCalledTimes(1);
  });

  it("4006 node_full during the handshake: backoff", async () => {
    const harness = makeClient();
    harness.client.connect();
    await settle();
    expect(serverCloses(harness, 4006)).toBe(250);
    expect(harness.client.state).toBe("reconnecting");
  });
});

describe("close()", () => {
  it("is final: state closed, no reconnect, pending rejected with closed, socket closed with 1000", async () => {
    const harness = await connectedClient();
    const socket = FakeWebSocket.latest();
    const pending = harness.client.request("presence", { room: "chat:a" });
    harness.client.close();
    await expect(pending).rejects.toMatchObject({ code: "closed" });
    expect(harness.client.state).toBe("closed");
    expect(socket.closedByClient?.code).toBe(1000);
    socket.serverClose(1006);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await expect(harness.client.request("presence", { room: "chat:a" })).rejects.toMatchObject({ code: "closed" });
    expect(() => harness.client.connect()).toThrow(RealtimeError);
  });

  it("during a reconnect wait cancels the attempt", async () => {
    const harness = await connectedClient();
    serverCloses(harness, 1006);
    harness.client.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe("requests", () => {
  it("resolves with the reply's fields, matched by numeric id", async () => {
    const harness = await connectedClient();
    const socket = FakeWebSocket.latest();
    const first = harness.client.request("presence", { room: "chat:a" });
    const second = harness.client.request("presence", { room: "chat:b" });
    const [requestA, requestB] = socket.requests("presence");
    if (!requestA || !requestB) throw new Error("two presence requests expected");
    expect(typeof requestA.id).toBe("number");
    expect(requestA.id).not.toBe(requestB.id);
    // Replies out of order still reach their own request.
    socket.replyOk(requestB, { room: "chat:b", members: ["bob"] });
    socket.replyOk(requestA, { room: "chat:a", members: ["alice"] });
    await expect(first).resolves.toEqual({ room: "chat:a", members: ["alice"] });
    await expect(second).resolves.toEqual({ room: "chat:b", members: ["bob"] });
  });

  it("rejects with the server's error code", async () => {
    const harness = await connectedClient();
    const pending = harness.client.request("presence", { room: "chat:a" });
    FakeWebSocket.latest().replyError(FakeWebSocket.latest().lastRequest("presence"), "not_in_room", "not in chat:a");
    await expect(pending).rejects.toMatchObject({ code: "not_in_room", message: "not in chat:a" });
  });

  it("times out after requestTimeoutMs (or its own timeoutMs)", async () => {
    const harness = await connectedClient({ requestTimeoutMs: 3000 }, { heartbeat_interval_ms: 0 });
    const defaultTimeout = harness.client.request("presence", { room: "chat:a" });
    const ownTimeout = harness.client.request("presence", { room: "chat:a" }, { timeoutMs: 500 });
    const settled: string[] = [];
    defaultTimeout.catch((error: RealtimeError) => settled.push(`default:${error.code}`));
    ownTimeout.catch((error: RealtimeError) => settled.push(`own:${error.code}`));
    await vi.advanceTimersByTimeAsync(499);
    expect(settled).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(settled).toEqual(["own:timeout"]);
    await vi.advanceTimersByTimeAsync(2500);
    expect(settled).toEqual(["own:timeout", "default:timeout"]);
  });

  it("rejects in-flight requests with disconnected when the socket goes away", async () => {
    const harness = await connectedClient();
    const pending = harness.client.request("publish", { room: "chat:a", event: "chat.message", data: { text: "hi" } });
    serverCloses(harness, 1006);
    await expect(pending).rejects.toMatchObject({ code: "disconnected", closeCode: 1006 });
  });

  it("holds requests made before the connection and sends them after `connected`", async () => {
    const harness = makeClient();
    const pending = harness.client.request("presence", { room: "chat:a" });
    harness.client.connect();
    await settle();
    const socket = FakeWebSocket.latest();
    expect(socket.sentFrames).toHaveLength(0);
    socket.serverConnected();
    socket.replyOk(socket.lastRequest("presence"), { room: "chat:a", members: [] });
    await expect(pending).resolves.toEqual({ room: "chat:a", members: [] });
  });

  it("sends the wire shape {id, op, ...fields}", async () => {
    const harness = await connectedClient();
    void harness.client.request("publish", { room: "chat:a", event: "chat.message", data: { text: "hi" } });
    const frame = JSON.parse(FakeWebSocket.latest().sentFrames[0] ?? "{}") as Record<string, unknown>;
    expect(frame).toEqual({ id: 1, op: "publish", room: "chat:a", event: "chat.message", data: { text: "hi" } });
  });
});

describe("token refresh", () => {
  it("sends refresh with a new token before expiry and reschedules from the reply's expires_at", async () => {
    const nowSec = Date.now() / 1000;
    const harness = await connectedClient({}, { heartbeat_interval_ms: 0, expires_at: nowSec + 120 });
    const socket = FakeWebSocket.latest();
    // 120 s token: the earlier of 90 s (30 s before expiry) and 90 s (3/4).
    await vi.advanceTimersByTimeAsync(89_999);
    expect(socket.requests("refresh")).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(harness.getToken).toHaveBeenCalledTimes(2);
    const refresh = socket.lastRequest("refresh");
    expect(refresh.token).toBe("token-2");
    socket.replyOk(refresh, { expires_at: nowSec + 90 + 60 });
    await settle();
    // New token lives 60 s from now: refresh 30 s before its expiry.
    await vi.advanceTimersByTimeAsync(29_999);
    expect(socket.requests("refresh")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.requests("refresh")).toHaveLength(2);
    expect(socket.lastRequest("refresh").token).toBe("token-3");
  });

  it("retries a refresh refused by the server, with backoff", async () => {
    const nowSec = Date.now() / 1000;
    const harness = await connectedClient({}, { heartbeat_interval_ms: 0, expires_at: nowSec + 120 });
    const socket = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(90_000);
    socket.replyError(socket.lastRequest("refresh"), "invalid_token");
    await settle();
    // First retry: max(1 s, full jitter of attempt 1 = 0.5 * 1000).
    await vi.advanceTimersByTimeAsync(999);
    expect(socket.requests("refresh")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.requests("refresh")).toHaveLength(2);
    socket.replyOk(socket.lastRequest("refresh"), { expires_at: nowSec + 3600 });
    await settle();
    expect(harness.client.state).toBe("connected");
    expect(harness.getToken).toHaveBeenCalledTimes(3);
  });

  it("gives up after a few failed refreshes with one error, and reconnects on the server's 4001", async () => {
    const nowSec = Date.now() / 1000;
    const harness = await connectedClient({}, { heartbeat_interval_ms: 0, expires_at: nowSec + 120 });
    const socket = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(90_000);
    // Refuse every refresh, for much longer than the retries could take.
    const refused = new Set<number>();
    for (let index = 0; index < 10; index++) {
      for (const refresh of socket.requests("refresh")) {
        if (refused.has(refresh.id)) continue;
        refused.add(refresh.id);
        socket.replyError(refresh, "unavailable");
      }
      await vi.advanceTimersByTimeAsync(5_000);
    }
    expect(socket.requests("refresh")).toHaveLength(4);
    expect(harness.errors.map((error) => error.code)).toEqual(["unavailable"]);
    serverCloses(harness, 4001);
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });
});

describe("heartbeats", () => {
  it("sends a heartbeat every heartbeat_interval_ms", async () => {
    await connectedClient({}, { heartbeat_interval_ms: 20_000 });
    const socket = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(19_999);
    expect(socket.requests("heartbeat")).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.requests("heartbeat")).toHaveLength(1);
    expect(Object.keys(socket.lastRequest("heartbeat")).sort()).toEqual(["id", "op"]);
    socket.replyOk(socket.lastRequest("heartbeat"));
    await vi.advanceTimersByTimeAsync(20_000);
    expect(socket.requests("heartbeat")).toHaveLength(2);
  });

  it("an unanswered heartbeat abandons the socket without waiting for a close event", async () => {
    const harness = await connectedClient({}, { heartbeat_interval_ms: 20_000 });
    const socket = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(20_000);
    socket.replyOk(socket.lastRequest("heartbeat"));
    await vi.advanceTimersByTimeAsync(20_000);
    // Default timeout: min(20 000 / 2, 10 000).
    await vi.advanceTimersByTimeAsync(9_999);
    expect(harness.client.state).toBe("connected");
    await vi.advanceTimersByTimeAsync(1);
    expect(harness.client.state).toBe("reconnecting");
    expect(socket.closedByClient?.code).toBe(4000);
    expect(socket.onmessage).toBeNull();
    expect(harness.disconnects[0]).toMatchObject({ code: 1006, willReconnect: true, delayMs: 250 });
    await vi.advanceTimersByTimeAsync(250);
    expect(FakeWebSocket.instances).toHaveLength(2);
    // The dead socket's late close event changes nothing.
    socket.serverClose(1006);
    expect(harness.disconnects).toHaveLength(1);
  });

  it("heartbeatTimeoutMs overrides the default", async () => {
    const harness = await connectedClient({ heartbeatTimeoutMs: 2000 }, { heartbeat_interval_ms: 20_000 });
    await vi.advanceTimersByTimeAsync(21_999);
    expect(harness.client.state).toBe("connected");
    await vi.advanceTimersByTimeAsync(1);
    expect(harness.client.state).toBe("reconnecting");
  });

  it("an error reply to a heartbeat proves the path alive", async () => {
    const harness = await connectedClient({}, { heartbeat_interval_ms: 20_000 });
    const socket = FakeWebSocket.latest();
    await vi.advanceTimersByTimeAsync(20_000);
    socket.replyError(socket.lastRequest("heartbeat"), "unavailable");
    await vi.advanceTimersByTimeAsync(15_000);
    expect(harness.client.state).toBe("connected");
  });
});

describe("browser online/offline", () => {
  function stubBrowserNetwork(onLine: boolean) {
    const target = new EventTarget();
    const navigatorStub = { onLine };
    const removeSpy = vi.fn(target.removeEventListener.bind(target));
    vi.stubGlobal("navigator", navigatorStub);
    vi.stubGlobal("addEventListener", target.addEventListener.bind(target));
    vi.stubGlobal("removeEventListener", removeSpy);
    return { target, navigatorStub, removeSpy, goOnline: () => target.dispatchEvent(new Event("online")) };
  }

  it("`online` while waiting to reconnect reconnects at once", async () => {
    const network = stubBrowserNetwork(true);
    const harness = await connectedClient({ random: () => 0.99 });
    for (let index = 0; index < 5; index++) {
      const delay = serverCloses(harness, 1006) ?? 0;
      await vi.advanceTimersByTimeAsync(delay);
    }
    expect(serverCloses(harness, 1006)).toBe(15_840);
    await vi.advanceTimersByTimeAsync(10);
    const before = FakeWebSocket.instances.length;
    network.goOnline();
    await settle();
    expect(FakeWebSocket.instances.length).toBe(before + 1);
    // The cancelled wait does not open a second socket later.
    await vi.advanceTimersByTimeAsync(20_000);
    expect(FakeWebSocket.instances.length).toBe(before + 1);
  });

  it("offline: skips reconnect attempts until `online`; stays connected while offline", async () => {
    const network = stubBrowserNetwork(true);
    const harness = await connectedClient();
    network.navigatorStub.onLine = false;
    await vi.advanceTimersByTimeAsync(1000);
    expect(harness.client.state).toBe("connected");
    serverCloses(harness, 1006);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    network.navigatorStub.onLine = true;
    network.goOnline();
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("close() removes the `online` listener", async () => {
    const network = stubBrowserNetwork(true);
    const harness = await connectedClient();
    serverCloses(harness, 1006);
    harness.client.close();
    expect(network.removeSpy).toHaveBeenCalledWith("online", expect.any(Function));
    network.goOnline();
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe("events", () => {
  it("emits every push on the client and in its room, typed", async () => {
    const harness = await connectedClient();
    const clientPushes: string[] = [];
    const roomUpdates: unknown[] = [];
    harness.client.on("event", (push) => clientPushes.push(push.event));
    harness.client.room("competition:42").on("match.update", (data, push) => roomUpdates.push([data, push.ts]));
    const socket = FakeWebSocket.latest();
    socket.serverSend({ type: "event", event: "match.update", room: "competition:42", data: { score: [2, 1] }, ts: 5 });
    socket.serverSend({ type: "event", event: "match.update", room: "competition:43", data: { score: [0, 0] }, ts: 6 });
    socket.serverSend({ type: "event", event: "notification.new", data: { id: "n1" }, ts: 7 });
    expect(clientPushes).toEqual(["match.update", "match.update", "notification.new"]);
    expect(roomUpdates).toEqual([[{ score: [2, 1] }, 5]]);
  });

  it("on() returns an unsubscribe function; off() removes too", async () => {
    const harness = await connectedClient();
    const seen: string[] = [];
    const listener = (push: { event: string }) => seen.push(`b:${push.event}`);
    const unsubscribe = harness.client.on("event", (push) => seen.push(`a:${push.event}`));
    harness.client.on("event", listener);
    FakeWebSocket.latest().serverSend({ type: "event", event: "x.one", data: null, ts: 1 });
    unsubscribe();
    harness.client.off("event", listener);
    FakeWebSocket.latest().serverSend({ type: "event", event: "x.two", data: null, ts: 2 });
    expect(seen).toEqual(["a:x.one", "b:x.one"]);
  });

  it("ignores frames that are not JSON of this protocol", async () => {
    const harness = await connectedClient();
    const socket = FakeWebSocket.latest();
    socket.onmessage?.({ data: "not json" });
    socket.serverSend([1, 2]);
    expect(harness.client.state).toBe("connected");
    expect(harness.errors).toHaveLength(0);
  });
});

