// Wire protocol of the realtime server: error and close code lists, frame
// types, per-op request/reply shapes, typed event payloads, and the one
// function that turns a text frame into a typed frame (or null).
//
// ERROR_CODES and CLOSE_CODES are parsed by a Rust test that compares them
// with core/src/protocol.rs: keep one entry per line and this exact layout.

export const ERROR_CODES = [
  "invalid_token", "node_full", "origin_forbidden", "too_many_connections", "unauthorized", "api_disabled", "malformed_frame", "frame_too_large",
  "payload_too_large", "unknown_op", "invalid_request", "invalid_room_id", "unknown_room_type",
  "room_forbidden", "room_full", "too_many_rooms", "not_in_room", "publish_forbidden",
  "presence_disabled", "history_disabled", "invalid_event", "subject_mismatch", "rate_limited",
  "plugin_rejected", "plugin_failed", "unavailable", "internal_error",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export const CLOSE_CODES = {
  normal: 1000,
  protocol_error: 1002,
  invalid_payload: 1007,
  message_too_big: 1009,
  server_restart: 1012,
  token_expired: 4001,
  slow_consumer: 4002,
  rate_limited: 4003,
  heartbeat_timeout: 4004,
  backend_unavailable: 4005,
  node_full: 4006,
  too_many_connections: 4007,
  disconnected_by_server: 4008,
  unsupported_data: 4500,
  invalid_token: 4501,
  origin_forbidden: 4502,
  access_revoked: 4503,
} as const;
export type CloseReason = keyof typeof CLOSE_CODES;

/** Any value JSON can carry. Event payloads are defined by services, so this is their floor. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** An open JSON object. The named payload interfaces below extend it so apps can merge fields in. */
export interface JsonRecord {
  [key: string]: JsonValue | undefined;
}

/** First frame on every accepted socket. `expires_at` is the token's `exp` in Unix seconds. */
export interface ConnectedFrame {
  type: "connected";
  socket_id: string;
  user_id: string;
  node: string;
  heartbeat_interval_ms: number;
  expires_at: number;
}

export interface WireError {
  code: ErrorCode;
  message: string;
}

/** A reply to request `id`: `{id, ok:true, ...fields}`. */
export interface OkReply {
  id: number | string | null;
  ok: true;
  [field: string]: unknown;
}

/** A refused request: `{id, ok:false, error}`. `id` is null when the server could not read it. */
export interface ErrorReply {
  id: number | string | null;
  ok: false;
  error: WireError;
}

export type Reply = OkReply | ErrorReply;

/** Payload of `notification.new`, pushed to every socket of the user after the row is stored. */
export interface NotificationNewData extends JsonRecord {
  id: string;
  type: string;
  content: JsonValue;
  createdAt: string;
}

/** Payload of `room.user_joined` and `room.user_left`. */
export interface RoomUserData extends JsonRecord {
  userId: string;
}

/**
 * Payload of `room.presence_diff` (room types with `announce = "batched"`): the users whose first
 * socket joined or last socket left during one interval on one node. Both lists are sorted; a
 * user is in at most one. Apply in order to the list from `room.presence()`.
 */
export interface RoomPresenceDiffData extends JsonRecord {
  joins: string[];
  leaves: string[];
}

/** Payload of `room.removed`: a moderator took the user out of `room` (every socket of theirs). */
export interface RoomRemovedData extends JsonRecord {
  /** Why, e.g. "removed_by_moderator". */
  reason: string;
}

// Service-defined payloads. They are open records; an app narrows one by merging fields in:
//   declare module "@realtime/client" { interface MatchUpdateData { score: number[] } }
export interface ProgressUpdatedData extends JsonRecord {}
export interface TournamentStartData extends JsonRecord {}
export interface MatchUpdateData extends JsonRecord {}

/**
 * Event name -> payload type. Apps add their own events by declaration merging:
 *   declare module "@realtime/client" { interface EventMap { "chat.message": { text: string } } }
 * Names not in the map get `JsonValue`.
 */
export interface EventMap {
  "notification.new": NotificationNewData;
  "progress.updated": ProgressUpdatedData;
  "tournament.start": TournamentStartData;
  "match.update": MatchUpdateData;
  "room.user_joined": RoomUserData;
  "room.user_left": RoomUserData;
  "room.presence_diff": RoomPresenceDiffData;
  "room.removed": RoomRemovedData;
}

/** The payload type of event `Name`: from EventMap when listed, else any JSON. */
export type EventData<Name extends string> = Name extends keyof EventMap ? EventMap[Name] : JsonValue;

/** A server push. `room` is absent for user-targeted pushes, `from` for service publishes. */
export interface EventPush<Name extends string = string> {
  type: "event";
  event: Name;
  room?: string;
  from?: string;
  data: EventData<Name>;
  /** When the server accepted the event, Unix milliseconds. */
  ts: number;
  /** Position in the room's history (room types with history; not on announcements). */
  offset?: number;
  /** The room's history epoch: changes when that history was lost, and offsets restart at 1. */
  epoch?: string;
}

/** A place in a room's history: the last event seen (`offset`) in history `epoch`. */
export interface RoomPosition {
  offset: number;
  epoch: string;
}

/**
 * Reply to `join`. `offset`/`epoch`: the room's current position (room types with history, when the
 * server could read it). `recovered`, only when the join carried `since` to a room type with history:
 * true = the missed events follow the reply as ordinary pushes, in order; false = they cannot be
 * served (too old, another epoch, history unavailable). Absent counts as false.
 */
export interface JoinReply {
  room: string;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
}

/** Reply to `history`: the room's current position and its last events, oldest first. */
export interface HistoryReply extends RoomPosition {
  room: string;
  events: EventPush[];
}

/** Request fields and reply fields (without `id`/`ok`) of each op. */
export interface OpMap {
  /** `since`: the last position seen; the server then replays what came after it, if it can. */
  join: { request: { room: string; since?: RoomPosition }; reply: JoinReply };
  leave: { request: { room: string }; reply: { room: string } };
  heartbeat: { request: Record<string, never>; reply: Record<string, never> };
  publish: {
    // unknown, not JsonValue: typed payloads (JsonRecord) carry optional fields JsonValue lacks.
    request: { room: string; event: string; data: unknown };
    reply: { delivered: boolean; reason?: string };
  };
  presence: { request: { room: string }; reply: { room: string; members: string[] } };
  /** The room's last events, oldest first (`limit` capped by the room type's history_size). */
  history: { request: { room: string; limit?: number }; reply: HistoryReply };
  /** `left`: rooms the new token's `rooms` claim no longer grants, already left (absent on older servers). */
  refresh: { request: { token: string }; reply: { expires_at: number; left?: string[] } };
}
export type Op = keyof OpMap;

export type ServerFrame =
  | { kind: "connected"; frame: ConnectedFrame }
  | { kind: "reply"; frame: Reply }
  | { kind: "event"; frame: EventPush };

/** A JSON object (not null, not an array). Shared with the client and notifications; not public. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseConnected(message: Record<string, unknown>): ConnectedFrame {
  // Missing numbers become 0, which the client reads as "no heartbeat" / "no expiry".
  return {
    type: "connected",
    socket_id: String(message.socket_id ?? ""),
    user_id: String(message.user_id ?? ""),
    node: String(message.node ?? ""),
    heartbeat_interval_ms: Number(message.heartbeat_interval_ms) || 0,
    expires_at: Number(message.expires_at) || 0,
  };
}

function parseReply(message: Record<string, unknown>): Reply | null {
  const id = message.id;
  if (typeof id !== "number" && typeof id !== "string" && id !== null) return null;
  if (message.ok === true) return { ...message, id, ok: true };
  const error = isObject(message.error) ? message.error : {};
  return {
    id,
    ok: false,
    error: { code: String(error.code ?? "internal_error") as ErrorCode, message: String(error.message ?? "") },
  };
}

/** Reads one text frame. Returns null for anything that is not a frame this protocol defines. */
export function parseServerFrame(text: string): ServerFrame | null {
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(message)) return null;
  if (message.type === "connected") return { kind: "connected", frame: parseConnected(message) };
  if (message.type === "event" && typeof message.event === "string") {
    return { kind: "event", frame: message as unknown as EventPush };
  }
  if ("ok" in message && "id" in message) {
    const reply = parseReply(message);
    return reply ? { kind: "reply", frame: reply } : null;
  }
  return null;
}
