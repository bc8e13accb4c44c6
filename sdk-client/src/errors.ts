// Error classes thrown and emitted by the client: RealtimeError for the socket
// (server error codes plus the client's own: timeout, disconnected, closed,
// network) and GraphqlError for the notifications API.

import type { ErrorCode } from "./protocol.js";

/** Codes the client itself produces, next to the server's ErrorCode list. */
export type ClientErrorCode = "timeout" | "disconnected" | "closed" | "network";
export type RealtimeErrorCode = ErrorCode | ClientErrorCode;

export class RealtimeError extends Error {
  override readonly name = "RealtimeError";
  readonly code: RealtimeErrorCode;
  /** The WebSocket close code, when the error comes from a close. */
  readonly closeCode?: number;
  /** The underlying error (a getToken() failure, a fetch failure), when there is one. */
  readonly cause?: unknown;

  constructor(code: RealtimeErrorCode, message: string, details: { closeCode?: number; cause?: unknown } = {}) {
    super(message);
    this.code = code;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
    if (details.cause !== undefined) this.cause = details.cause;
  }
}

/**
 * A GraphQL error. `code` is the server's `extensions.code` as sent (UNAUTHENTICATED,
 * NOT_FOUND, RATE_LIMITED, BAD_USER_INPUT, UNAVAILABLE, GRAPHQL_VALIDATION_FAILED),
 * or HTTP_ERROR when the response was not GraphQL at all.
 */
export class GraphqlError extends Error {
  override readonly name = "GraphqlError";
  readonly code: string;
  /** HTTP status of the response. */
  readonly status: number;
  /** Seconds to wait, from `extensions.retryAfter` on RATE_LIMITED. */
  readonly retryAfter?: number;

  constructor(code: string, message: string, status: number, retryAfter?: number) {
    super(message);
    this.code = code;
    this.status = status;
    if (retryAfter !== undefined) this.retryAfter = retryAfter;
  }
}
