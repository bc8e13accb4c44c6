// The GraphQL notifications helper with an injected fetch, the graphqlUrl
// derivation, and live notification.new pushes through onNew().

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { GraphqlError, RealtimeClient, RealtimeError, graphqlUrlFromSocketUrl, type FetchLike } from "../../src/index.js";
import { FakeWebSocket } from "./fake-websocket.js";

interface RecordedCall {
  url: string;
  headers: Record<string, string>;
  body: { query: string; variables: Record<string, unknown> };
}

function fakeFetch(responses: Array<{ status?: number; body: unknown }>) {
  const calls: RecordedCall[] = [];
  const fetch: FetchLike = async (url, init) => {
    calls.push({ url, headers: init.headers, body: JSON.parse(init.body) as RecordedCall["body"] });
    const next = responses.shift() ?? { body: { data: {} } };
    const status = next.status ?? 200;
    return { ok: status >= 200 && status < 300, status, json: async () => next.body };
  };
  return { fetch, calls };
}

function clientWith(fetch: FetchLike, options: { graphqlUrl?: string } = {}) {
  return new RealtimeClient({ url: "wss://rt.example.com/ws", getToken: async () => "jwt-1", WebSocket: FakeWebSocket, fetch, ...options });
}

describe("graphqlUrl", () => {
  it("derives http(s)://host/graphql from the socket URL", () => {
    expect(graphqlUrlFromSocketUrl("ws://127.0.0.1:8080/ws")).toBe("http://127.0.0.1:8080/graphql");
    expect(graphqlUrlFromSocketUrl("wss://rt.example.com/ws?x=1")).toBe("https://rt.example.com/graphql");
    expect(graphqlUrlFromSocketUrl("wss://rt.example.com/realtime/ws")).toBe("https://rt.example.com/realtime/graphql");
    expect(graphqlUrlFromSocketUrl("ws://rt.example.com/socket")).toBe("http://rt.example.com/graphql");
  });

  it("the graphqlUrl option wins", async () => {
    const { fetch, calls } = fakeFetch([{ body: { data: { unreadNotificationCount: 0 } } }]);
    await clientWith(fetch, { graphqlUrl: "https://api.example.com/gql" }).notifications.unreadCount();
    expect(calls[0]?.url).toBe("https://api.example.com/gql");
  });
});

describe("notifications", () => {
  it("list() posts the query with a Bearer token and maps edges to items", async () => {
    const node = { id: "n1", type: "lesson.completed", content: { lesson: 3 }, createdAt: "2026-11-25T10:00:00.000Z", readAt: null, read: false };
    const { fetch, calls } = fakeFetch([
      { body: { data: { notifications: { edges: [{ cursor: "c1", node }], pageInfo: { hasNextPage: true, endCursor: "c1" } } } } },
    ]);
    const page = await clientWith(fetch).notifications.list({ first: 5, unreadOnly: true });
    expect(page).toEqual({ items: [node], hasNextPage: true, endCursor: "c1" });
    const call = calls[0];
    expect(call?.url).toBe("https://rt.example.com/graphql");
    expect(call?.headers.authorization).toBe("Bearer jwt-1");
    expect(call?.headers["content-type"]).toBe("application/json");
    expect(call?.body.query).toContain("notifications(first:$first,after:$after,unreadOnly:$unreadOnly)");
    expect(call?.body.variables).toEqual({ first: 5, after: null, unreadOnly: true });
  });

  it("list() sends the schema's defaults when called without options", async () => {
    const { fetch, calls } = fakeFetch([{ body: { data: { notifications: { edges: [], pageInfo: { hasNextPage: false, endCursor: null } } } } }]);
    const page = await clientWith(fetch).notifications.list();
    expect(page).toEqual({ items: [], hasNextPage: false, endCursor: null });
    expect(calls[0]?.body.variables).toEqual({ first: 20, after: null, unreadOnly: false });
  });

  it("unreadCount, markRead, markAllRead and delete call their fields", async () => {
    const node = { id: "n1", type: "t", content: {}, createdAt: "2026-11-25T10:00:00.000Z", readAt: "2026-11-25T11:00:00.000Z", read: true };
    const { fetch, calls } = fakeFetch([
      { body: { data: { unreadNotificationCount: 3 } } },
      { body: { data: { markNotificationRead: node } } },
      { body: { data: { markAllNotificationsRead: 2 } } },
      { body: { data: { deleteNotification: true } } },
    ]);
    const notifications = clientWith(fetch).notifications;
    expect(await notifications.unreadCount()).toBe(3);
    expect(await notifications.markRead("n1")).toEqual(node);
    expect(await notifications.markAllRead()).toBe(2);
    expect(await notifications.delete("n1")).toBe(true);
    expect(calls.map((call) => call.body.query)).toEqual([
      "{unreadNotificationCount}",
      "mutation($id:ID!){markNotificationRead(id:$id){id type content createdAt readAt read}}",
      "mutation{markAllNotificationsRead}",
      "mutation($id:ID!){deleteNotification(id:$id)}",
    ]);
    expect(calls[1]?.body.variables).toEqual({ id: "n1" });
  });

  it("GraphQL errors throw GraphqlError with extensions.code and retryAfter", async () => {
    const { fetch } = fakeFetch([
      { body: { data: null, errors: [{ message: "not found", extensions: { code: "NOT_FOUND" } }] } },
      { status: 200, body: { errors: [{ message: "slow down", extensions: { code: "RATE_LIMITED", retryAfter: 12 } }] } },
      { status: 502, body: "bad gateway" },
    ]);
    const notifications = clientWith(fetch).notifications;
    await expect(notifications.delete("nope")).rejects.toMatchObject({ code: "NOT_FOUND", message: "not found" });
    const limited = await notifications.unreadCount().catch((error: unknown) => error);
    expect(limited).toBeInstanceOf(GraphqlError);
    expect(limited).toMatchObject({ code: "RATE_LIMITED", retryAfter: 12 });
    await expect(notifications.unreadCount()).rejects.toMatchObject({ code: "HTTP_ERROR", status: 502 });
  });

  it("a failed fetch throws RealtimeError network", async () => {
    const fetch: FetchLike = async () => {
      throw new TypeError("fetch failed");
    };
    const failure = await clientWith(fetch).notifications.unreadCount().catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(RealtimeError);
    expect(failure).toMatchObject({ code: "network" });
  });

  describe("onNew", () => {
    beforeEach(() => {
      vi.useFakeTimers();
      FakeWebSocket.reset();
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    it("calls the handler for notification.new pushes only, until unsubscribed", async () => {
      const client = clientWith(fakeFetch([]).fetch);
      const received: string[] = [];
      const unsubscribe = client.notifications.onNew((notification) => received.push(`${notification.id}:${notification.type}`));
      client.connect();
      await vi.advanceTimersByTimeAsync(0);
      const socket = FakeWebSocket.latest();
      socket.serverConnected();
      const data = { id: "n1", type: "lesson.completed", content: {}, createdAt: "2026-11-25T10:00:00.000Z" };
      socket.serverSend({ type: "event", event: "notification.new", data, ts: 1 });
      socket.serverSend({ type: "event", event: "progress.updated", data: {}, ts: 2 });
      unsubscribe();
      socket.serverSend({ type: "event", event: "notification.new", data: { ...data, id: "n2" }, ts: 3 });
      expect(received).toEqual(["n1:lesson.completed"]);
    });
  });
});
