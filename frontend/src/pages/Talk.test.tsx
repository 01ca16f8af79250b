import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { MemoryRouter } from "react-router";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ConversationDetail, ServerConfig, SessionOut, VPEvent } from "../lib/types";
import type { StreamRefusal, StreamStatus } from "../session/eventStream";
import { currentView, emptyView, initialStream, streamReducer, type StreamAction } from "../session/events";
import type { VoiceSessionApi } from "../session/VoiceSession";

// Talk on its own: the voice session and the server's config are stand-ins.
let voice: VoiceSessionApi;
vi.mock("../session/VoiceSession", () => ({
  WEB_APP_TRANSPORTS: ["webrtc", "daily"],
  useVoiceSession: () => voice,
}));
const ECHO_ONLY = { profiles: ["echo"], default_profile: "echo", transports: ["webrtc"], ice_servers: [] };
let config: Partial<ServerConfig> = ECHO_ONLY;
vi.mock("../lib/config", () => ({
  useConfig: () => ({ config, problem: null }),
}));

const conversation = vi.fn<(id: string, signal?: AbortSignal) => Promise<ConversationDetail>>();
const liveSessions = vi.fn<() => Promise<SessionOut[]>>();
vi.mock("../lib/api", async (importOriginal) => ({
  ...(await importOriginal<object>()),
  api: {
    conversation: (id: string, signal?: AbortSignal) => conversation(id, signal),
    liveSessions: () => liveSessions(),
  },
}));

const { Talk } = await import("./Talk");

afterEach(() => {
  cleanup();
  config = ECHO_ONLY;
});

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
    clear: vi.fn(),
    dismissProblem: vi.fn(),
    reconnectEvents: vi.fn(),
    localLevel: () => 0,
    remoteLevel: () => 0,
    devices: { mics: [], mic: null, speakers: [], speaker: null },
    selectMic: vi.fn(),
    selectSpeaker: vi.fn(),
    sendText: vi.fn(async () => undefined),
    connectionStats: async () => null,
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

describe("Talk, continuing another conversation from History", () => {
  // Conversation A's call has ended on this page; History → B → "Continue this conversation".
  const sessionA = { ...session, conversation_id: "convA" } as SessionOut;
  const detailB = {
    conversation_id: "convB",
    title: null,
    preview: null,
    created_at: "2026-01-01T10:00:00Z",
    updated_at: "2026-01-01T10:01:00Z",
    duration_s: 60,
    session_count: 1,
    sessions: [
      {
        session_id: "sB",
        state: "ended",
        reason: "client_ended",
        profile: "echo",
        transport: "webrtc",
        created_at: "2026-01-01T10:00:00Z",
        ended_at: "2026-01-01T10:01:00Z",
      },
    ],
    events: [
      { session_id: "sB", seq: 1, ts: 1_700_000_000, type: "user.transcript", data: { text: "words of B" } },
    ],
  } as unknown as ConversationDetail;

  function renderContinuing(url: string) {
    const a = callThrough([...UP_TO_CONNECTED, ["ended", "client_ended"]]);
    const said: VPEvent = { session_id: "s1", seq: 9, ts: 1_700_000_009, type: "user.transcript", data: { text: "words of A" } };
    const stream = streamReducer(a.stream!, { type: "event", event: said });
    renderTalk("open", null, { ...a, stream, view: currentView(stream), phase: "done", session: sessionA });
    cleanup(); // the stand-in is made; render it at the URL
    conversation.mockResolvedValue(detailB);
    return render(
      <MemoryRouter initialEntries={[url]}>
        <Talk />
      </MemoryRouter>,
    );
  }

  it("shows B alone: B's banner and transcript, no trace of A, and Start continues B", async () => {
    renderContinuing("/?conversation=convB");
    expect(screen.getByText(/Continuing conversation/).textContent).toContain("convB".slice(0, 8));
    expect(statusText()).toBe("Not started.");
    expect(screen.queryByTestId("continue")).toBeNull(); // A's "Continue" is gone
    expect(screen.queryByText(/words of A/)).toBeNull();
    expect(chip("connected").getAttribute("data-reached")).toBe("false");
    expect(await screen.findByText("words of B")).toBeTruthy();
    expect(conversation).toHaveBeenCalledWith("convB", expect.anything());
    expect(voice.clear).toHaveBeenCalled();
    fireEvent.click(screen.getByTestId("start"));
    expect(voice.start).toHaveBeenCalledWith(expect.objectContaining({ conversationId: "convB" }));
  });

  it("keeps a finished call of the same conversation, whose Continue continues it", () => {
    renderContinuing("/?conversation=convA");
    expect(screen.getByText(/words of A/)).toBeTruthy();
    expect(voice.clear).not.toHaveBeenCalled();
    fireEvent.click(screen.getByTestId("continue"));
    expect(voice.start).toHaveBeenCalledWith(expect.objectContaining({ conversationId: "convA" }));
  });
});

describe("Talk, when the model refuses the server's key", () => {
  function renderFailed() {
    const failed = callThrough([...UP_TO_CONNECTED, ["failed", "model_unavailable"]]);
    const error: VPEvent = {
      session_id: "s1",
      seq: 6,
      ts: 1_700_000_005,
      type: "error",
      data: { message: "server rejected WebSocket connection: HTTP 401", fatal: true },
    };
    const stream = streamReducer(failed.stream!, { type: "event", event: error });
    return renderTalk("closed" as StreamStatus, null, { ...failed, stream, view: currentView(stream), phase: "done" });
  }

  it("says the key was refused, with no raw error and no 'try again later'", () => {
    renderFailed();
    const main = screen.getByRole("main").textContent ?? "";
    expect(main).toContain("The voice model refused this server's API key; an operator must fix OPENAI_API_KEY");
    expect(main).not.toMatch(/HTTP 401|rejected WebSocket|could not be reached|Try again later/);
  });

  it("shows the step it failed in as failed, not done", () => {
    renderFailed();
    expect(chip("connected").getAttribute("data-failed")).toBe("true");
    expect(chip("connected").getAttribute("data-reached")).toBe("false");
    expect(chip("connected").className).not.toContain("step-reached");
    expect(chip("connected").textContent).toContain("failed");
    expect(chip("ready").getAttribute("data-reached")).toBe("true");
  });
});

describe("Talk, with the microphone muted", () => {
  it("says so instead of 'talk now'", () => {
    renderTalk("open", null, { ...callThrough(UP_TO_CONNECTED), micEnabled: false });
    expect(statusText()).toBe("Muted — unmute to talk.");
    expect(screen.getByRole("button", { name: "Unmute" })).toBe(screen.getByTestId("mute")); // the M hint aside
    cleanup();
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    expect(statusText()).toBe("Connected — talk now.");
  });
});

describe("Talk, the focus after Start and Stop", () => {
  // A new element each time, so that React renders again with the new stand-in.
  const page = () => (
    <MemoryRouter>
      <Talk />
    </MemoryRouter>
  );

  it("moves to Stop once the call is live, and back to Start once it is over", () => {
    const { rerender } = renderTalk("open", null, { phase: "idle", session: null, view: emptyView() });
    const start = screen.getByTestId("start");
    start.focus();
    fireEvent.click(start);
    expect(voice.start).toHaveBeenCalledTimes(1);

    voice = { ...voice, phase: "creating" };
    rerender(page());
    expect(document.activeElement).toBe(document.body); // Start is gone, Stop can't take it yet
    voice = { ...voice, phase: "live", session, ...callThrough(UP_TO_CONNECTED) };
    rerender(page());
    const stop = screen.getByTestId("stop");
    expect(document.activeElement).toBe(stop);

    fireEvent.click(stop);
    expect(voice.stop).toHaveBeenCalledTimes(1);
    voice = { ...voice, phase: "stopping" };
    rerender(page());
    const ended = callThrough([...UP_TO_CONNECTED, ["ended", "client_ended"]]);
    voice = { ...voice, phase: "done", ...ended };
    rerender(page());
    expect(document.activeElement).toBe(screen.getByTestId("start"));
  });

  it("leaves the focus alone when nobody pressed anything", () => {
    const { rerender } = renderTalk("open", null, { phase: "idle", session: null, view: emptyView() });
    voice = { ...voice, phase: "live", session, ...callThrough(UP_TO_CONNECTED) };
    rerender(page());
    expect(document.activeElement).toBe(document.body);
  });
});

describe("Talk, profiles the server could offer but does not", () => {
  it("shows the assistant as a disabled choice that says what it needs", () => {
    config = { ...ECHO_ONLY, unavailable_profiles: [{ name: "assistant", needs: "OPENAI_API_KEY on the workers" }] };
    renderTalk("open", null, { phase: "idle", session: null, view: emptyView() });
    const option = screen.getByRole("option", { name: "assistant (needs OPENAI_API_KEY on the workers)" });
    expect((option as HTMLOptionElement).disabled).toBe(true);
    expect((screen.getByRole("option", { name: "echo" }) as HTMLOptionElement).disabled).toBe(false);
    expect((screen.getByLabelText("Profile") as HTMLSelectElement).value).toBe("echo");
  });
});

describe("Talk, when starting is refused for too many sessions", () => {
  it("lists the user's live calls under the problem", async () => {
    liveSessions.mockResolvedValue([
      { ...session, session_id: "other", status: "connected", created_at: "2026-01-01T10:00:00Z" },
    ]);
    renderTalk("open", null, {
      phase: "idle",
      session: null,
      view: emptyView(),
      problem: { title: "Too many sessions", detail: "…", code: "too_many_sessions" },
    });
    expect((await screen.findByTestId("live-sessions-message")).textContent).toBe(
      "You have 1 call going on; end one to start another.",
    );
    cleanup();
    renderTalk("open", null, { phase: "idle", session: null, view: emptyView(), problem: { title: "No capacity" } });
    expect(screen.queryByTestId("live-sessions")).toBeNull();
  });
});

describe("Talk, keyboard and push to talk", () => {
  it("M mutes, Esc stops, not while typing; the hints are shown but not in the buttons' names", () => {
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    expect(screen.getByRole("button", { name: "Mute" }).getAttribute("aria-keyshortcuts")).toBe("M");
    expect(screen.getByTestId("mute").querySelector("kbd")?.textContent).toBe("M");
    fireEvent.keyDown(window, { key: "m" });
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(false);
    fireEvent.keyDown(screen.getByTestId("push-to-talk"), { key: "Escape" }); // a checkbox is no text box
    expect(voice.stop).toHaveBeenCalledTimes(1);
    const box = document.createElement("input");
    document.body.append(box);
    fireEvent.keyDown(box, { key: "m" });
    expect(voice.setMicEnabled).toHaveBeenCalledTimes(1); // typing an "m" is not a shortcut
    box.remove();
  });

  it("push to talk: the microphone is on only while Space or the button is held", () => {
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    fireEvent.click(screen.getByTestId("push-to-talk"));
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(false);
    expect(screen.queryByTestId("mute")).toBeNull();
    fireEvent.keyDown(window, { key: " " });
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(true);
    fireEvent.keyUp(window, { key: " " });
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(false);
    const hold = screen.getByTestId("hold-to-talk");
    fireEvent.pointerDown(hold);
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(true);
    expect(hold.textContent).toContain("Talking…");
    fireEvent.pointerUp(hold);
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(false);
    fireEvent.click(screen.getByTestId("push-to-talk")); // off again: the microphone is back on
    expect(voice.setMicEnabled).toHaveBeenLastCalledWith(true);
  });

  it("shows the call's time and who is answering once connected", () => {
    vi.useFakeTimers({ now: (1_700_000_003 + 65) * 1000 }); // connected at ts …003 (callThrough)
    renderTalk("open", null, { ...callThrough(UP_TO_CONNECTED), rtvi: { userSpeaking: false, botSpeaking: true } });
    vi.useRealTimers();
    expect(screen.getByTestId("call-time").textContent).toBe("1:05");
    expect(screen.getByTestId("agent-state").textContent).toBe("Speaking");
    expect(screen.getByTestId("response-time").textContent).toBe("—");
  });
});

describe("Talk, devices", () => {
  it("offers the microphones the browser knows, and switches to the one picked", () => {
    const mic = (id: string, label: string) => ({ deviceId: id, label, kind: "audioinput", groupId: "" }) as MediaDeviceInfo;
    renderTalk("open", null, {
      ...callThrough(UP_TO_CONNECTED),
      devices: { mics: [mic("a", "Built-in"), mic("b", "")], mic: "a", speakers: [], speaker: null },
    });
    const picker = screen.getByTestId("mic-picker") as HTMLSelectElement;
    expect([...picker.options].map((o) => o.textContent)).toEqual(["Built-in", "Microphone 2"]);
    expect(picker.value).toBe("a");
    fireEvent.change(picker, { target: { value: "b" } });
    expect(voice.selectMic).toHaveBeenCalledWith("b");
  });

  it("shows no picker before the browser has listed any", () => {
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    expect(screen.queryByTestId("mic-picker")).toBeNull();
  });
});

describe("Talk, typing to the assistant", () => {
  const assistantCall = () => ({ ...callThrough(UP_TO_CONNECTED), session: { ...session, profile: "assistant" } });

  it("sends the typed words and clears the box; keeps them when sending fails", async () => {
    renderTalk("open", null, assistantCall());
    const box = screen.getByTestId("type-to-text") as HTMLInputElement;
    fireEvent.change(box, { target: { value: "  book a table  " } });
    fireEvent.keyDown(box, { key: "m" }); // typing an "m" here mutes nothing
    expect(voice.setMicEnabled).not.toHaveBeenCalled();
    fireEvent.submit(screen.getByTestId("type-to"));
    expect(voice.sendText).toHaveBeenCalledWith("book a table");
    await vi.waitFor(() => expect(box.value).toBe(""));

    voice.sendText = vi.fn(async () => Promise.reject(new Error("not connected")));
    cleanup();
    renderTalk("open", null, { ...assistantCall(), sendText: voice.sendText });
    const again = screen.getByTestId("type-to-text") as HTMLInputElement;
    fireEvent.change(again, { target: { value: "hello" } });
    fireEvent.submit(screen.getByTestId("type-to"));
    expect(await screen.findByText(/didn.t go through/)).toBeTruthy();
    expect(again.value).toBe("hello");
  });

  it("is not offered for the echo bot", () => {
    renderTalk("open", null, callThrough(UP_TO_CONNECTED));
    expect(screen.queryByTestId("type-to")).toBeNull();
  });
});

describe("Talk, profiles", () => {
  it("names each profile and says in a line what it does", () => {
    config = {
      ...ECHO_ONLY,
      profile_info: {
        echo: { label: "Echo test", description: "Hear yourself back." },
        assistant: { label: "Archie, the assistant", description: "Talk to Archie." },
      },
      unavailable_profiles: [{ name: "assistant", needs: "OPENAI_API_KEY on the workers" }],
    };
    renderTalk("open", null, { phase: "idle", session: null });
    const select = screen.getByLabelText("Profile") as HTMLSelectElement;
    expect([...select.options].map((o) => o.textContent)).toEqual([
      "Echo test",
      "Archie, the assistant (needs OPENAI_API_KEY on the workers)",
    ]);
    expect(screen.getByTestId("profile-description").textContent).toBe("Hear yourself back.");
    expect(select.getAttribute("aria-describedby")).toBe("profile-description");
  });
});
