import { describe, expect, it } from "vitest";
import { ApiError } from "../lib/api";
import {
  apiProblem,
  endProblem,
  formatDuration,
  isRawError,
  micProblem,
  plainError,
  reasonText,
  STATE_LABELS,
  streamRefusalProblem,
} from "./messages";

describe("plain-words errors", () => {
  it("explains each capacity refusal in its own words, with the wait", () => {
    expect(apiProblem(new ApiError(503, "no_capacity", "pool 'server' is busy", 12))).toEqual({
      title: "No capacity right now",
      detail: expect.stringContaining("Try again in about 12 s"),
      code: "no_capacity",
    });
    expect(apiProblem(new ApiError(503, "queue_full", "…", 3)).title).toBe("The waiting line is full");
    const noWorkers = apiProblem(new ApiError(503, "no_workers", "…", 10));
    expect(noWorkers.title).toBe("No voice workers are running");
    expect(noWorkers.detail).toContain("Ask an operator");
    expect(apiProblem(new ApiError(429, "too_many_sessions", "…", 5)).title).toBe("Too many sessions");
    expect(apiProblem(new ApiError(0, "network", "…")).title).toBe("Can't reach the server");
  });

  it("explains a refused microphone", () => {
    expect(micProblem(new DOMException("denied", "NotAllowedError")).title).toBe("No microphone permission");
    expect(micProblem({ type: "not-found" }).title).toBe("No microphone found");
  });

  it("explains model failures and expiry, but not a normal end", () => {
    expect(endProblem("failed", "model_unavailable")).toEqual({
      title: "Model unavailable",
      detail: expect.stringContaining("could not be reached"),
    });
    expect(endProblem("failed", "model_disconnected")?.title).toBe("Model unavailable");
    expect(endProblem("failed", "worker_lost")?.title).toBe("The session failed");
    expect(endProblem("expired", "no_capacity")?.title).toBe("No capacity right now");
    expect(endProblem("ended", "client_ended")).toBeNull();
  });

  it("explains refused live events, with what happens next", () => {
    const message = "at most 20 open event streams per user; close other tabs or wait a minute";
    expect(
      streamRefusalProblem({ status: 429, code: "too_many_streams", message, retryAfterS: 10, retryInMs: 10_000 }),
    ).toEqual({
      title: "Live updates stopped: too many open pages",
      detail: "At most 20 open event streams per user; close other tabs or wait a minute. Trying again in about 10 s.",
    });
    expect(
      streamRefusalProblem({ status: 503, code: "redis_unavailable", message: "", retryInMs: null }),
    ).toEqual({
      title: "Live updates stopped: the server is having trouble",
      detail: "The server can't reach its event store. Stopped trying for now.",
    });
    expect(streamRefusalProblem({ status: 401, code: "unauthorized", message: "…", retryInMs: null }).title).toBe(
      "Your sign-in has expired",
    );
    expect(streamRefusalProblem({ status: 404, code: "not_found", message: "…", retryInMs: null }).title).toBe(
      "This session is gone",
    );
  });

  it("names the pauses of a call that goes on, and why", () => {
    expect(STATE_LABELS.reconnecting).toBe("Reconnecting");
    expect(STATE_LABELS.recovering).toBe("Moving");
    expect(reasonText("client_lost")).toContain("waits for it to come back");
    expect(reasonText("client_reconnected")).toBe("Your browser is connected again.");
    expect(reasonText("pool_fallback")).toContain("another pool");
    expect(reasonText("recovered")).toContain("moved to another worker");
    expect(endProblem("ended", "client_left")).toBeNull();
  });

  it("formats durations", () => {
    expect(formatDuration(2.345)).toBe("2.3 s");
    expect(formatDuration(75)).toBe("1 min 15 s");
    expect(formatDuration(0)).toBe("0 s");
  });
});

describe("model failures, by their cause", () => {
  const KEY = "The voice model refused this server's API key; an operator must fix OPENAI_API_KEY.";

  it("reads a refused key (HTTP 401/403) as such, not as 'try again later'", () => {
    for (const message of ["server rejected WebSocket connection: HTTP 401", "server rejected WebSocket connection: HTTP 403"]) {
      const problem = endProblem("failed", "model_unavailable", [message]);
      expect(problem).toEqual({ title: "The voice model refused the API key", detail: KEY });
      expect(problem?.detail).not.toContain("try again");
    }
    expect(endProblem("failed", "model_auth_failed")?.detail).toBe(KEY);
    expect(reasonText("model_unavailable", [null, "server rejected WebSocket connection: HTTP 401"])).toBe(KEY);
  });

  it("keeps 'could not be reached' for a model that is down", () => {
    const problem = endProblem("failed", "model_unavailable", ["[Errno 111] Connect call failed ('127.0.0.1', 9)"]);
    expect(problem?.title).toBe("Model unavailable");
    expect(problem?.detail).toContain("could not be reached");
    expect(endProblem("failed", "model_rate_limited")?.detail).toContain("too many requests");
  });

  it("puts raw program errors in plain words, and leaves plain ones alone", () => {
    expect(plainError("server rejected WebSocket connection: HTTP 401")).toBe(KEY);
    expect(plainError("[Errno 111] Connect call failed ('127.0.0.1', 9)")).toContain("could not be reached");
    expect(plainError("the session could not be prepared: ValueError")).toContain("Something went wrong on the server");
    expect(plainError("the nested agent took too long")).toBe("the nested agent took too long");
    expect(isRawError("the nested agent took too long")).toBe(false);
    expect(isRawError("Traceback (most recent call last):")).toBe(true);
  });
});
