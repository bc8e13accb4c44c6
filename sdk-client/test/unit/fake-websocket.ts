// A scriptable stand-in for WebSocket, injected through the `WebSocket`
// option: records what the client sends and lets a test play the server
// (connected frame, replies, pushes, closes) at exact fake-timer instants.

import type { WebSocketLike } from "../../src/index.js";

export interface SentRequest {
  id: number;
  op: string;
  [field: string]: unknown;
}

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];

  readonly url: string;
  readonly sentFrames: string[] = [];
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** Set when the client called close(); the fake never fires onclose by itself. */
  closedByClient: { code: number | undefined; reason: string | undefined } | null = null;

  constructor(url: string) {
    this.url = url;
    FakeWebSocket.instances.push(this);
  }

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static latest(): FakeWebSocket {
    const socket = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  send(data: string): void {
    this.sentFrames.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
  }

  /** The token query parameter the client put in the URL. */
  get token(): string | null {
    return new URL(this.url).searchParams.get("token");
  }

  requests(op?: string): SentRequest[] {
    const all = this.sentFrames.map((frame) => JSON.parse(frame) as SentRequest);
    return op === undefined ? all : all.filter((request) => request.op === op);
  }

  lastRequest(op: string): SentRequest {
    const request = this.requests(op).pop();
    if (!request) throw new Error(`no ${op} request was sent`);
    return request;
  }

  // ---- playing the server ----

  serverSend(message: unknown): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  serverConnected(overrides: Record<string, unknown> = {}): void {
    this.serverSend({
      type: "connected",
      socket_id: `socket-${FakeWebSocket.instances.indexOf(this)}`,
      user_id: "alice",
      node: "node-a",
      heartbeat_interval_ms: 20_000,
      expires_at: Math.floor(Date.now() / 1000) + 3600,
      ...overrides,
    });
  }

  replyOk(request: SentRequest, fields: Record<string, unknown> = {}): void {
    this.serverSend({ id: request.id, ok: true, ...fields });
  }

  replyError(request: SentRequest, code: string, message = code): void {
    this.serverSend({ id: request.id, ok: false, error: { code, message } });
  }

  serverClose(code: number, reason = ""): void {
    this.onclose?.({ code, reason });
  }
}
