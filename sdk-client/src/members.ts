// A live member list for one room (like phoenix.js Presence.onSync): the
// authoritative list from `room.presence()` after every (re)join, kept current
// by the room's announcements (`room.user_joined` / `room.user_left`, or the
// batched `room.presence_diff`). Opt-in: the client never imports this file,
// so apps that do not use it do not ship it.

import type { Unsubscribe } from "./emitter.js";
import { RealtimeError } from "./errors.js";
import type { Room } from "./room.js";

/** One announced change, kept in arrival order while a presence() request is in flight. */
interface MemberChange {
  userId: string;
  present: boolean;
}

interface FirstListWaiter {
  resolve: (members: readonly string[]) => void;
  reject: (error: RealtimeError) => void;
}

/** Calls an app callback; its exception goes out of our call stack, as the emitter does for listeners. */
function callApp<Args extends unknown[]>(callback: ((...args: Args) => void) | undefined, ...args: Args): void {
  try {
    callback?.(...args);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

function sameMembers(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((userId, index) => userId === b[index]);
}

/**
 * The members (user ids) of a room, kept current:
 *
 * ```ts
 * const members = new RoomMembers(room, (list) => render(list), (error) => report(error));
 * await room.join();
 * render(await members.start()); // rejects with e.g. presence_disabled
 * members.stop();
 * ```
 */
export class RoomMembers {
  private readonly room: Room;
  private readonly onChange: (members: readonly string[]) => void;
  private readonly onError: ((error: RealtimeError) => void) | undefined;
  private readonly current = new Set<string>();
  /** The sorted list last handed to the app (what `members` returns). */
  private published: readonly string[] = [];
  private unsubscribes: Unsubscribe[] = [];
  /** Bumped by every fetch and by stop(): a reply that finds a newer number is stale and ignored. */
  private fetchNumber = 0;
  /** Changes announced since the fetch in flight was sent; undefined when no fetch is in flight. */
  private buffered: MemberChange[] | undefined;
  /** start()'s promise, returned again by later calls until stop(). */
  private firstList: Promise<readonly string[]> | undefined;
  /** Settles start()'s promise; undefined once it has settled. */
  private firstListWaiter: FirstListWaiter | undefined;

  /**
   * `onChange` gets the sorted list whenever it changes. `onError` gets failures of the presence()
   * requests after a re-join (the first one rejects start() instead); without it they are thrown
   * outside the client's call stack (an uncaught error), so that they are not lost.
   */
  constructor(room: Room, onChange: (members: readonly string[]) => void, onError?: (error: RealtimeError) => void) {
    this.room = room;
    this.onChange = onChange;
    this.onError = onError;
  }

  /** The members, sorted. Empty until the first list is in; kept (stale) after stop(). */
  get members(): readonly string[] {
    return this.published;
  }

  /**
   * Starts listening and fetches the list: now when the room is joined, else at its next `joined`
   * (so it may be called before `join()`). Resolves with the first list; rejects with that
   * presence() request's error (presence_disabled, not_in_room, timeout, ...), with the room's
   * `error` if a re-join is refused first, or with `closed` if stop() comes first. Calling it again
   * while started returns the same promise.
   */
  start(): Promise<readonly string[]> {
    if (this.firstList) return this.firstList;
    const room = this.room;
    this.firstList = new Promise((resolve, reject) => {
      this.firstListWaiter = { resolve, reject };
    });
    this.unsubscribes = [
      // `joined` comes after every (re)join, `resubscribed` only after re-joins and right after
      // `joined`: listening to both would fetch twice. Diffs missed while disconnected are not
      // replayed (announcements have no offsets), so every re-join fetches the list again.
      room.on("joined", () => this.fetch()),
      room.on("error", (error) => this.failFirstList(error)),
      room.on("room.user_joined", (data) => this.applyChanges([{ userId: data.userId, present: true }])),
      room.on("room.user_left", (data) => this.applyChanges([{ userId: data.userId, present: false }])),
      // Leaves after joins: the server puts a user in at most one list, so the order does not
      // matter for correct diffs; a malformed one ends up without the user, the safer side.
      room.on("room.presence_diff", (data) =>
        this.applyChanges([
          ...data.joins.map((userId) => ({ userId, present: true })),
          ...data.leaves.map((userId) => ({ userId, present: false })),
        ]),
      ),
    ];
    if (room.joined) this.fetch();
    return this.firstList;
  }

  /** Removes the listeners and ignores a presence() reply still to come. A pending start() rejects with `closed`. */
  stop(): void {
    for (const unsubscribe of this.unsubscribes.splice(0)) unsubscribe();
    this.fetchNumber++;
    this.buffered = undefined;
    this.failFirstList(new RealtimeError("closed", `stopped tracking the members of ${this.room.id}`));
    this.firstList = undefined;
  }

  private fetch(): void {
    const fetchNumber = ++this.fetchNumber;
    // Buffer from the moment the request goes out: changes the list already reflects are applied
    // again, which is harmless (adding a member twice or removing an absent one changes nothing, and
    // the last change of each user wins), while none that came after it can be lost.
    this.buffered = [];
    this.room.presence().then(
      (list) => {
        if (fetchNumber !== this.fetchNumber) return;
        const changes = this.buffered ?? [];
        this.buffered = undefined;
        this.current.clear();
        for (const userId of list) this.current.add(userId);
        this.applyChanges(changes); // also hands the new list to onChange if it differs
        this.firstListWaiter?.resolve(this.published);
        this.firstListWaiter = undefined;
      },
      (reason: unknown) => {
        if (fetchNumber !== this.fetchNumber) return;
        const error = reason instanceof RealtimeError ? reason : new RealtimeError("internal_error", String(reason));
        // The changes heard meanwhile still bring the old list closer to the truth.
        const changes = this.buffered ?? [];
        this.buffered = undefined;
        this.applyChanges(changes);
        // disconnected: the socket went away mid-request; the re-join after the reconnect fetches
        // again (and settles start()). closed: the client is done, which the app already knows.
        if (error.code === "disconnected" || (error.code === "closed" && !this.firstListWaiter)) return;
        if (this.firstListWaiter) this.failFirstList(error);
        else if (this.onError) callApp(this.onError, error);
        else {
          queueMicrotask(() => {
            throw error;
          });
        }
      },
    );
  }

  /** Applies changes in order, or buffers them behind the presence() request in flight. */
  private applyChanges(changes: MemberChange[]): void {
    if (this.buffered) {
      this.buffered.push(...changes);
      return;
    }
    for (const { userId, present } of changes) {
      if (present) this.current.add(userId);
      else this.current.delete(userId);
    }
    this.publish();
  }

  /** Hands the list to the app when it differs from the last one handed over. */
  private publish(): void {
    const sorted = [...this.current].sort();
    if (sameMembers(sorted, this.published)) return;
    this.published = sorted;
    callApp(this.onChange, sorted);
  }

  private failFirstList(error: RealtimeError): void {
    this.firstListWaiter?.reject(error);
    this.firstListWaiter = undefined;
  }
}
