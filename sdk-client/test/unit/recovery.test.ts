// Room history and recovery against the fake WebSocket: the position a room
// keeps (from the join reply, advanced by events), duplicates dropped, events
// that cross (two publishing nodes) and fill in, a new epoch, the re-join with
// `since` and its replay, a re-join that recovered nothing, history(), and
// join({ since }).

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { type RealtimeClient, type EventPush, type ResubscribedInfo, type Room } from "../../src/index.js";
import { FakeWebSocket } from "./fake-websocket.js";
import { connectedClient, reconnect } from "./harness.js";

const ROOM = "competition:42";
const EPOCH = "a1b2c3d4e5f60718";

/** What the app hears: the room's match.update handler and the client's `event` listener. */
function listen(client: RealtimeClient, room: Room) {
  const scores: number[] = [];
  const clientEvents: EventPush[] = [];
  const resubscribed: ResubscribedInfo[] = [];
  room.on("match.update", (data) => scores.push(Number(data.n)));
  room.on("resubscribed", (info) => resubscribed.push(info));
  client.on("event", (push) => clientEvents.push(push));
  return { scores, clientEvents, resubscribed };
}

function push(n: number, epoch: string = EPOCH, room: string = ROOM) {
  return { type: "event", event: "match.update", room, data: { n }, ts: 1_795_000_000_000 + n, offset: n, epoch };
}

/** A client in ROOM, joined with the reply position {offset, EPOCH}. */
async function joinedRoom(offset = 20) {
  const client = await connectedClient();
  const room = client.room(ROOM);
  const heard = listen(client, room);
  const joining = room.join();
  const socket = FakeWebSocket.latest();
  socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset, epoch: EPOCH });
  await joining;
  return { client, room, socket, ...heard };
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("room position and duplicates", () => {
  it("a first join sends no since; the position comes from the join reply, which join() resolves with", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    expect(room.position).toBeUndefined();
    const joining = room.join();
    const socket = FakeWebSocket.latest();
    const request = socket.lastRequest("join");
    expect(request).toEqual({ id: request.id, op: "join", room: ROOM });
    socket.replyOk(request, { room: ROOM, offset: 20, epoch: EPOCH });
    await expect(joining).resolves.toEqual({ room: ROOM, offset: 20, epoch: EPOCH });
    expect(room.position).toEqual({ offset: 20, epoch: EPOCH });
  });

  it("events advance the position and are delivered once; an offset seen already is dropped silently", async () => {
    const { room, socket, scores, clientEvents } = await joinedRoom(20);
    socket.serverSend(push(21));
    socket.serverSend(push(22));
    expect(room.position).toEqual({ offset: 22, epoch: EPOCH });
    socket.serverSend(push(22));
    socket.serverSend(push(20));
    socket.serverSend(push(5));
    expect(scores).toEqual([21, 22]);
    expect(clientEvents.map((event) => event.offset)).toEqual([21, 22]);
    expect(room.position).toEqual({ offset: 22, epoch: EPOCH });
  });

  it("events that cross are delivered at once; the position waits for the gap to fill, and a repeat of either is dropped", async () => {
    const { room, socket, scores } = await joinedRoom(20);
    socket.serverSend(push(23));
    socket.serverSend(push(22));
    expect(scores).toEqual([23, 22]);
    expect(room.position).toEqual({ offset: 20, epoch: EPOCH });
    socket.serverSend(push(23)); // seen, ahead of the position
    socket.serverSend(push(21));
    expect(room.position).toEqual({ offset: 23, epoch: EPOCH });
    socket.serverSend(push(22));
    socket.serverSend(push(24));
    expect(scores).toEqual([23, 22, 21, 24]);
    expect(room.position).toEqual({ offset: 24, epoch: EPOCH });
  });

  it("past 1000 offsets waiting on a gap, the position jumps to the highest and the gap is given up", async () => {
    const { room, socket, scores } = await joinedRoom(1);
    for (let n = 3; n <= 1003; n++) socket.serverSend(push(n));
    expect(scores).toHaveLength(1001);
    expect(room.position).toEqual({ offset: 1003, epoch: EPOCH });
    socket.serverSend(push(2));
    socket.serverSend(push(1004));
    expect(scores).toHaveLength(1002);
    expect(scores[scores.length - 1]).toBe(1004);
  });

  it("an event of another epoch (the room's history was reset) is delivered and its epoch adopted", async () => {
    const { room, socket, scores } = await joinedRoom(20);
    socket.serverSend(push(25)); // leaves a gap in the old epoch
    socket.serverSend(push(1, "ffff000011112222"));
    expect(room.position).toEqual({ offset: 1, epoch: "ffff000011112222" });
    socket.serverSend(push(2, "ffff000011112222"));
    socket.serverSend(push(1, "ffff000011112222"));
    expect(scores).toEqual([25, 1, 2]);
    expect(room.position).toEqual({ offset: 2, epoch: "ffff000011112222" });
  });

  it("pushes without a position (announcements, rooms without history) are delivered unchanged and move nothing", async () => {
    const { room, socket, clientEvents } = await joinedRoom(20);
    const joinedAnnouncement = { type: "event", event: "room.user_joined", room: ROOM, data: { userId: "bob" }, ts: 1 };
    socket.serverSend(joinedAnnouncement);
    socket.serverSend(joinedAnnouncement);
    expect(clientEvents).toEqual([joinedAnnouncement, joinedAnnouncement]);
    expect(room.position).toEqual({ offset: 20, epoch: EPOCH });
    // A room without history: the reply has no position and neither have its events.
    const client = await connectedClient();
    const chat = client.room("chat:a");
    const joining = chat.join();
    const chatSocket = FakeWebSocket.latest();
    chatSocket.replyOk(chatSocket.lastRequest("join"), { room: "chat:a" });
    await joining;
    const texts: string[] = [];
    chat.on("chat.message", (data) => texts.push(JSON.stringify(data)));
    chatSocket.serverSend({ type: "event", event: "chat.message", room: "chat:a", data: { text: "hi" }, ts: 1 });
    chatSocket.serverSend({ type: "event", event: "chat.message", room: "chat:a", data: { text: "hi" }, ts: 1 });
    expect(texts).toHaveLength(2);
    expect(chat.position).toBeUndefined();
  });

  it("events right behind the join reply (handled before the reply settles, as with ws's synchronous events) count", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    const { scores } = listen(client, room);
    const joining = room.join();
    const socket = FakeWebSocket.latest();
    socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset: 20, epoch: EPOCH });
    socket.serverSend(push(21));
    socket.serverSend(push(22));
    await joining;
    expect(room.position).toEqual({ offset: 22, epoch: EPOCH });
    socket.serverSend(push(21));
    expect(scores).toEqual([21, 22]);
  });

  it("a push for a room that was left is delivered but not recorded; the position stays readable after leave()", async () => {
    const { room, socket, scores } = await joinedRoom(20);
    const leaving = room.leave();
    socket.replyOk(socket.lastRequest("leave"), { room: ROOM });
    await leaving;
    socket.serverSend(push(21));
    socket.serverSend(push(21));
    expect(scores).toEqual([21, 21]);
    expect(room.position).toEqual({ offset: 20, epoch: EPOCH });
    // Joining again is a first join: no since.
    void room.join();
    expect(socket.lastRequest("join").since).toBeUndefined();
  });
});

describe("recovery after a reconnect", () => {
  it("the re-join sends since; recovered:true emits resubscribed{recovered:true} and the replay is delivered in order, once", async () => {
    const { room, scores, clientEvents, resubscribed } = await joinedRoom(20);
    const socket0 = FakeWebSocket.latest();
    socket0.serverSend(push(21));
    socket0.serverSend(push(22));
    const socket = await reconnect();
    const rejoin = socket.lastRequest("join");
    expect(rejoin).toEqual({ id: rejoin.id, op: "join", room: ROOM, since: { offset: 22, epoch: EPOCH } });
    // The reply, then the missed events, then live ones; as one burst (nothing awaited between).
    socket.replyOk(rejoin, { room: ROOM, offset: 27, epoch: EPOCH, recovered: true });
    for (let n = 23; n <= 27; n++) socket.serverSend(push(n));
    await vi.advanceTimersByTimeAsync(0);
    expect(resubscribed).toEqual([{ recovered: true }]);
    socket.serverSend(push(27)); // a live copy of a replayed event
    socket.serverSend(push(28));
    expect(scores).toEqual([21, 22, 23, 24, 25, 26, 27, 28]);
    expect(clientEvents.map((event) => event.offset)).toEqual([21, 22, 23, 24, 25, 26, 27, 28]);
    expect(room.position).toEqual({ offset: 28, epoch: EPOCH });
    expect(room.joined).toBe(true);
  });

  it("recovered:false resets the position to the reply's, so what follows counts from there", async () => {
    const { room, scores, resubscribed } = await joinedRoom(20);
    let socket = await reconnect();
    expect(socket.lastRequest("join").since).toEqual({ offset: 20, epoch: EPOCH });
    socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset: 400, epoch: EPOCH, recovered: false });
    await vi.advanceTimersByTimeAsync(0);
    expect(resubscribed).toEqual([{ recovered: false }]);
    expect(room.position).toEqual({ offset: 400, epoch: EPOCH });
    socket.serverSend(push(399));
    socket.serverSend(push(401));
    expect(scores).toEqual([401]);
    expect(room.position).toEqual({ offset: 401, epoch: EPOCH });

    // Another epoch in the reply: adopted.
    socket = await reconnect();
    expect(socket.lastRequest("join").since).toEqual({ offset: 401, epoch: EPOCH });
    socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset: 3, epoch: "0123456789abcdef", recovered: false });
    await vi.advanceTimersByTimeAsync(0);
    expect(room.position).toEqual({ offset: 3, epoch: "0123456789abcdef" });

    // No recovered field and no position (history store unavailable): no position until the next event.
    socket = await reconnect();
    socket.replyOk(socket.lastRequest("join"), { room: ROOM });
    await vi.advanceTimersByTimeAsync(0);
    expect(resubscribed).toEqual([{ recovered: false }, { recovered: false }, { recovered: false }]);
    expect(room.position).toBeUndefined();
    socket.serverSend(push(9, "0123456789abcdef"));
    expect(room.position).toEqual({ offset: 9, epoch: "0123456789abcdef" });
    expect(scores).toEqual([401, 9]);
  });

  it("a live event in the same burst as a recovered:false reply is not lost from the position", async () => {
    const { room, scores } = await joinedRoom(20);
    const socket = await reconnect();
    socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset: 30, epoch: EPOCH, recovered: false });
    socket.serverSend(push(31));
    await vi.advanceTimersByTimeAsync(0);
    expect(room.position).toEqual({ offset: 31, epoch: EPOCH });
    socket.serverSend(push(31));
    socket.serverSend(push(32));
    expect(scores).toEqual([31, 32]);
  });

  it("a room without a position re-joins without since", async () => {
    const client = await connectedClient();
    const room = client.room("chat:a");
    const joining = room.join();
    FakeWebSocket.latest().replyOk(FakeWebSocket.latest().lastRequest("join"), { room: "chat:a" });
    await joining;
    const socket = await reconnect();
    expect(socket.lastRequest("join")).not.toHaveProperty("since");
  });

  it("join({ since }) asks to recover on a first join and resolves with recovered; no resubscribed", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    const { scores, resubscribed } = listen(client, room);
    const joining = room.join({ since: { offset: 10, epoch: EPOCH } });
    const socket = FakeWebSocket.latest();
    expect(socket.lastRequest("join").since).toEqual({ offset: 10, epoch: EPOCH });
    socket.replyOk(socket.lastRequest("join"), { room: ROOM, offset: 12, epoch: EPOCH, recovered: true });
    socket.serverSend(push(11));
    socket.serverSend(push(12));
    await expect(joining).resolves.toEqual({ room: ROOM, offset: 12, epoch: EPOCH, recovered: true });
    expect(scores).toEqual([11, 12]);
    expect(room.position).toEqual({ offset: 12, epoch: EPOCH });
    expect(resubscribed).toEqual([]);
  });
});

describe("history()", () => {
  it("sends room and limit and resolves with the position and the events", async () => {
    const client = await connectedClient();
    const room = client.room(ROOM);
    const reading = room.history(2);
    const socket = FakeWebSocket.latest();
    const request = socket.lastRequest("history");
    expect(request).toEqual({ id: request.id, op: "history", room: ROOM, limit: 2 });
    const events = [push(19), push(20)];
    socket.replyOk(request, { room: ROOM, offset: 20, epoch: EPOCH, events });
    await expect(reading).resolves.toEqual({ room: ROOM, offset: 20, epoch: EPOCH, events });
    // Reading history neither joins nor moves the position.
    expect(room.joined).toBe(false);
    expect(room.position).toBeUndefined();
  });

  it("without a limit sends none; history_disabled rejects", async () => {
    const client = await connectedClient();
    const reading = client.room("chat:a").history();
    const socket = FakeWebSocket.latest();
    expect(socket.lastRequest("history")).not.toHaveProperty("limit");
    socket.replyError(socket.lastRequest("history"), "history_disabled", "chat rooms keep no history");
    await expect(reading).rejects.toMatchObject({ code: "history_disabled" });
  });
});
