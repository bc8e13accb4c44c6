// The close-code table of src/close-policy.ts, one row per code class.

import { describe, expect, it } from "vitest";
import { decideAfterClose } from "../../src/close-policy.js";
import { CLOSE_CODES } from "../../src/protocol.js";

describe("close policy", () => {
  it.each([
    [1000, "backoff"],
    [1006, "backoff"],
    [1011, "backoff"],
    [4000, "backoff"],
    [4001, "backoff"],
    [4002, "backoff"],
    [4004, "backoff"],
    [4005, "backoff"],
    [4006, "backoff"],
    [4499, "backoff"],
    [3000, "backoff"],
    [4003, "rate_limited_backoff"],
    [1012, "restart_jitter"],
  ])("close %i reconnects with %s", (code, action) => {
    expect(decideAfterClose(code, false)).toEqual({ action });
  });

  it.each([
    [1002, "closed"],
    [1007, "closed"],
    [1009, "frame_too_large"],
    [4500, "closed"],
    [4502, "origin_forbidden"],
    [4999, "closed"],
  ])("close %i stops with error code %s", (code, errorCode) => {
    expect(decideAfterClose(code, false)).toEqual({ action: "stop", errorCode });
  });

  it("4008 disconnected_by_server (an operator disconnected the user) reconnects with backoff", () => {
    expect(CLOSE_CODES.disconnected_by_server).toBe(4008);
    expect(decideAfterClose(CLOSE_CODES.disconnected_by_server, false)).toEqual({ action: "backoff" });
    expect(decideAfterClose(CLOSE_CODES.disconnected_by_server, true)).toEqual({ action: "backoff" });
  });

  it("4503 access_revoked stops (no reconnect) with error code closed", () => {
    expect(CLOSE_CODES.access_revoked).toBe(4503);
    expect(decideAfterClose(CLOSE_CODES.access_revoked, false)).toEqual({ action: "stop", errorCode: "closed" });
    expect(decideAfterClose(CLOSE_CODES.access_revoked, true)).toEqual({ action: "stop", errorCode: "closed" });
  });

  it("the codes the table names are CLOSE_CODES' (close-policy.ts keeps them as plain numbers)", () => {
    expect(decideAfterClose(CLOSE_CODES.protocol_error, false)).toEqual({ action: "stop", errorCode: "closed" });
    expect(decideAfterClose(CLOSE_CODES.invalid_payload, false)).toEqual({ action: "stop", errorCode: "closed" });
    expect(decideAfterClose(CLOSE_CODES.message_too_big, false)).toEqual({ action: "stop", errorCode: "frame_too_large" });
    expect(decideAfterClose(CLOSE_CODES.origin_forbidden, false)).toEqual({ action: "stop", errorCode: "origin_forbidden" });
    expect(decideAfterClose(CLOSE_CODES.server_restart, false)).toEqual({ action: "restart_jitter" });
    expect(decideAfterClose(CLOSE_CODES.rate_limited, false)).toEqual({ action: "rate_limited_backoff" });
  });

  it("4501 retries once at once, then stops with invalid_token", () => {
    expect(decideAfterClose(CLOSE_CODES.invalid_token, false)).toEqual({ action: "retry_now" });
    expect(decideAfterClose(CLOSE_CODES.invalid_token, true)).toEqual({ action: "stop", errorCode: "invalid_token" });
  });
});
