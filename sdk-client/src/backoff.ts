// Pure timing functions: reconnect backoff with full jitter, the restart and
// rate-limit variants, when to refresh the token, the heartbeat timeout, and
// the token bucket that paces joins. No timers, no clock: callers pass `now`
// and `random`, so every number here is testable.

export interface BackoffSettings {
  minDelayMs: number;
  maxDelayMs: number;
  /** Uniform in [0, 1); Math.random in production, a stub in tests. */
  random: () => number;
}

/** The ceiling of the backoff window for `attempt` (0-based): min * 2^attempt, capped at max. */
export function backoffCeilingMs(attempt: number, settings: BackoffSettings): number {
  return Math.min(settings.maxDelayMs, settings.minDelayMs * 2 ** attempt);
}

/**
 * Full jitter: uniform in [0, ceiling]. Spreading clients over the whole window (rather
 * than around its top) is what keeps a node's clients from returning in one wave.
 */
export function fullJitterDelayMs(attempt: number, settings: BackoffSettings): number {
  return Math.floor(settings.random() * backoffCeilingMs(attempt, settings));
}

/**
 * After close 4003 (rate_limited): the full-jitter delay on top of a floor. Adding rather
 * than taking the max keeps clients spread instead of all waking exactly at the floor.
 */
export function rateLimitedDelayMs(attempt: number, floorMs: number, settings: BackoffSettings): number {
  return floorMs + fullJitterDelayMs(attempt, settings);
}

/** After close 1012 (server_restart): uniform in [0, jitterMs], so another node is not hit at once. */
export function restartDelayMs(jitterMs: number, random: () => number): number {
  return Math.floor(random() * jitterMs);
}

/** Never schedule a refresh sooner than this from now: avoids a hot loop on short-lived tokens. */
export const MIN_REFRESH_DELAY_MS = 1000;

/**
 * Milliseconds from `nowMs` until the token should be refreshed, or undefined when the
 * token has no expiry. It is the earlier of "refreshBeforeExpiryMs before expiry" and
 * "3/4 of the remaining lifetime" (short tokens need a proportionally early refresh),
 * and at least MIN_REFRESH_DELAY_MS.
 */
export function refreshDelayMs(expiresAtSec: number, nowMs: number, refreshBeforeExpiryMs: number): number | undefined {
  if (!(expiresAtSec > 0)) return undefined;
  const remainingMs = expiresAtSec * 1000 - nowMs;
  const delay = Math.min(remainingMs - refreshBeforeExpiryMs, (remainingMs * 3) / 4);
  return Math.max(MIN_REFRESH_DELAY_MS, Math.floor(delay));
}

/** How long a heartbeat may wait for its reply: half the interval, at most 10 s. */
export function defaultHeartbeatTimeoutMs(heartbeatIntervalMs: number): number {
  return Math.min(heartbeatIntervalMs / 2, 10_000);
}

/** A token bucket's state. Plain data: the functions below return new states. */
export interface TokenBucket {
  tokens: number;
  updatedAtMs: number;
}

export function fullTokenBucket(burst: number, nowMs: number): TokenBucket {
  return { tokens: burst, updatedAtMs: nowMs };
}

/** Adds the tokens earned since the last update, never above `burst`. */
export function refillTokenBucket(bucket: TokenBucket, nowMs: number, burst: number, perSecond: number): TokenBucket {
  const earned = (Math.max(0, nowMs - bucket.updatedAtMs) * perSecond) / 1000;
  return { tokens: Math.min(burst, bucket.tokens + earned), updatedAtMs: nowMs };
}

/** Milliseconds until a (refilled) bucket holds one whole token; 0 when it does. */
export function msUntilNextToken(bucket: TokenBucket, perSecond: number): number {
  if (bucket.tokens >= 1) return 0;
  return Math.ceil(((1 - bucket.tokens) * 1000) / perSecond);
}
