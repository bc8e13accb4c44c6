// Unit tests of the pure timing functions in src/backoff.ts.

import { describe, expect, it } from "vitest";
import {
  backoffCeilingMs,
  defaultHeartbeatTimeoutMs,
  fullJitterDelayMs,
  fullTokenBucket,
  msUntilNextToken,
  rateLimitedDelayMs,
  refillTokenBucket,
  refreshDelayMs,
  restartDelayMs,
} from "../../src/backoff.js";

const settings = (random: () => number) => ({ minDelayMs: 500, maxDelayMs: 20_000, random });

describe("backoff", () => {
  it("full jitter stays within [0, ceiling] for random at both ends", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = backoffCeilingMs(attempt, settings(() => 0));
      expect(fullJitterDelayMs(attempt, settings(() => 0))).toBe(0);
      const top = fullJitterDelayMs(attempt, settings(() => 0.999999));
      expect(top).toBeLessThanOrEqual(ceiling);
      expect(top).toBeGreaterThanOrEqual(ceiling - 1);
    }
  });

  it("the ceiling doubles per attempt from minDelayMs and caps at maxDelayMs", () => {
    const ceilings = [0, 1, 2, 3, 4, 5, 6, 7, 50].map((attempt) => backoffCeilingMs(attempt, settings(Math.random)));
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 20_000, 20_000, 20_000]);
  });

  it("full jitter is uniform: random() scales the ceiling", () => {
    expect(fullJitterDelayMs(2, settings(() => 0.5))).toBe(1000);
    expect(fullJitterDelayMs(2, settings(() => 0.25))).toBe(500);
  });

  it("rate-limited delay never goes below its floor and adds the jitter on top", () => {
    expect(rateLimitedDelayMs(0, 5000, settings(() => 0))).toBe(5000);
    expect(rateLimitedDelayMs(0, 5000, settings(() => 0.5))).toBe(5250);
    expect(rateLimitedDelayMs(10, 5000, settings(() => 0.5))).toBe(15_000);
  });

  it("restart delay is uniform in [0, jitter]", () => {
    expect(restartDelayMs(1500, () => 0)).toBe(0);
    expect(restartDelayMs(1500, () => 0.5)).toBe(750);
    expect(restartDelayMs(1500, () => 0.9999)).toBeLessThanOrEqual(1500);
  });

  it("refresh: the earlier of 30 s before expiry and 3/4 of the remaining lifetime, at least 1 s", () => {
    const now = 1_800_000_000_000;
    // Long token: 3/4 of an hour comes before "30 s before expiry".
    expect(refreshDelayMs(now / 1000 + 3600, now, 30_000)).toBe(2_700_000);
    // Shorter tokens: 30 s before expiry comes first.
    expect(refreshDelayMs(now / 1000 + 60, now, 30_000)).toBe(30_000);
    expect(refreshDelayMs(now / 1000 + 100, now, 30_000)).toBe(70_000);
    expect(refreshDelayMs(now / 1000 + 40, now, 30_000)).toBe(10_000);
    // 3/4 wins whenever the remaining lifetime exceeds 4 x refreshBeforeExpiryMs.
    expect(refreshDelayMs(now / 1000 + 100, now, 5_000)).toBe(75_000);
    expect(refreshDelayMs(now / 1000 + 1, now, 30_000)).toBe(1000);
    expect(refreshDelayMs(now / 1000 - 10, now, 30_000)).toBe(1000);
    expect(refreshDelayMs(0, now, 30_000)).toBeUndefined();
  });

  it("heartbeat timeout defaults to half the interval, at most 10 s", () => {
    expect(defaultHeartbeatTimeoutMs(20_000)).toBe(10_000);
    expect(defaultHeartbeatTimeoutMs(60_000)).toBe(10_000);
    expect(defaultHeartbeatTimeoutMs(4000)).toBe(2000);
  });

  it("token bucket: a full burst at once, then one token per 1/rate seconds, never above burst", () => {
    let bucket = fullTokenBucket(20, 0);
    let taken = 0;
    while (msUntilNextToken(bucket, 10) === 0) {
      bucket = { ...bucket, tokens: bucket.tokens - 1 };
      taken++;
    }
    expect(taken).toBe(20);
    expect(msUntilNextToken(bucket, 10)).toBe(100);
    bucket = refillTokenBucket(bucket, 50, 20, 10);
    expect(msUntilNextToken(bucket, 10)).toBe(50);
    bucket = refillTokenBucket(bucket, 100, 20, 10);
    expect(msUntilNextToken(bucket, 10)).toBe(0);
    expect(refillTokenBucket(bucket, 1_000_000, 20, 10).tokens).toBe(20);
  });
});
