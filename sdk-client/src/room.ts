// A room as the app sees it: join/leave/publish/presence, typed event
// listeners, and the bookkeeping that lets the client re-join it after every
// reconnect. The client owns the socket and the join pacing; a room only asks
// it, through the small RoomHost interface, to send requests.

import { Emitter, type Unsubscribe } from "./emitter.js";
import { RealtimeError } from "./errors.js";
import type { EventData, EventMap, EventPush, JsonValue, Op, OpMap } from "./protocol.js";

/** What a room needs from its client. */
export interface RoomHost {
  request<O extends Op>(op: O, fields: OpMap[O]["request"]): Promise<OpMap[O]["reply"]>;
  /** Queue a join behind the pacer; sent now or after the next `connected` frame. */
  enqueueJoin(room: Room): void;
  /** Queue a join again after `failures` transient failures (timeout, rate_limited, unavailable). */
  retryJoinLater(room: Room, failures: number): void;
  readonly requestTimeoutMs: number;
}

export interface JoinedInfo {
  /** True when this is an automatic re-join after a reconnect. */
  reconnected: boolean;
}

export interface ResubscribedInfo {
  /** Whether missed events were replayed. The server has no recovery yet: always false, so refetch. */
  recovered: false;
}

export interface PublishResult {
  delivered: boolean;
  /** Why a plugin dropped the event, when delivered is false. */
  reason?: string;
}

interface JoinWaiter {
  resolve: (reply: { room: string }) => void;
  reject: (error: RealtimeError) => void;
  timer: ReturnType<typeof setTimeout>;
}

type Handler = (...args: never) => void;

/** Reply errors worth retrying on the same connection when nobody awaits the join. */
const TRANSIENT_JOIN_ERRORS: ReadonlySet<string> = new Set(["timeout", "rate_limited", "unavailable"]);

export class Room {
  readonly id: string;
  private readonly host: RoomHost;
  // Lifecycle names and event names share one emitter: "joined", "resubscribed" and "error"
  // are reserved for the lifecycle (the server's own events all contain a dot).
  private readonly emitter = new Emitter<Record<string, unknown[]>>();
  /** The app wants to be in this room: (re)joined on every connection until leave() or a refusal. */
  private wanted = false;
  /** Joined on the current connection: what `joined` reports. */
  private joinedNow = false;
  /** Joined on an earlier connection since the app asked: the next join is a re-join. */
  private joinedBefore = false;
  private failuresSinceJoin = 0;
  private waiters: JoinWaiter[] = [];

  constructor(id: string, host: RoomHost) {
    this.id = id;
    this.host = host;
  }

  /** True while the server has confirmed this socket is in the room. */
  get joined(): boolean {
    return this.joinedNow;
  }

  /** @internal The client re-joins wanted rooms after each `connected` frame. */
  get isWanted(): boolean {
    return this.wanted;
  }

  /**
   * Joins and remembers the room. Resolves once the server accepts (waiting for a connection if
   * there is none yet); rejects with the server's refusal (room_forbidden, room_full, ...) or with
   * `timeout` after requestTimeoutMs. A rejected join forgets the room.
   */
  join(): Promise<{ room: string }> {
    if (this.joinedNow) return Promise.resolve({ room: this.id });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.forget(new RealtimeError("timeout", `join ${this.id} not accepted within ${this.host.requestTimeoutMs} ms`));
      }, this.host.requestTimeoutMs);
      this.waiters.push({ resolve, reject, timer });
      // Already wanted means a join is queued or in flight (or waits for the connection).
      if (!this.wanted) {
        this.wanted = true;
        this.host.enqueueJoin(this);
      }
    });
  }

  /** Leaves and forgets the room. A join still waiting rejects with `closed`. */
  async leave(): Promise<{ room: string }> {
    const wasJoined = this.joinedNow;
    this.forget(new RealtimeError("closed", `left ${this.id} before the join completed`));
    // Not joined: nothing to undo on the server (a join still in flight is undone when it lands).
    if (!wasJoined) return { room: this.id };
    try {
      return await this.host.request("leave", { room: this.id });
    } catch (error) {
      // A socket that went away took its rooms with it.
      if (error instanceof RealtimeError && error.code === "disconnected") return { room: this.id };
      throw error;
    }
  }

  /** User ids in the room, sorted. The room type must have presence, and this socket be in it. */
  async presence(): Promise<string[]> {
    const reply = await this.host.request("presence", { room: this.id });
    return Array.isArray(reply.members) ? reply.members.map(String) : [];
  }

  /** Publishes into the room (room types with client_publish, rooms this socket is in). */
  async publish<Name extends string>(event: Name, data: EventData<Name>): Promise<PublishResult> {
    const reply = await this.host.request("publish", { room: this.id, event, data });
    return reply.reason === undefined ? { delivered: reply.delivered } : { delivered: reply.delivered, reason: reply.reason };
  }

  on(name: "joined", handler: (info: JoinedInfo) => void): Unsubscribe;
  on(name: "resubscribed", handler: (info: ResubscribedInfo) => void): Unsubscribe;
  on(name: "error", handler: (error: RealtimeError) => void): Unsubscribe;
  on<Name extends keyof EventMap>(name: Name, handler: (data: EventMap[Name], push: EventPush<Name>) => void): Unsubscribe;
  on(name: string, handler: (data: JsonValue, push: EventPush) => void): Unsubscribe;
  on(name: string, handler: Handler): Unsubscribe {
    return this.emitter.on(name, handler as unknown as (...args: unknown[]) => void);
  }

  off(name: string, handler: Handler): void {
    this.emitter.off(name, handler as unknown as (...args: unknown[]) => void);
  }

  /** @internal Called by the client's pacer when this room's join may go out. */
  sendJoin(): void {
    if (!this.wanted || this.joinedNow) return;
    this.host.request("join", { room: this.id }).then(
      () => this.onJoinAccepted(),
      (error: unknown) => this.onJoinFailed(error),
    );
  }

  /** @internal A push for this room. */
  dispatch(push: EventPush): void {
    this.emitter.emit(push.event, push.data, push);
  }

  /** @internal The socket went away: the room is no longer joined, but still wanted. */
  markSocketGone(): void {
    if (this.joinedNow) this.joinedBefore = true;
    this.joinedNow = false;
  }

  /**
   * @internal The server took the socket out of the room (a token refresh no longer grants it, or a
   * moderator removed the user): handled as a refused re-join, so the room is forgotten and its
   * `error` event fires with room_forbidden and `why` (unless left already).
   */
  revoke(why: string): void {
    this.onJoinFailed(new RealtimeError("room_forbidden", `${why} ${this.id}`));
  }

  /** @internal The client closed for good: reject whoever waits. */
  abandon(error: RealtimeError): void {
    this.joinedNow = false;
    this.rejectWaiters(error);
  }

  private onJoinAccepted(): void {
    if (!this.wanted) {
      // leave() or a timeout came first: undo the join the server just made.
      this.host.request("leave", { room: this.id }).catch(() => undefined);
      return;
    }
    const reconnected = this.joinedBefore;
    this.joinedNow = true;
    this.failuresSinceJoin = 0;
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.resolve({ room: this.id });
    }
    this.emitter.emit("joined", { reconnected });
    if (reconnected) this.emitter.emit("resubscribed", { recovered: false });
  }

  private onJoinFailed(error: unknown): void {
    const realtimeError = error instanceof RealtimeError ? error : new RealtimeError("internal_error", String(error));
    // disconnected: the next connection re-joins every wanted room; closed: close() rejected the waiters.
    if (!this.wanted || realtimeError.code === "disconnected" || realtimeError.code === "closed") return;
    const nobodyWaits = this.waiters.length === 0;
    if (nobodyWaits && TRANSIENT_JOIN_ERRORS.has(realtimeError.code)) {
      this.host.retryJoinLater(this, ++this.failuresSinceJoin);
      return;
    }
    this.forget(realtimeError);
    // An automatic re-join has no promise to reject: tell the app through the room's error event.
    if (nobodyWaits) this.emitter.emit("error", realtimeError);
  }

  private forget(reason: RealtimeError): void {
    this.wanted = false;
    this.joinedNow = false;
    this.joinedBefore = false;
    this.failuresSinceJoin = 0;
    this.rejectWaiters(reason);
  }

  private rejectWaiters(error: RealtimeError): void {
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }
}
