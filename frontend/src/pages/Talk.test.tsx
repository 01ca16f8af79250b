import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { MemoryRouter } from "react-router";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { SessionOut, VPEvent } from "../lib/types";
import type { StreamRefusal, StreamStatus } from "../session/eventStream";
import { currentView, emptyView, initialStream, streamReducer, type StreamAction } from "../session/events";
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
function renderTalk(
  streamStatus: StreamStatus,
  streamRefusal: StreamRefusal | null = null,
  overrides: Partial<VoiceSessionApi> = {},
) {
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
    playbackBlocked: false,
    resumePlayback: vi.fn(),
    start: vi.fn(),
    stop: vi.fn(),
    setMicEnabled: vi.fn(),
    dismissProblem: vi.fn(),
    reconnectEvents: vi.fn(),
    localLevel: () => 0,
    remoteLevel: () => 0,
    ...overrides,
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

/** A call that went through `states` (each a state event, in order): what Talk is given. */
function callThrough(states: [string, string][]): Partial<VoiceSessionApi> {
  const events: VPEvent[] = states.map(([state, reason], i) => ({
    session_id: "s1",
    seq: i + 1,
    ts: 1_700_000_000 + i,
    type: "session.state",
    data: { state, reason },
  }));
  const actions: StreamAction[] = [
    { type: "reset", sessionId: "s1", conversationId: "c1" },
    ...events.map((event): StreamAction => ({ type: "event", event })),
  ];
  const stream = actions.reduce(streamReducer, initialStream);
  return { stream, view: currentView(stream), botReady: true, transportState: "ready" };
}

const UP_TO_CONNECTED: [string, string][] = [
  ["queued", "created"],
  ["starting", "picked_up"],
  ["ready", "pipeline_ready"],
  ["connected", "client_connected"],
];

const statusText = () => screen.getByTestId("session-status").textContent;
const chip = (state: string) => screen.getByTestId(`step-${state}`);

describe("Talk, when the call loses its media or its worker", () => {
  it("says it is reconnecting, with a chip for the pause", () => {
    renderTalk("open", null, callThrough([...UP_TO_CONNECTED, ["reconnecting", "client_lost"]]));
    expect(statusText()).toBe(
      "Reconnecting… — the audio connection dropped; the call waits while your browser connects again.",
    );
    expect(chip("connected").getAttribute("data-reached")).toBe("true");
    expect(chip("reconnecting").getAttribute("aria-current")).toBe("step");
    expect(chip("connected").getAttribute("aria-current")).toBeNull();
    expect(screen.queryByTestId("step-recovering")).toBeNull();
    const line = screen.getByTestId("transcript").querySelector('[data-kind="status"]');
    expect(line?.textContent).toContain("The connection to your browser dropped");
  });

  it("says it is back once connected again", () => {
    renderTalk(
      "open",
      null,
      callThrough([...UP_TO_CONNECTED, ["reconnecting", "client_lost"], ["connected", "client_reconnected"]]),
    );
    expect(statusText()).toBe("Connected — back again; talk now.");
    expect(chip("connected").getAttribute("aria-current")).toBe("step");
    expect(chip("reconnecting").getAttribute("data-reached")).toBe("true");
    expect(chip("reconnecting").getAttribute("aria-current")).toBeNull();
  });

  it("says the call is moving, then that it moved", () => {
    const moving = [...UP_TO_CONNECTED, ["recovering", "worker_lost"]] as [string, string][];
    const { unmount } = renderTalk("open", null, callThrough(moving));
    expect(statusText()).toBe(
      "Moving your call… — the worker running it stopped unexpectedly; another one takes it over, with everything said so far.",
    );
    expect(chip("recovering").getAttribute("aria-current")).toBe("step");
    unmount();

    renderTalk("open", null, callThrough([...UP_TO_CONNECTED, ["recovering", "worker_draining"]]));
    expect(statusText()).toContain("Moving your call… — its worker is being taken out of service;");
    cleanup();

    renderTalk(
      "open",
      null,
      callThrough([...moving, ["starting", "picked_up"], ["ready", "recovered"]]),
    );
    expect(statusText()).toBe("Ready — your call moved to another worker; connecting audio.");
    expect(chip("ready").getAttribute("aria-current")).toBe("step");
    expect(chip("recovering").getAttribute("data-reached")).toBe("true");
  });

  it("offers to resume the call's sound when the browser holds it back", () => {
    renderTalk("open", null, { ...callThrough(UP_TO_CONNECTED), playbackBlocked: true });
    fireEvent.click(screen.getByRole("button", { name: "Resume call" }));
    expect(voice.resumePlayback).toHaveBeenCalledTimes(1);
    cleanup();
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    expect(screen.queryByTestId("resume-call")).toBeNull();
  });
});
