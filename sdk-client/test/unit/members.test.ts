// The live member list (RoomMembers) against the fake WebSocket: the first
// list from presence, user_joined/user_left and presence_diff applied in
// order, announcements heard while presence is in flight applied after its
// list, a fresh presence after every re-join, stop(), and presence failures
// reaching start() or onError.

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RealtimeError, RoomMembers, type Room } from "../../src/index.js";
import { FakeWebSocket } from "./fake-websocket.js";
import { connectedClient, reconnect } from "./harness.js";

const ROOM = "competition:42";

/** A client joined to ROOM, and a RoomMembers over it that records what onChange and onError got. */
async function joinedRoomWithMembers() {
  const client = await connectedClient();
  const room = client.room(ROOM);
  const joining = room.join();
  const socket = FakeWebSocket.latest();
  socket.replyOk(socket.lastRequest("join"), { room: ROOM });
  await joining;
  return { client, room, socket, ...membersOf(room) };
}

function membersOf(room: Room) {
  const changes: (readonly string[])[] = [];
  const errors: RealtimeError[] = [];
  const members = new RoomMembers(
    room,
    (list) => changes.push(list),
    (error) => errors.push(error),
  );
  return { members, changes, errors };
}

function userJoined(userId: string) {
  return { type: "event", event: "room.user_joined", room: ROOM, ts: 1_795_000_000_000, data: { userId } };
}

function userLeft(userId: string) {
  return { type: "event", event: "room.user_left", room: ROOM, ts: 1_795_000_000_000, data: { userId } };
}

function presenceDiff(joins: string[], leaves: string[]) {
  return { type: "event", event: "room.presence_diff", room: ROOM, ts: 1_795_000_000_000, data: { joins, leaves } };
}

/** Answers the socket's last presence request with `members`. */
async function answerPresence(socket: FakeWebSocket, members: string[]): Promise<void> {
  socket.replyOk(socket.lastRequest("presence"), { room: ROOM, members });
  await vi.advanceTimersByTimeAsync(0);
}

/** Drops the socket, lets the client reconnect, and accepts the re-join of ROOM. */
async function reconnectAndRejoin(): Promise<FakeWebSocket> {
  const socket = await reconnect();
  socket.replyOk(socket.lastRequest("join"), { room: ROOM });
  await vi.advanceTimersByTimeAsync(0);
  return socket;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("RoomMembers", () => {
  it("start() fetches the list with presence and resolves with it", async () => {
    const { socket, members, changes } = await joinedRoomWithMembers();
    expect(members.members).toEqual([]);
    const starting = members.start();
    expect(socket.lastRequest("presence")).toMatchObject({ op: "presence", room: ROOM });
    await answerPresence(socket, ["alice", "bob"]);
    await expect(starting).resolves.toEqual(["alice", "bob"]);
    expect(members.members).toEqual(["alice", "bob"]);
    expect(changes).toEqual([["alice", "bob"]]);
    // Started already: the same promise, no second request.
    expect(members.start()).toBe(starting);
    expect(socket.requests("presence")).toHaveLength(1);
  });

  it("started before the join, it fetches once the join is accepted", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    const { members, changes } = membersOf(room);
    const starting = members.start();
    const socket = FakeWebSocket.latest();
    expect(socket.requests("presence")).toHaveLength(0);
    const joining = room.join();
    socket.replyOk(socket.lastRequest("join"), { room: ROOM });
    await joining;
    expect(socket.requests("presence")).toHaveLength(1);
    await answerPresence(socket, ["alice"]);
    await expect(starting).resolves.toEqual(["alice"]);
    expect(changes).toEqual([["alice"]]);
  });

  it("applies room.user_joined and room.user_left, calling onChange only when the list changes", async () => {
    const { socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    await answerPresence(socket, ["alice"]);
    await starting;
    socket.serverSend(userJoined("carol"));
    socket.serverSend(userJoined("bob"));
    socket.serverSend(userJoined("bob")); // already in: no change
    socket.serverSend(userLeft("alice"));
    socket.serverSend(userLeft("zoe")); // not in: no change
    expect(changes).toEqual([["alice"], ["alice", "carol"], ["alice", "bob", "carol"], ["bob", "carol"]]);
    expect(members.members).toEqual(["bob", "carol"]);
  });

  it("applies room.presence_diff: joins added, leaves removed", async () => {
    const { socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    await answerPresence(socket, ["alice", "bob"]);
    await starting;
    socket.serverSend(presenceDiff(["carol", "dave"], ["alice"]));
    socket.serverSend(presenceDiff([], ["carol"]));
    socket.serverSend(presenceDiff([], [])); // an empty diff changes nothing
    expect(changes).toEqual([["alice", "bob"], ["bob", "carol", "dave"], ["bob", "dave"]]);
  });

  it("announcements heard while presence is in flight are applied after its list", async () => {
    const { socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    socket.serverSend(presenceDiff(["dave"], ["bob"]));
    socket.serverSend(userLeft("carol"));
    socket.serverSend(userJoined("erin"));
    expect(changes).toEqual([]);
    expect(members.members).toEqual([]);
    // The list may already reflect some of them (carol left before the server read it) or not
    // (bob left after): applied on top, the result is the same.
    await answerPresence(socket, ["alice", "bob"]);
    await expect(starting).resolves.toEqual(["alice", "dave", "erin"]);
    // One change, straight to the result: the fetched list alone is never handed over.
    expect(changes).toEqual([["alice", "dave", "erin"]]);
    socket.serverSend(userLeft("dave"));
    expect(members.members).toEqual(["alice", "erin"]);
  });

  it("fetches the list again after every re-join, since announcements missed meanwhile are not replayed", async () => {
    const { room, socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    await answerPresence(socket, ["alice", "bob"]);
    await starting;
    const resubscribed: boolean[] = [];
    room.on("resubscribed", ({ recovered }) => resubscribed.push(recovered));

    const second = await reconnectAndRejoin();
    expect(resubscribed).toEqual([false]);
    expect(second.requests("presence")).toHaveLength(1); // once, not once per joined and resubscribed
    second.serverSend(presenceDiff(["frank"], ["alice"])); // heard while the new list is on its way
    await answerPresence(second, ["alice", "carol"]); // bob left and carol came while disconnected
    expect(members.members).toEqual(["carol", "frank"]);
    expect(changes).toEqual([["alice", "bob"], ["carol", "frank"]]);
  });

  it("a socket lost during the first presence leaves start() pending until the re-join's list", async () => {
    const { socket, members } = await joinedRoomWithMembers();
    let settled = false;
    const starting = members.start().finally(() => (settled = true));
    expect(socket.requests("presence")).toHaveLength(1);
    const second = await reconnectAndRejoin();
    expect(settled).toBe(false);
    await answerPresence(second, ["alice"]);
    await expect(starting).resolves.toEqual(["alice"]);
  });

  it("stop() removes its listeners and ignores a reply still to come", async () => {
    const { room, socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    await answerPresence(socket, ["alice"]);
    await starting;
    socket.serverSend(userJoined("bob"));
    expect(members.members).toEqual(["alice", "bob"]);
    members.stop();
    socket.serverSend(userJoined("carol"));
    socket.serverSend(presenceDiff(["dave"], ["alice"]));
    const second = await reconnectAndRejoin();
    expect(room.joined).toBe(true);
    expect(second.requests("presence")).toHaveLength(0);
    expect(members.members).toEqual(["alice", "bob"]);
    expect(changes).toEqual([["alice"], ["alice", "bob"]]);
  });

  it("stop() while the first presence is in flight rejects start() with closed and drops the reply", async () => {
    const { socket, members, changes } = await joinedRoomWithMembers();
    const starting = members.start();
    members.stop();
    await expect(starting).rejects.toMatchObject({ code: "closed" });
    await answerPresence(socket, ["alice"]);
    expect(members.members).toEqual([]);
    expect(changes).toEqual([]);
  });

  it("a failed first presence rejects start() with the server's error", async () => {
    const { socket, members, errors } = await joinedRoomWithMembers();
    const starting = members.start();
    socket.replyError(socket.lastRequest("presence"), "presence_disabled", "competition has no presence");
    await expect(starting).rejects.toBeInstanceOf(RealtimeError);
    await expect(starting).rejects.toMatchObject({ code: "presence_disabled" });
    // Reported once: through the promise, not onError as well.
    expect(errors).toEqual([]);
  });

  it("a failed presence after a re-join goes to onError; announcements heard meanwhile still apply", async () => {
    const { socket, members, changes, errors } = await joinedRoomWithMembers();
    const starting = members.start();
    await answerPresence(socket, ["alice"]);
    await starting;
    const second = await reconnectAndRejoin();
    second.serverSend(userJoined("bob"));
    second.replyError(second.lastRequest("presence"), "unavailable", "presence store unavailable");
    await vi.advanceTimersByTimeAsync(0);
    expect(errors.map((error) => error.code)).toEqual(["unavailable"]);
    expect(changes).toEqual([["alice"], ["alice", "bob"]]);
  });

  it("without onError, a failed presence after a re-join is thrown outside the client's call stack", async () => {
    const { room, socket } = await joinedRoomWithMembers();
    const members = new RoomMembers(room, () => undefined);
    const starting = members.start();
    await answerPresence(socket, ["alice"]);
    await starting;
    const thrownLater: (() => void)[] = [];
    const spy = vi.spyOn(globalThis, "queueMicrotask").mockImplementation((callback) => thrownLater.push(callback));
    try {
      const second = await reconnectAndRejoin();
      second.replyError(second.lastRequest("presence"), "internal_error");
      await vi.advanceTimersByTimeAsync(0);
    } finally {
      spy.mockRestore();
    }
    expect(thrownLater).toHaveLength(1);
    expect(() => thrownLater[0]?.()).toThrow(expect.objectContaining({ code: "internal_error" }));
  });

  it("a refused re-join rejects a start() still waiting for its first list", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    const joining = room.join();
    let socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("join"), { room: ROOM });
    await joining;
    const { members } = membersOf(room);
    // Dropped before the first presence is answered: start() waits for the re-join.
    const starting = members.start();
    const outcome = starting.catch((error: RealtimeError) => error.code);
    const before = FakeWebSocket.instances.length;
    socket.serverClose(1006);
    for (let waited = 0; waited < 20_000 && FakeWebSocket.instances.length === before; waited += 50) {
      await vi.advanceTimersByTimeAsync(50);
    }
    socket = FakeWebSocket.latest();
    socket.serverConnected({ heartbeat_interval_ms: 0 });
    socket.replyError(socket.lastRequest("join"), "room_forbidden");
    await expect(outcome).resolves.toBe("room_forbidden");
  });
});
