// What the client does after a socket closes, by close code. A pure function
// of the code and of whether the one invalid_token retry was already spent,
// so the whole table is unit-testable apart from sockets and timers.

import type { RealtimeErrorCode } from "./errors.js";

// The codes this table reads, as in CLOSE_CODES (src/protocol.ts). Plain numbers rather than
// CLOSE_CODES.x, so that bundles (RealtimeClient) need not carry the whole CLOSE_CODES map.
const PROTOCOL_ERROR = 1002;
const INVALID_PAYLOAD = 1007;
const MESSAGE_TOO_BIG = 1009;
const SERVER_RESTART = 1012;
const RATE_LIMITED = 4003;
const INVALID_TOKEN = 4501;
const ORIGIN_FORBIDDEN = 4502;

export type CloseDecision =
  /** Final: state "closed", emit an error with this code. */
  | { action: "stop"; errorCode: RealtimeErrorCode }
  /** Reconnect at once with a fresh token (first 4501). */
  | { action: "retry_now" }
  /** Reconnect after a full-jitter backoff. */
  | { action: "backoff" }
  /** Reconnect after rateLimitedMinDelayMs plus a backoff (4003). */
  | { action: "rate_limited_backoff" }
  /** Reconnect after a short uniform delay in [0, restartJitterMs] (1012). */
  | { action: "restart_jitter" };

/** Close codes after which retrying cannot help until the client (or its config) changes. */
function isStopCode(code: number): boolean {
  return (
    code === PROTOCOL_ERROR ||
    code === INVALID_PAYLOAD ||
    code === MESSAGE_TOO_BIG ||
    (code >= 4500 && code <= 4999)
  );
}

function stopErrorCode(code: number): RealtimeErrorCode {
  if (code === INVALID_TOKEN) return "invalid_token";
  if (code === ORIGIN_FORBIDDEN) return "origin_forbidden";
  if (code === MESSAGE_TOO_BIG) return "frame_too_large";
  return "closed";
}

/**
 * `invalidTokenRetryUsed`: a 4501 already happened since the last `connected` frame.
 * A token provider that keeps handing out a bad token must end in an auth error, not a loop.
 */
export function decideAfterClose(code: number, invalidTokenRetryUsed: boolean): CloseDecision {
  if (code === INVALID_TOKEN && !invalidTokenRetryUsed) return { action: "retry_now" };
  if (isStopCode(code)) return { action: "stop", errorCode: stopErrorCode(code) };
  if (code === SERVER_RESTART) return { action: "restart_jitter" };
  if (code === RATE_LIMITED) return { action: "rate_limited_backoff" };
  // 1000, 4000-4499 (4001 gets its fresh token because every attempt calls getToken()),
  // 1006, 1011 and anything unknown.
  return { action: "backoff" };
}
