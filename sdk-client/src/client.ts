// RealtimeClient: the connection state machine. It opens sockets (a fresh
// token each time), reads the `connected` frame, matches replies to requests,
// sends heartbeats and token refreshes, decides after every close whether and
// when to reconnect, and re-joins the app's rooms at a pace the server accepts.

import {
  defaultHeartbeatTimeoutMs,
  fullJitterDelayMs,
  fullTokenBucket,
  msUntilNextToken,
  rateLimitedDelayMs,
  refillTokenBucket,
  refreshDelayMs,
  restartDelayMs,
  type BackoffSettings,
  type TokenBucket,
} from "./backoff.js";
import { decideAfterClose, type CloseDecision } from "./close-policy.js";
import { Emitter, type Unsubscribe } from "./emitter.js";
import { RealtimeError } from "./errors.js";
import { Notifications, type FetchLike } from "./notifications.js";
import { isObject, parseServerFrame, type ConnectedFrame, type EventPush, type Op, type OpMap, type Reply } from "./protocol.js";
import { Room, type RoomHost } from "./room.js";

/**
 * The part of a WebSocket the client uses. Handlers take `never` on purpose: any handler type
 * (the DOM's, the `ws` package's) is assignable to it, and the client's own handlers take
 * `unknown` and narrow, so neither the browser nor `ws` needs a cast.
 */
export interface WebSocketLike {
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructorLike = new (url: string) => WebSocketLike;

export type ConnectionState = "disconnected" | "connecting" | "connected" | "reconnecting" | "closed";

export interface RealtimeClientOptions {
  /** The /ws endpoint, or a function called before every attempt (e.g. to pick a node). */
  url: string | (() => string);
  /** Called before every connect and reconnect, and for each refresh and GraphQL call. */
  getToken: () => Promise<string>;
  /** WebSocket implementation; default globalThis.WebSocket (pass `ws` in Node < 22). */
  WebSocket?: WebSocketConstructorLike;
  /** GraphQL endpoint; default derived from url (ws->http, wss->https, /ws -> /graphql). */
  graphqlUrl?: string;
  /** fetch implementation for GraphQL; default globalThis.fetch. */
  fetch?: FetchLike;
  minDelayMs?: number;
  maxDelayMs?: number;
  stableAfterMs?: number;
  rateLimitedMinDelayMs?: number;
  restartJitterMs?: number;
  requestTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  refreshBeforeExpiryMs?: number;
  joinBurst?: number;
  joinsPerSecond?: number;
  random?: () => number;
}

export interface ConnectedInfo {
  socketId: string;
  userId: string;
  node: string;
  heartbeatIntervalMs: number;
  /** Token expiry, Unix seconds (0 when the token has none). */
  expiresAt: number;
  /** False for the first connection of this client, true for every later one. */
  reconnected: boolean;
}

export interface DisconnectedInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Delay before the next attempt, when willReconnect. */
  delayMs?: number;
}

export interface ClientEvents {
  state: [state: ConnectionState, previous: ConnectionState];
  connected: [info: ConnectedInfo];
  disconnected: [info: DisconnectedInfo];
  error: [error: RealtimeError];
  event: [push: EventPush];
}

export interface RequestOptions {
  timeoutMs?: number;
}

/** Defaults of every tunable option. */
export const DEFAULTS = {
  minDelayMs: 500,
  maxDelayMs: 20_000,
  stableAfterMs: 10_000,
  rateLimitedMinDelayMs: 5000,
  restartJitterMs: 1500,
  requestTimeoutMs: 10_000,
  refreshBeforeExpiryMs: 30_000,
  joinBurst: 20,
  joinsPerSecond: 10,
} as const;

/** Failed refreshes retried before giving up (then the server's 4001 brings a fresh token). */
const REFRESH_RETRIES = 3;
/** Close code the client sends when it abandons a half-open socket (browsers allow 1000 and 3000-4999). */
const ABANDON_CLOSE_CODE = 4000;
/** What an abandoned or unreachable socket is reported as: the browser's "closed abnormally". */
const ABNORMAL_CLOSE_CODE = 1006;

interface PendingRequest {
  op: string;
  frame: string;
  resolve: (reply: Record<string, unknown>) => void;
  reject: (error: RealtimeError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** The connection it went out on; null while it waits for one. */
  sentOn: Connection | null;
}

/** Everything that lives and dies with one socket. */
interface Connection {
  ws: WebSocketLike;
  /** The `connected` frame arrived. */
  connected: boolean;
  expiresAt: number;
  timers: Set<ReturnType<typeof setTimeout>>;
  joinBucket: TokenBucket;
  joinQueue: Room[];
  joinDrainScheduled: boolean;
}

type Settings = { [Key in keyof typeof DEFAULTS]: number } & { heartbeatTimeoutMs: number | undefined; random: () => number };

function readSettings(options: RealtimeClientOptions): Settings {
  const settings: Record<string, unknown> = { ...DEFAULTS, heartbeatTimeoutMs: undefined, random: Math.random };
  // Only copy defined values: `{ maxDelayMs: undefined }` keeps the default.
  for (const [key, value] of Object.entries(options)) if (value !== undefined && key in settings) settings[key] = value;
  return settings as Settings;
}

/** Adds the token and `refusal=close` (refusals then arrive as close codes, not as a bare 1006). */
export function socketUrlWithToken(url: string, token: string): string {
  const separator = url.includes("?") ? "&" : "?";
  return `${url}${separator}token=${encodeURIComponent(token)}&refusal=close`;
}

/** ws -> http, wss -> https, a trailing /ws -> /graphql (any other path -> /graphql); query dropped. */
export function graphqlUrlFromSocketUrl(socketUrl: string): string {
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const url = new URL(socketUrl, base);
  if (url.protocol === "ws:") url.protocol = "http:";
  if (url.protocol === "wss:") url.protocol = "https:";
  url.pathname = /\/ws\/?$/.test(url.pathname) ? url.pathname.replace(/\/ws\/?$/, "/graphql") : "/graphql";
  url.search = "";
  url.hash = "";
  return url.toString();
}

function readCloseEvent(event: unknown): { code: number; reason: string } {
  const fields = isObject(event) ? event : {};
  return {
    code: typeof fields.code === "number" ? fields.code : ABNORMAL_CLOSE_CODE,
    reason: typeof fields.reason === "string" ? fields.reason : "",
  };
}

function readMessageText(event: unknown): string | null {
  const data = isObject(event) ? event.data : undefined;
  // `ws` hands text frames over as strings too when they are not binary; binary is not this protocol.
  return typeof data === "string" ? data : null;
}

function isOffline(): boolean {
  const navigatorLike = (globalThis as { navigator?: { onLine?: unknown } }).navigator;
  return navigatorLike?.onLine === false;
}

export class RealtimeClient {
  /** GraphQL notifications: list, unread count, mark read, delete, and live `notification.new`. */
  readonly notifications: Notifications;

  private readonly options: RealtimeClientOptions;
  private readonly settings: Settings;
  private readonly emitter = new Emitter<ClientEvents>();
  private readonly rooms = new Map<string, Room>();
  private readonly pending = new Map<number, PendingRequest>();
  private currentState: ConnectionState = "disconnected";
  private connection: Connection | null = null;
  /** Bumped by every attempt: an attempt that finds a newer number after an await gives up. */
  private attemptNumber = 0;
  /** Consecutive attempts without a stable connection; drives the backoff window. */
  private backoffAttempt = 0;
  private hasConnectedBefore = false;
  /** A 4501 was answered with one immediate retry since the last `connected` frame. */
  private invalidTokenRetryUsed = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** A reconnect came due while the browser was offline: the `online` event starts it. */
  private waitingForOnline = false;
  private nextRequestId = 1;
  private removeNetworkListener: (() => void) | undefined;
  private readonly roomHost: RoomHost;

  constructor(options: RealtimeClientOptions) {
    this.options = options;
    this.settings = readSettings(options);
    this.roomHost = {
      request: (op, fields) => this.request(op, fields),
      enqueueJoin: (room) => this.enqueueJoin(room),
      retryJoinLater: (room, failures) => this.retryJoinLater(room, failures),
      requestTimeoutMs: this.settings.requestTimeoutMs,
    };
    this.notifications = new Notifications({
      getToken: () => options.getToken(),
      graphqlUrl: () => options.graphqlUrl ?? graphqlUrlFromSocketUrl(this.resolveUrl()),
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      onEvent: (listener) => this.on("event", listener),
    });
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  on<Name extends keyof ClientEvents>(name: Name, listener: (...args: ClientEvents[Name]) => void): Unsubscribe {
    return this.emitter.on(name, listener);
  }

  off<Name extends keyof ClientEvents>(name: Name, listener: (...args: ClientEvents[Name]) => void): void {
    this.emitter.off(name, listener);
  }

  /** Starts connecting. Idempotent; throws after close() (make a new client instead). */
  connect(): void {
    if (this.currentState === "closed") throw new RealtimeError("closed", "this client was closed; create a new one");
    if (this.currentState !== "disconnected") return;
    this.webSocketConstructor(); // fail loudly now rather than inside the first attempt
    this.watchNetwork();
    this.setState("connecting");
    void this.openSocket();
  }

  /** Final: no more reconnects, pending requests and joins reject with `closed`. */
  close(): void {
    if (this.currentState === "closed") return;
    const error = new RealtimeError("closed", "the client was closed");
    const connection = this.connection;
    const wasConnected = connection?.connected === true;
    if (connection) {
      this.detachConnection(connection, error);
      this.closeQuietly(connection.ws, 1000, "client closed");
    }
    this.finish(error);
    if (wasConnected) this.emitter.emit("disconnected", { code: 1000, reason: "client closed", willReconnect: false });
  }

  /** The room object for `id` (always the same object for the same id). */
  room(id: string): Room {
    let room = this.rooms.get(id);
    if (!room) this.rooms.set(id, (room = new Room(id, this.roomHost)));
    return room;
  }

  /**
   * Sends one request and resolves with the reply's fields. Waits for a connection when there is
   * none; the timeout (requestTimeoutMs) counts from the call. A request already sent rejects with
   * `disconnected` if its socket goes away (it may or may not have been applied).
   */
  request<O extends Op>(op: O, fields: OpMap[O]["request"], options?: RequestOptions): Promise<OpMap[O]["reply"]>;
  request(op: string, fields?: Record<string, unknown>, options?: RequestOptions): Promise<Record<string, unknown>>;
  request(op: string, fields: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<Record<string, unknown>> {
    if (this.currentState === "closed") return Promise.reject(new RealtimeError("closed", "the client was closed"));
    const timeoutMs = options.timeoutMs ?? this.settings.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const id = this.nextRequestId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RealtimeError("timeout", `${op} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const request: PendingRequest = { op, frame: JSON.stringify({ ...fields, id, op }), resolve, reject, timer, sentOn: null };
      this.pending.set(id, request);
      if (this.connection?.connected) this.sendRequest(this.connection, request);
    });
  }

  // ---- connection lifecycle ----

  private webSocketConstructor(): WebSocketConstructorLike {
    const constructor = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructorLike }).WebSocket;
    if (!constructor) {
      throw new Error("No WebSocket implementation: pass one as the `WebSocket` option (e.g. the `ws` package in Node)");
    }
    return constructor;
  }

  private resolveUrl(): string {
    return typeof this.options.url === "function" ? this.options.url() : this.options.url;
  }

  private async openSocket(): Promise<void> {
    const attempt = ++this.attemptNumber;
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (cause) {
      if (attempt !== this.attemptNumber || this.currentState === "closed") return;
      this.emitter.emit("error", new RealtimeError("network", "getToken() failed; retrying with backoff", { cause }));
      this.reconnectAfter(ABNORMAL_CLOSE_CODE, "getToken() failed", { action: "backoff" });
      return;
    }
    // close() or an `online` shortcut may have started something newer meanwhile.
    if (attempt !== this.attemptNumber || this.currentState === "closed") return;
    let ws: WebSocketLike;
    try {
      ws = new (this.webSocketConstructor())(socketUrlWithToken(this.resolveUrl(), token));
    } catch (cause) {
      this.emitter.emit("error", new RealtimeError("network", "could not create the WebSocket", { cause }));
      this.reconnectAfter(ABNORMAL_CLOSE_CODE, "WebSocket constructor threw", { action: "backoff" });
      return;
    }
    this.attachConnection(ws);
  }

  private attachConnection(ws: WebSocketLike): void {
    const connection: Connection = {
      ws,
      connected: false,
      expiresAt: 0,
      timers: new Set(),
      joinBucket: fullTokenBucket(this.settings.joinBurst, Date.now()),
      joinQueue: [],
      joinDrainScheduled: false,
    };
    this.connection = connection;
    ws.onmessage = (event: unknown) => this.handleMessage(connection, event);
    ws.onclose = (event: unknown) => this.handleClose(connection, event);
    // The close event follows every error and carries the code; `ws` throws on unhandled errors.
    ws.onerror = () => undefined;
    // A server that accepts TCP but never says `connected` is as good as gone.
    this.schedule(connection, this.settings.requestTimeoutMs, () => {
      if (!connection.connected) this.abandonSocket(connection, "no connected frame in time");
    });
  }

  private handleMessage(connection: Connection, event: unknown): void {
    if (connection !== this.connection) return;
    const text = readMessageText(event);
    const frame = text === null ? null : parseServerFrame(text);
    if (!frame) return; // not this protocol: ignore rather than kill a working socket
    if (frame.kind === "connected") this.handleConnected(connection, frame.frame);
    else if (frame.kind === "reply") this.handleReply(frame.frame);
    else this.handleEvent(frame.frame);
  }

  private handleConnected(connection: Connection, frame: ConnectedFrame): void {
    if (connection.connected) return;
    connection.connected = true;
    connection.expiresAt = frame.expires_at;
    this.invalidTokenRetryUsed = false;
    const reconnected = this.hasConnectedBefore;
    this.hasConnectedBefore = true;
    // Reset the backoff only for a connection that lasts: accept-then-drop must not loop tightly.
    this.schedule(connection, this.settings.stableAfterMs, () => {
      this.backoffAttempt = 0;
    });
    this.startHeartbeats(connection, frame.heartbeat_interval_ms);
    this.scheduleRefresh(connection);
    this.setState("connected");
    this.emitter.emit("connected", {
      socketId: frame.socket_id,
      userId: frame.user_id,
      node: frame.node,
      heartbeatIntervalMs: frame.heartbeat_interval_ms,
      expiresAt: frame.expires_at,
      reconnected,
    });
    if (connection !== this.connection) return; // a listener closed the client
    // Re-joins first so that queued publishes into those rooms find them joined.
    for (const room of this.rooms.values()) if (room.isWanted) this.enqueueJoin(room);
    for (const request of this.pending.values()) if (!request.sentOn) this.sendRequest(connection, request);
  }

  private handleReply(reply: Reply): void {
    if (typeof reply.id !== "number") {
      // id null: the server could not read a request of ours. Nothing to settle; say so.
      if (!reply.ok) this.emitter.emit("error", new RealtimeError(reply.error.code, reply.error.message));
      return;
    }
    const request = this.pending.get(reply.id);
    if (!request) return; // timed out already
    this.pending.delete(reply.id);
    clearTimeout(request.timer);
    if (reply.ok) {
      const { id: _id, ok: _ok, ...fields } = reply;
      request.resolve(fields);
    } else {
      request.reject(new RealtimeError(reply.error.code, reply.error.message));
    }
  }

  private handleEvent(push: EventPush): void {
    const room = push.room === undefined ? undefined : this.rooms.get(push.room);
    // A moderator removed the user (the server already took the socket out, and may refuse a
    // re-join for a while): forget the room before anyone hears of it, so `joined` reads false.
    if (push.event === "room.removed") room?.revoke("a moderator removed the user from");
    // Seen already (a replay overlapping live events): the app got it once, not again.
    if (room?.seen(push)) return;
    this.emitter.emit("event", push);
    room?.dispatch(push);
  }

  private handleClose(connection: Connection, event: unknown): void {
    if (connection !== this.connection) return;
    const { code, reason } = readCloseEvent(event);
    this.detachConnection(connection, new RealtimeError("disconnected", `socket closed (${code})`, { closeCode: code }));
    this.reconnectAfter(code, reason, decideAfterClose(code, this.invalidTokenRetryUsed));
  }

  /**
   * Half-open socket (heartbeat or handshake unanswered): drop it without waiting for a close
   * event, which on a dead TCP path may take minutes or never come, and go on as after a 1006.
   */
  private abandonSocket(connection: Connection, why: string): void {
    if (connection !== this.connection) return;
    this.detachConnection(connection, new RealtimeError("disconnected", `socket abandoned: ${why}`, { closeCode: ABNORMAL_CLOSE_CODE }));
    this.closeQuietly(connection.ws, ABANDON_CLOSE_CODE, why);
    this.reconnectAfter(ABNORMAL_CLOSE_CODE, why, { action: "backoff" });
  }

  /** Forgets the socket: handlers off, its timers cleared, its in-flight requests rejected. */
  private detachConnection(connection: Connection, error: RealtimeError): void {
    if (this.connection === connection) this.connection = null;
    connection.ws.onmessage = null;
    connection.ws.onclose = null;
    // Keep a no-op error handler: `ws` throws on an error event with no listener.
    connection.ws.onerror = () => undefined;
    for (const timer of connection.timers) clearTimeout(timer);
    connection.timers.clear();
    connection.joinQueue = [];
    for (const [id, request] of this.pending) {
      if (request.sentOn !== connection) continue;
      this.pending.delete(id);
      clearTimeout(request.timer);
      request.reject(error);
    }
    for (const room of this.rooms.values()) room.markSocketGone();
  }

  private reconnectAfter(code: number, reason: string, decision: CloseDecision): void {
    if (decision.action === "stop") {
      const error = new RealtimeError(
        decision.errorCode,
        `server closed the connection with ${code}${reason ? ` (${reason})` : ""}; not reconnecting`,
        { closeCode: code },
      );
      this.finish(error);
      this.emitter.emit("disconnected", { code, reason, willReconnect: false });
      this.emitter.emit("error", error);
      return;
    }
    if (decision.action === "retry_now") this.invalidTokenRetryUsed = true;
    const delayMs = this.reconnectDelayMs(decision);
    this.setState("reconnecting");
    this.emitter.emit("disconnected", { code, reason, willReconnect: true, delayMs });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.attemptReconnect();
    }, delayMs);
  }

  private reconnectDelayMs(decision: Exclude<CloseDecision, { action: "stop" }>): number {
    const backoff: BackoffSettings = this.settings;
    switch (decision.action) {
      case "retry_now":
        return 0;
      case "restart_jitter":
        this.backoffAttempt++;
        return restartDelayMs(this.settings.restartJitterMs, this.settings.random);
      case "rate_limited_backoff":
        return rateLimitedDelayMs(this.backoffAttempt++, this.settings.rateLimitedMinDelayMs, backoff);
      case "backoff":
        return fullJitterDelayMs(this.backoffAttempt++, backoff);
    }
  }

  private attemptReconnect(): void {
    if (this.currentState !== "reconnecting") return;
    // Offline: an attempt would only fail and grow the backoff; the `online` event resumes.
    if (isOffline()) {
      this.waitingForOnline = true;
      return;
    }
    void this.openSocket();
  }

  /** Terminal state: everything pending rejects with `error`, timers and listeners go. */
  private finish(error: RealtimeError): void {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.attemptNumber++; // an attempt awaiting getToken() must not open a socket after this
    this.removeNetworkListener?.();
    this.removeNetworkListener = undefined;
    this.setState("closed");
    for (const request of this.pending.values()) {
      clearTimeout(request.timer);
      request.reject(error);
    }
    this.pending.clear();
    for (const room of this.rooms.values()) room.abandon(error);
  }

  private setState(next: ConnectionState): void {
    const previous = this.currentState;
    if (previous === next) return;
    this.currentState = next;
    this.emitter.emit("state", next, previous);
  }

  private closeQuietly(ws: WebSocketLike, code: number, reason: string): void {
    try {
      ws.close(code, reason);
    } catch {
      // Already closing, or a reason the implementation refuses: the socket is dropped either way.
    }
  }

  // ---- browser online/offline ----

  private watchNetwork(): void {
    const target = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
    if (typeof target.addEventListener !== "function" || !("navigator" in globalThis)) return;
    if (typeof (globalThis as { navigator?: { onLine?: unknown } }).navigator?.onLine !== "boolean") return;
    const onOnline = (): void => this.reconnectNowIfWaiting();
    globalThis.addEventListener("online", onOnline);
    this.removeNetworkListener = () => globalThis.removeEventListener("online", onOnline);
  }

  /** Back online while waiting to reconnect: skip the rest of the wait. */
  private reconnectNowIfWaiting(): void {
    if (this.currentState !== "reconnecting") return;
    if (this.reconnectTimer === undefined && !this.waitingForOnline) return; // an attempt is under way
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.waitingForOnline = false;
    void this.openSocket();
  }

  // ---- requests, heartbeats, refresh ----

  private sendRequest(connection: Connection, request: PendingRequest): void {
    request.sentOn = connection;
    try {
      connection.ws.send(request.frame);
    } catch {
      // The socket is closing; its close event rejects this request with `disconnected`.
    }
  }

  /** A timer tied to a connection: cleared when the connection goes, and a no-op if it went. */
  private schedule(connection: Connection, delayMs: number, run: () => void): void {
    const timer = setTimeout(() => {
      connection.timers.delete(timer);
      if (connection === this.connection) run();
    }, delayMs);
    connection.timers.add(timer);
  }

  private startHeartbeats(connection: Connection, intervalMs: number): void {
    if (!(intervalMs > 0)) return;
    const timeoutMs = this.settings.heartbeatTimeoutMs ?? defaultHeartbeatTimeoutMs(intervalMs);
    // A chain of timeouts rather than setInterval: one clearTimeout path for all connection timers.
    this.schedule(connection, intervalMs, () => {
      this.request("heartbeat", {}, { timeoutMs }).catch((error: unknown) => {
        // Only silence means half-open; an error reply (e.g. unavailable) proves the path works.
        if (error instanceof RealtimeError && error.code === "timeout") this.abandonSocket(connection, "heartbeat unanswered");
      });
      this.startHeartbeats(connection, intervalMs);
    });
  }

  private scheduleRefresh(connection: Connection): void {
    const delayMs = refreshDelayMs(connection.expiresAt, Date.now(), this.settings.refreshBeforeExpiryMs);
    if (delayMs !== undefined) this.schedule(connection, delayMs, () => void this.refreshToken(connection, 0));
  }

  private async refreshToken(connection: Connection, failures: number): Promise<void> {
    try {
      const token = await this.options.getToken();
      if (connection !== this.connection) return;
      const reply = await this.request("refresh", { token });
      if (connection !== this.connection) return;
      connection.expiresAt = Number(reply.expires_at) || 0;
      this.scheduleRefresh(connection);
      // Rooms the new token no longer grants: the server already took the socket out of them.
      for (const id of reply.left ?? []) this.rooms.get(id)?.revoke("the refreshed token no longer grants");
    } catch (error) {
      if (connection !== this.connection) return;
      if (failures >= REFRESH_RETRIES) {
        // Give up quietly on this socket: at expiry the server closes with 4001 and the
        // reconnect fetches a fresh token anyway.
        const cause = error instanceof RealtimeError ? error : new RealtimeError("network", String(error), { cause: error });
        this.emitter.emit("error", cause);
        return;
      }
      const delayMs = Math.max(1000, fullJitterDelayMs(failures + 1, this.settings));
      this.schedule(connection, delayMs, () => void this.refreshToken(connection, failures + 1));
    }
  }

  // ---- join pacing ----

  private enqueueJoin(room: Room): void {
    if (this.currentState === "closed") {
      room.abandon(new RealtimeError("closed", "the client was closed"));
      return;
    }
    const connection = this.connection;
    // Not connected: the next `connected` frame re-joins every wanted room.
    if (!connection?.connected) return;
    if (!connection.joinQueue.includes(room)) connection.joinQueue.push(room);
    this.drainJoinQueue(connection);
  }

  private retryJoinLater(room: Room, failures: number): void {
    const connection = this.connection;
    if (!connection) return;
    this.schedule(connection, fullJitterDelayMs(failures, this.settings) + this.settings.minDelayMs, () => this.enqueueJoin(room));
  }

  /**
   * Sends queued joins while the bucket has tokens (joinBurst at once, then joinsPerSecond),
   * staying well under the server's per-connection budget, which would answer rate_limited
   * and then close with 4003.
   */
  private drainJoinQueue(connection: Connection): void {
    if (connection.joinDrainScheduled) return;
    while (connection.joinQueue.length > 0) {
      const { joinBurst, joinsPerSecond } = this.settings;
      connection.joinBucket = refillTokenBucket(connection.joinBucket, Date.now(), joinBurst, joinsPerSecond);
      const waitMs = msUntilNextToken(connection.joinBucket, joinsPerSecond);
      if (waitMs > 0) {
        connection.joinDrainScheduled = true;
        this.schedule(connection, waitMs, () => {
          connection.joinDrainScheduled = false;
          this.drainJoinQueue(connection);
        });
        return;
      }
      connection.joinBucket.tokens -= 1;
      connection.joinQueue.shift()?.sendJoin();
    }
  }
}
