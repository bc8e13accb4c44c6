// Public entry of @realtime/client: the client, rooms, notifications, the
// opt-in live member list (RoomMembers: dropped by tree-shaking when unused),
// errors, wire types, and the pure backoff functions (exported for apps that
// want the same policy elsewhere).

export {
  RealtimeClient,
  DEFAULTS,
  graphqlUrlFromSocketUrl,
  socketUrlWithToken,
  type ClientEvents,
  type ConnectedInfo,
  type ConnectionState,
  type DisconnectedInfo,
  type RealtimeClientOptions,
  type RequestOptions,
  type WebSocketConstructorLike,
  type WebSocketLike,
} from "./client.js";
export { Room, type JoinOptions, type JoinedInfo, type PublishResult, type ResubscribedInfo } from "./room.js";
export { RoomMembers } from "./members.js";
export {
  Notifications,
  type FetchLike,
  type ListNotificationsOptions,
  type Notification,
  type NotificationPage,
} from "./notifications.js";
export { RealtimeError, GraphqlError, type ClientErrorCode, type RealtimeErrorCode } from "./errors.js";
export type { Unsubscribe } from "./emitter.js";
export { decideAfterClose, type CloseDecision } from "./close-policy.js";
export {
  backoffCeilingMs,
  fullJitterDelayMs,
  rateLimitedDelayMs,
  restartDelayMs,
  refreshDelayMs,
  defaultHeartbeatTimeoutMs,
} from "./backoff.js";
export {
  ERROR_CODES,
  CLOSE_CODES,
  parseServerFrame,
  type CloseReason,
  type ConnectedFrame,
  type ErrorCode,
  type ErrorReply,
  type EventData,
  type EventMap,
  type EventPush,
  type HistoryReply,
  type JsonRecord,
  type JsonValue,
  type JoinReply,
  type MatchUpdateData,
  type NotificationNewData,
  type OkReply,
  type Op,
  type OpMap,
  type ProgressUpdatedData,
  type Reply,
  type RoomPosition,
  type RoomPresenceDiffData,
  type RoomRemovedData,
  type RoomUserData,
  type TournamentStartData,
  type WireError,
} from "./protocol.js";
