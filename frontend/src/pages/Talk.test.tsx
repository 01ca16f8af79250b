import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { MemoryRouter } from "react-router";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { SessionOut } from "../lib/types";
import type { StreamRefusal, StreamStatus } from "../session/eventStream";
import { emptyView, initialStream } from "../session/events";
import type { VoiceSessionApi } from "../session/VoiceSession";

// Talk on its own: the voice session and the server's config are stand-ins.
let voice: VoiceSessionApi;
vi.mock("../session/VoiceSession", () => ({
  WEB_APP_TRANSPORTS: ["webrtc", "daily"],
  useVoiceSession: () => voice,
}));
vi.mock("../lib/config", () => ({
  useConfig: () => ({
    config: { profiles: ["echo"], default_profile: "echo", transports: ["webrtc"], ice_servers: [] },
    problem: null,
  }),
}));

const { Talk } = await import("./Talk");

afterEach(cleanup);

const session = {
  session_id: "s1",
  conversation_id: "c1",
  status: "queued",
  profile: "echo",
  transport: "webrtc",
} as SessionOut;

/** A live session, queued as first in line, whose live events are in the given state. */
function renderTalk(streamStatus: StreamStatus, streamRefusal: StreamRefusal | null = null) {
  voice = {
    phase: "live",
    session,
    view: { ...emptyView(), status: "queued", queue: { position: 1, estimatedWaitS: null } },
    stream: initialStream,
    streamStatus,
    streamRefusal,
    transportState: "disconnected",
    botReady: false,
    rtvi: { userSpeaking: false, botSpeaking: false },
    micEnabled: true,
    problem: null,
    start: vi.fn(),
    stop: vi.fn(),
    setMicEnabled: vi.fn(),
    dismissProblem: vi.fn(),
    reconnectEvents: vi.fn(),
    localLevel: () => 0,
    remoteLevel: () => 0,
  };
  return render(
    <MemoryRouter>
      <Talk />
    </MemoryRouter>,
  );
}

describe("Talk, when the live events are refused", () => {
  it("shows the queue while the events flow", () => {
    renderTalk("open");
    expect(screen.getByTestId("session-status").textContent).toBe("Queued — number 1 in line.");
    expect(screen.queryByTestId("stream-refused")).toBeNull();
  });

  it("says why and when it tries again, instead of the stale queue place", () => {
    renderTalk("reconnecting", {
      status: 429,
      code: "too_many_streams",
      message: "at most 20 open event streams per user; close other tabs or wait a minute",
      retryAfterS: 10,
      retryInMs: 10_000,
    });
    const alert = screen.getByRole("alert");
    expect(alert.textContent).toContain("Live updates stopped: too many open pages");
    expect(alert.textContent).toContain("close other tabs or wait a minute. Trying again in about 10 s.");
    const status = screen.getByTestId("session-status");
    expect(status.textContent).toBe("Live updates stopped — last known state: Queued.");
    expect(status.getAttribute("data-stream")).toBe("refused");
    expect(screen.queryByTestId("stream-reconnecting")).toBeNull();
    fireEvent.click(screen.getByRole("button", { name: "Try again now" }));
    expect(voice.reconnectEvents).toHaveBeenCalledTimes(1);
  });

  it("says the sign-in expired, with nothing to retry", () => {
    renderTalk("failed", { status: 401, code: "unauthorized", message: "sign in first", retryInMs: null });
    expect(screen.getByRole("alert").textContent).toContain("Your sign-in has expired");
    expect(screen.queryByRole("button", { name: /Try again/ })).toBeNull();
    expect(screen.queryByTestId("stream-failed")).toBeNull();
    expect(screen.getByTestId("session-status").textContent).toContain("Live updates stopped");
  });
});
