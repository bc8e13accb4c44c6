// Compile-time checks, run by `npm run build` (tsc --noEmit over test/unit):
// the `ws` package and the DOM WebSocket fit the WebSocket option without a
// cast, apps extend EventMap and narrow service payloads by declaration
// merging, and event handlers get the typed payloads. The runtime assertions
// only keep vitest honest about the file.

import { describe, expect, expectTypeOf, it } from "vitest";
import { WebSocket as NodeWebSocket } from "ws";
import {
  RealtimeClient,
  RoomMembers,
  type EventPush,
  type HistoryReply,
  type JoinReply,
  type JsonValue,
  type NotificationNewData,
  type RealtimeErrorCode,
  type RoomPosition,
  type RoomPresenceDiffData,
  type WebSocketConstructorLike,
} from "@realtime/client";

declare module "@realtime/client" {
  interface EventMap {
    "chat.message": { text: string };
  }
  interface MatchUpdateData {
    score: number[];
  }
}

describe("types", () => {
  it("the ws package and the DOM WebSocket are WebSocketConstructorLike", () => {
    const fromWs: WebSocketConstructorLike = NodeWebSocket;
    const fromDom: WebSocketConstructorLike | undefined = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    const client = new RealtimeClient({ url: "ws://127.0.0.1:1/ws", getToken: async () => "t", WebSocket: NodeWebSocket });
    expect(typeof fromWs).toBe("function");
    expect(fromDom === undefined || typeof fromDom === "function").toBe(true);
    expect(client.state).toBe("disconnected");
  });

  it("room handlers get EventMap payloads, merged fields included", () => {
    const client = new RealtimeClient({ url: "ws://127.0.0.1:1/ws", getToken: async () => "t", WebSocket: NodeWebSocket });
    const room = client.room("competition:42");
    room.on("match.update", (data, push) => {
      expectTypeOf(data.score).toEqualTypeOf<number[]>();
      expectTypeOf(push.room).toEqualTypeOf<string | undefined>();
    });
    room.on("chat.message", (data) => expectTypeOf(data.text).toEqualTypeOf<string>());
    room.on("room.user_left", (data) => expectTypeOf(data.userId).toEqualTypeOf<string>());
    room.on("room.removed", (data) => expectTypeOf(data.reason).toEqualTypeOf<string>());
    room.on("room.presence_diff", (data) => expectTypeOf(data).toEqualTypeOf<RoomPresenceDiffData>());
    const members = new RoomMembers(room, (list) => expectTypeOf(list).toEqualTypeOf<readonly string[]>());
    expectTypeOf(members.start).returns.resolves.toEqualTypeOf<readonly string[]>();
    room.on("something.else", (data) => expectTypeOf(data).toEqualTypeOf<JsonValue>());
    room.on("joined", (info) => expectTypeOf(info.reconnected).toEqualTypeOf<boolean>());
    room.on("resubscribed", (info) => expectTypeOf(info.recovered).toEqualTypeOf<boolean>());
    expectTypeOf(room.position).toEqualTypeOf<Readonly<RoomPosition> | undefined>();
    expectTypeOf(room.history).returns.resolves.toEqualTypeOf<HistoryReply>();
    expectTypeOf<HistoryReply["events"]>().toEqualTypeOf<EventPush[]>();
    expectTypeOf(room.join).returns.resolves.toEqualTypeOf<JoinReply>();
    room.on("error", (error) => expectTypeOf(error.code).toEqualTypeOf<RealtimeErrorCode>());
    client.notifications.onNew((notification) => expectTypeOf(notification).toEqualTypeOf<NotificationNewData>());
    client.on("event", (push) => expectTypeOf(push).toEqualTypeOf<EventPush>());
    client.on("state", (state, previous) => expectTypeOf(previous).toEqualTypeOf(state));
    // @ts-expect-error: chat.message data must match the merged EventMap entry
    void room.publish("chat.message", { text: 1 });
    expect(client.room("competition:42")).toBe(room);
  });
});
