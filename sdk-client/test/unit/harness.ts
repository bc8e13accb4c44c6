// What the room, recovery and member-list tests share: a client connected to the
// fake WebSocket, and a dropped socket followed by the client's reconnect.

import { expect, vi } from "vitest";
import { RealtimeClient, type RealtimeClientOptions } from "../../src/index.js";
import { FakeWebSocket } from "./fake-websocket.js";

/** A client whose socket got its `connected` frame (plus `frame`'s fields); no heartbeats. */
export async function connectedClient(
  options: Partial<RealtimeClientOptions> = {},
  frame: Record<string, unknown> = {},
): Promise<RealtimeClient> {
  const client = new RealtimeClient({
    url: "ws://127.0.0.1:8080/ws",
    getToken: async () => "token",
    WebSocket: FakeWebSocket,
    random: () => 0.5,
    ...options,
  });
  client.connect();
  await vi.advanceTimersByTimeAsync(0);
  // No heartbeats: these tests leave replies unanswered on purpose.
  FakeWebSocket.latest().serverConnected({ heartbeat_interval_ms: 0, ...frame });
  return client;
}

/** Drops the socket and lets the client reconnect (waiting out any backoff window); returns the
 *  new socket, connected, its rooms not yet re-joined. */
export async function reconnect(): Promise<FakeWebSocket> {
  const before = FakeWebSocket.instances.length;
  FakeWebSocket.latest().serverClose(1006);
  // Step until the new socket appears: the backoff window grows with each quick reconnect.
  for (let waited = 0; waited < 20_000 && FakeWebSocket.instances.length === before; waited += 50) {
    await vi.advanceTimersByTimeAsync(50);
  }
  expect(FakeWebSocket.instances).toHaveLength(before + 1);
  const socket = FakeWebSocket.latest();
  socket.serverConnected({ heartbeat_interval_ms: 0 });
  return socket;
}
