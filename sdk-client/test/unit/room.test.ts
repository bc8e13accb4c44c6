// Rooms against the fake WebSocket: join/leave/presence/publish, re-join after
// reconnect (paced by the join token bucket), the resubscribed event, and
// what happens to joins the server refuses, a token refresh revokes or a moderator
// removes (room.removed).

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RealtimeClient, RealtimeError, type EventPush, type JoinedInfo, type RealtimeClientOptions } from "../../src/index.js";
import { FakeWebSocket, type SentRequest } from "./fake-websocket.js";
import { connectedClient, reconnect } from "./harness.js";

function makeClient(options: Partial<RealtimeClientOptions> = {}) {
  return new RealtimeClient({
    url: "ws://127.0.0.1:8080/ws",
    getToken: async () => "token",
    WebSocket: FakeWebSocket,
    random: () => 0.5,
    ...options,
  });
}

/** A client in two joined rooms whose token lives 120 s, so the refresh goes out at 90 s. */
async function clientInTwoRooms() {
  const client = await connectedClient({}, { expires_at: Date.now() / 1000 + 120 });
  const answered = new Set<number>();
  const revoked = client.room("competition:42");
  const kept = client.room("chat:a");
  const joins = [revoked.join(), kept.join()];
  acceptJoins(FakeWebSocket.latest(), answered);
  await Promise.all(joins);
  return { client, answered, revoked, kept };
}

/** Accepts every join the current socket sent that has no reply yet. */
function acceptJoins(socket: FakeWebSocket, answered: Set<number>): void {
  for (const join of socket.requests("join")) {
    if (answered.has(join.id)) continue;
    answered.add(join.id);
    socket.replyOk(join, { room: join.room });
  }
}


const joinedRooms = (requests: SentRequest[]) => requests.map((request) => request.room);

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("rooms", () => {
  it("client.room(id) returns the same object for the same id", () => {
    const client = makeClient();
    expect(client.room("chat:a")).toBe(client.room("chat:a"));
    expect(client.room("chat:a")).not.toBe(client.room("chat:b"));
  });

  it("join() sends a join and resolves with the reply; joined becomes true", async () => {
    const client = await connectedClient();
    const room = client.room("competition:42");
    const joinedEvents: JoinedInfo[] = [];
    room.on("joined", (info) => joinedEvents.push(info));
    const joining = room.join();
    expect(room.joined).toBe(false);
    const socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("join"), { room: "competition:42" });
    await expect(joining).resolves.toEqual({ room: "competition:42" });
    expect(room.joined).toBe(true);
    expect(joinedEvents).toEqual([{ reconnected: false }]);
  });

  it("join() before connect waits for the connection", async () => {
    const client = makeClient();
    const joining = client.room("chat:a").join();
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    const socket = FakeWebSocket.latest();
    expect(socket.requests("join")).toHaveLength(0);
    socket.serverConnected({ heartbeat_interval_ms: 0 });
    socket.replyOk(socket.lastRequest("join"), { room: "chat:a" });
    await expect(joining).resolves.toEqual({ room: "chat:a" });
  });

  it("a refused join rejects with the server's code and is not remembered", async () => {
    const client = await connectedClient();
    const room = client.room("competition:43");
    const joining = room.join();
    let socket = FakeWebSocket.latest();
    socket.replyError(socket.lastRequest("join"), "room_forbidden", "the token's `rooms` claim does not grant competition:43");
    await expect(joining).rejects.toBeInstanceOf(RealtimeError);
    await expect(joining).rejects.toMatchObject({ code: "room_forbidden" });
    expect(room.joined).toBe(false);
    socket = await reconnect();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(socket.requests("join")).toHaveLength(0);
  });

  it("a join that gets no answer rejects with timeout and is not remembered", async () => {
    const client = await connectedClient({ requestTimeoutMs: 2000 });
    const joining = client.room("chat:a").join();
    const outcome = joining.catch((error: RealtimeError) => error.code);
    await vi.advanceTimersByTimeAsync(2000);
    await expect(outcome).resolves.toBe("timeout");
    const socket = await reconnect();
    expect(socket.requests("join")).toHaveLength(0);
  });

  it("rooms are re-joined after a reconnect, with joined{reconnected:true} and resubscribed{recovered:false}", async () => {
    const client = await connectedClient();
    const answered = new Set<number>();
    const room = client.room("competition:42");
    const events: unknown[] = [];
    room.on("joined", (info) => events.push(["joined", info]));
    room.on("resubscribed", (info) => events.push(["resubscribed", info]));
    const joining = room.join();
    acceptJoins(FakeWebSocket.latest(), answered);
    await joining;
    const socket = await reconnect();
    expect(room.joined).toBe(false);
    expect(joinedRooms(socket.requests("join"))).toEqual(["competition:42"]);
    acceptJoins(socket, answered);
    await vi.advanceTimersByTimeAsync(0);
    expect(room.joined).toBe(true);
    expect(events).toEqual([
      ["joined", { reconnected: false }],
      ["joined", { reconnected: true }],
      ["resubscribed", { recovered: false }],
    ]);
  });

  it("re-joins are paced: 30 rooms go out as a burst of 20, then 10 per second", async () => {
    const client = await connectedClient();
    const answered = new Set<number>();
    const names = Array.from({ length: 30 }, (_, index) => `chat:room${index}`);
    const joins = names.map((name) => client.room(name).join());
    // The first joins are paced too.
    expect(FakeWebSocket.latest().requests("join")).toHaveLength(20);
    await vi.advanceTimersByTimeAsync(1000);
    acceptJoins(FakeWebSocket.latest(), answered);
    await Promise.all(joins);

    const resubscribed: string[] = [];
    for (const name of names) client.room(name).on("resubscribed", () => resubscribed.push(name));
    const socket = await reconnect();
    expect(socket.requests("join")).toHaveLength(20);
    await vi.advanceTimersByTimeAsync(99);
    expect(socket.requests("join")).toHaveLength(20);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.requests("join")).toHaveLength(21);
    await vi.advanceTimersByTimeAsync(400);
    expect(socket.requests("join")).toHaveLength(25);
    await vi.advanceTimersByTimeAsync(500);
    expect(socket.requests("join")).toHaveLength(30);
    await vi.advanceTimersByTimeAsync(5000);
    expect(joinedRooms(socket.requests("join")).sort()).toEqual([...names].sort());
    acceptJoins(socket, answered);
    await vi.advanceTimersByTimeAsync(0);
    expect(resubscribed.sort()).toEqual([...names].sort());
  });

  it("joinBurst and joinsPerSecond are configurable", async () => {
    const client = await connectedClient({ joinBurst: 2, joinsPerSecond: 4 });
    for (let index = 0; index < 5; index++) void client.room(`chat:r${index}`).join();
    const socket = FakeWebSocket.latest();
    expect(socket.requests("join")).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(250);
    expect(socket.requests("join")).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(500);
    expect(socket.requests("join")).toHaveLength(5);
  });

  it("a re-join refused after reconnect emits the room's error and forgets the room", async () => {
    const client = await connectedClient();
    const room = client.room("competition:42");
    const errors: RealtimeError[] = [];
    room.on("error", (error) => errors.push(error));
    const joining = room.join();
    acceptJoins(FakeWebSocket.latest(), new Set());
    await joining;
    let socket = await reconnect();
    socket.replyError(socket.lastRequest("join"), "room_full");
    await vi.advanceTimersByTimeAsync(0);
    expect(errors.map((error) => error.code)).toEqual(["room_full"]);
    expect(room.joined).toBe(false);
    socket = await reconnect();
    expect(socket.requests("join")).toHaveLength(0);
  });

  it("a re-join answered rate_limited is retried later on the same connection", async () => {
    const client = await connectedClient();
    const room = client.room("chat:a");
    const joining = room.join();
    acceptJoins(FakeWebSocket.latest(), new Set());
    await joining;
    const socket = await reconnect();
    socket.replyError(socket.lastRequest("join"), "rate_limited");
    await vi.advanceTimersByTimeAsync(0);
    expect(socket.requests("join")).toHaveLength(1);
    // Retry after minDelayMs + full jitter of attempt 1 (0.5 * 1000).
    await vi.advanceTimersByTimeAsync(1000);
    expect(socket.requests("join")).toHaveLength(2);
    acceptJoins(socket, new Set([socket.requests("join")[0]?.id ?? -1]));
    await vi.advanceTimersByTimeAsync(0);
    expect(room.joined).toBe(true);
  });

  it("a join in flight when the socket drops is sent again after the reconnect", async () => {
    const client = await connectedClient();
    const joining = client.room("chat:a").join();
    const socket = await reconnect();
    expect(joinedRooms(socket.requests("join"))).toEqual(["chat:a"]);
    socket.replyOk(socket.lastRequest("join"), { room: "chat:a" });
    await expect(joining).resolves.toEqual({ room: "chat:a" });
  });

  it("leave() sends leave and forgets the room", async () => {
    const client = await connectedClient();
    const room = client.room("chat:a");
    const joining = room.join();
    let socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("join"), { room: "chat:a" });
    await joining;
    const leaving = room.leave();
    expect(room.joined).toBe(false);
    socket.replyOk(socket.lastRequest("leave"), { room: "chat:a" });
    await expect(leaving).resolves.toEqual({ room: "chat:a" });
    socket = await reconnect();
    expect(socket.requests("join")).toHaveLength(0);
  });

  it("leave() while the join is in flight rejects the join and undoes it when it lands", async () => {
    const client = await connectedClient();
    const room = client.room("chat:a");
    const joining = room.join();
    const outcome = joining.catch((error: RealtimeError) => error.code);
    await room.leave();
    await expect(outcome).resolves.toBe("closed");
    const socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("join"), { room: "chat:a" });
    await vi.advanceTimersByTimeAsync(0);
    expect(room.joined).toBe(false);
    expect(joinedRooms(socket.requests("leave"))).toEqual(["chat:a"]);
  });

  it("presence() resolves with the members list", async () => {
    const client = await connectedClient();
    const members = client.room("chat:a").presence();
    const socket = FakeWebSocket.latest();
    expect(socket.lastRequest("presence")).toMatchObject({ op: "presence", room: "chat:a" });
    socket.replyOk(socket.lastRequest("presence"), { room: "chat:a", members: ["alice", "bob"] });
    await expect(members).resolves.toEqual(["alice", "bob"]);
  });

  it("publish() sends room, event and data and resolves with delivered", async () => {
    const client = await connectedClient();
    const published = client.room("chat:a").publish("chat.message", { text: "hi" });
    const socket = FakeWebSocket.latest();
    const request = socket.lastRequest("publish");
    expect(request).toMatchObject({ room: "chat:a", event: "chat.message", data: { text: "hi" } });
    socket.replyOk(request, { delivered: false, reason: "filtered" });
    await expect(published).resolves.toEqual({ delivered: false, reason: "filtered" });
  });

  it("room listeners get the room's pushes with their data; room.user_joined is typed", async () => {
    const client = await connectedClient();
    const room = client.room("chat:a");
    const joinedUsers: string[] = [];
    room.on("room.user_joined", (data) => joinedUsers.push(data.userId));
    FakeWebSocket.latest().serverSend({ type: "event", event: "room.user_joined", room: "chat:a", data: { userId: "bob" }, ts: 1 });
    expect(joinedUsers).toEqual(["bob"]);
  });

  it("a refresh reply listing a room in `left` forgets it with room_forbidden; only the other room is re-joined", async () => {
    const { answered, revoked, kept } = await clientInTwoRooms();
    const errors: RealtimeError[] = [];
    revoked.on("error", (error) => errors.push(error));
    kept.on("error", (error) => errors.push(error));
    await vi.advanceTimersByTimeAsync(90_000);
    let socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("refresh"), { expires_at: Date.now() / 1000 + 3600, left: ["competition:42"] });
    await vi.advanceTimersByTimeAsync(0);
    expect(revoked.joined).toBe(false);
    expect(kept.joined).toBe(true);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(RealtimeError);
    expect(errors[0]?.code).toBe("room_forbidden");
    expect(errors[0]?.message).toContain("competition:42");
    // The server already took the socket out: no leave goes out for it.
    expect(socket.requests("leave")).toHaveLength(0);
    socket = await reconnect();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(joinedRooms(socket.requests("join"))).toEqual(["chat:a"]);
    acceptJoins(socket, answered);
    await vi.advanceTimersByTimeAsync(0);
    expect(kept.joined).toBe(true);
    expect(revoked.joined).toBe(false);
  });

  it("a refresh reply without `left` (older servers) keeps every room", async () => {
    const { revoked, kept } = await clientInTwoRooms();
    await vi.advanceTimersByTimeAsync(90_000);
    let socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("refresh"), { expires_at: Date.now() / 1000 + 3600 });
    await vi.advanceTimersByTimeAsync(0);
    expect(revoked.joined).toBe(true);
    expect(kept.joined).toBe(true);
    socket = await reconnect();
    expect(joinedRooms(socket.requests("join")).sort()).toEqual(["chat:a", "competition:42"]);
  });

  it("a room.removed push forgets the room with room_forbidden (not re-joined after a reconnect) and still reaches event listeners; the other room stays", async () => {
    const { client, answered, revoked: removed, kept } = await clientInTwoRooms();
    const errors: RealtimeError[] = [];
    removed.on("error", (error) => errors.push(error));
    kept.on("error", (error) => errors.push(error));
    const pushes: EventPush[] = [];
    const joinedWhenHeard: boolean[] = [];
    client.on("event", (push) => {
      pushes.push(push);
      joinedWhenHeard.push(removed.joined);
    });
    const reasons: string[] = [];
    removed.on("room.removed", (data) => reasons.push(data.reason));
    let socket = FakeWebSocket.latest();
    const push = { type: "event", event: "room.removed", room: "competition:42", data: { reason: "removed_by_moderator" }, ts: 1_795_643_627_123 };
    socket.serverSend(push);
    expect(removed.joined).toBe(false);
    expect(kept.joined).toBe(true);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(RealtimeError);
    expect(errors[0]?.code).toBe("room_forbidden");
    expect(errors[0]?.message).toContain("moderator");
    expect(errors[0]?.message).toContain("competition:42");
    // Delivered like every push, with the room already not joined; the room's own listeners get it too.
    expect(pushes).toEqual([push]);
    expect(joinedWhenHeard).toEqual([false]);
    expect(reasons).toEqual(["removed_by_moderator"]);
    // The server already took the socket out: no leave goes out for it.
    expect(socket.requests("leave")).toHaveLength(0);
    socket = await reconnect();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(joinedRooms(socket.requests("join"))).toEqual(["chat:a"]);
    acceptJoins(socket, answered);
    await vi.advanceTimersByTimeAsync(0);
    expect(kept.joined).toBe(true);
    expect(removed.joined).toBe(false);
    expect(errors).toHaveLength(1);
  });

  it("a room.removed push for a room not held, or without a room, changes no room", async () => {
    const { client, kept } = await clientInTwoRooms();
    const pushes: EventPush[] = [];
    client.on("event", (push) => pushes.push(push));
    const socket = FakeWebSocket.latest();
    socket.serverSend({ type: "event", event: "room.removed", room: "chat:elsewhere", data: { reason: "removed_by_moderator" }, ts: 1 });
    socket.serverSend({ type: "event", event: "room.removed", data: { reason: "removed_by_moderator" }, ts: 2 });
    expect(pushes).toHaveLength(2);
    expect(kept.joined).toBe(true);
    expect(client.room("competition:42").joined).toBe(true);
  });

  it("close() rejects joins still waiting with closed", async () => {
    const client = makeClient();
    const joining = client.room("chat:a").join();
    const outcome = joining.catch((error: RealtimeError) => error.code);
    client.connect();
    client.close();
    await expect(outcome).resolves.toBe("closed");
  });
});
