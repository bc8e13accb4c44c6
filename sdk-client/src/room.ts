// A room as the app sees it: join/leave/publish/presence/history, typed event
// listeners, and the bookkeeping that lets the client re-join it after every
// reconnect and recover what it missed (its position in the room's history,
// which also drops duplicate events). The client owns the socket and the join
// pacing; a room only asks it, through the small RoomHost interface, to send
// requests.

import { Emitter, type Unsubscribe } from "./emitter.js";
import { RealtimeError } from "./errors.js";
import type { EventData, EventMap, EventPush, HistoryReply, JoinReply, JsonValue, Op, OpMap, RoomPosition } from "./protocol.js";

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
  /**
   * True: the server replays what the room missed while disconnected; those events arrive as
   * ordinary events, in order, none twice. False: events may have been missed (a room type without
   * history, a position too old or from a lost history, the history store unavailable): refetch.
   */
  recovered: boolean;
}

export interface JoinOptions {
  /**
   * Recover from this position (e.g. a `room.position` saved earlier): the reply's `recovered` tells
   * whether the missed events follow. Ignored while a join is already under way.
   */
  since?: RoomPosition;
}

export interface PublishResult {
  delivered: boolean;
  /** Why a plugin dropped the event, when delivered is false. */
  reason?: string;
}

/** Offsets seen beyond the contiguous position are remembered up to this many. */
const AHEAD_LIMIT = 1000;

interface JoinWaiter {
  resolve: (reply: JoinReply) => void;
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
  /** Last offset seen with every earlier one seen too, in `epoch`; sent as `since` on a re-join. */
  private pos: RoomPosition | undefined;
  /** Offsets seen beyond `pos` (events from two publishing nodes may cross). */
  private readonly ahead = new Set<number>();

  constructor(id: string, host: RoomHost) {
    this.id = id;
    this.host = host;
  }

  /** True while the server has confirmed this socket is in the room. */
  get joined(): boolean {
    return this.joinedNow;
  }

  /**
   * Where this socket is in the room's history (room types with history): the last event delivered
   * with every earlier one delivered too. Kept after leave(), e.g. to pass as `join({ since })`.
   */
  get position(): Readonly<RoomPosition> | undefined {
    return this.pos;
  }

  /** @internal The client re-joins wanted rooms after each `connected` frame. */
  get isWanted(): boolean {
    return this.wanted;
  }

  /**
   * Joins and remembers the room. Resolves once the server accepts (waiting for a connection if
   * there is none yet); rejects with the server's refusal (room_forbidden, room_full, ...) or with
   * `timeout` after requestTimeoutMs. A rejected join forgets the room. Resolves with the reply:
   * the room's position and, with `since`, whether the missed events follow (`recovered`).
   */
  join(options?: JoinOptions): Promise<JoinReply> {
    if (this.joinedNow) return Promise.resolve({ room: this.id });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.forget(new RealtimeError("timeout", `join ${this.id} not accepted within ${this.host.requestTimeoutMs} ms`));
      }, this.host.requestTimeoutMs);
      this.waiters.push({ resolve, reject, timer });
      // Already wanted means a join is queued or in flight (or waits for the connection).
      if (!this.wanted) {
        this.wanted = true;
        // A first join counts from the reply's position, unless the app asks to recover.
        this.pos = options?.since;
        this.ahead.clear();
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

  /**
   * The room's last events (at most `limit`, capped by the room type's history_size), oldest first,
   * and its current position. Room types with history only (else `history_disabled`); the token
   * must grant the room as for a join, but this socket need not be in it.
   */
  history(limit?: number): Promise<HistoryReply> {
    return this.host.request("history", { room: this.id, limit });
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
    // With a position (a re-join, or join({ since })), ask for what was missed since.
    this.host.request("join", { room: this.id, since: this.pos }).then(
      (reply) => this.onJoinAccepted(reply),
      (error: unknown) => this.onJoinFailed(error),
    );
  }

  /**
   * @internal Records a push's position; true when it was seen already (the client drops it).
   * Pushes without a position (rooms without history, announcements) are never duplicates.
   */
  seen(push: EventPush): boolean {
    return this.wanted && !this.track(push);
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

  private onJoinAccepted(reply: JoinReply): void {
    if (!this.wanted) {
      // leave() or a timeout came first: undo the join the server just made.
      this.host.request("leave", { room: this.id }).catch(() => undefined);
      return;
    }
    const reconnected = this.joinedBefore;
    const recovered = reply.recovered === true;
    this.joinedNow = true;
    this.failuresSinceJoin = 0;
    // Not recovered: whatever was missed will not come, so count from the room's position now
    // (none when the server could not read it: the next event sets it).
    if (!recovered) this.track(reply, true);
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.resolve(reply);
    }
    this.emitter.emit("joined", { reconnected });
    if (reconnected) this.emitter.emit("resubscribed", { recovered });
  }

  /**
   * Records a position; false when it was seen already. `jump` (a join reply that recovered
   * nothing): everything up to `offset` counts as seen, and a reply without a position leaves
   * none. A push without a position is never a duplicate; another epoch starts over from `offset`.
   */
  private track({ offset, epoch }: Partial<RoomPosition>, jump?: boolean): boolean {
    const { pos, ahead } = this;
    if (offset === undefined || epoch === undefined) {
      if (jump) this.pos = undefined;
      return true;
    }
    let top = offset;
    if (pos?.epoch !== epoch) ahead.clear();
    else if (offset <= pos.offset || (ahead.has(offset) && !jump)) return false;
    else {
      ahead.add(offset);
      // Too many gaps (offsets that will never come): give up on them and count from the highest.
      top = jump ? offset : ahead.size > AHEAD_LIMIT ? Math.max(...ahead) : pos.offset;
      for (const seen of ahead) if (seen <= top) ahead.delete(seen);
      while (ahead.delete(top + 1)) top++;
    }
    this.pos = { offset: top, epoch };
    return true;
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
