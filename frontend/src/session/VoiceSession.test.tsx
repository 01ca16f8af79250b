import { act, cleanup, render, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { SessionOut, VPEvent } from "../lib/types";
import type { EventStreamHandlers } from "./eventStream";
import { sessionOut } from "../testing/sessions";

// The provider with its call (call.ts) and the SDK glue (pipecat.tsx): the Pipecat client,
// the API and the event stream are stand-ins, so what it does with them (offer, hang up,
// offer again; re-attach after a reload) shows.

class FakeClient {
  static made: FakeClient[] = [];
  state = "disconnected";
  private callbacks: Record<string, ((...args: unknown[]) => void) | undefined>;
  connect = vi.fn(async (_params: unknown) => this.setState("ready"));
  disconnect = vi.fn(async () => this.setState("disconnected"));
  initDevices = vi.fn(async () => this.setState("initialized"));
  enableMic = vi.fn();
  setLogLevel = vi.fn();
  constructor(options: { callbacks: Record<string, (...args: unknown[]) => void> }) {
    this.callbacks = options.callbacks;
    FakeClient.made.push(this);
  }
  get connected() {
    return this.state === "ready";
  }
  tracks() {
    return { local: { audio: {} } };
  }
  private setState(state: string) {
    this.state = state;
    this.callbacks.onTransportStateChanged?.(state);
  }
}

vi.mock("@pipecat-ai/client-js", () => ({ PipecatClient: FakeClient, LogLevel: { WARN: 2 } }));
vi.mock("@pipecat-ai/client-react", () => ({
  PipecatClientProvider: ({ children }: { children: unknown }) => children,
  PipecatClientAudio: () => <audio data-testid="bot-audio" />,
}));
vi.mock("@pipecat-ai/small-webrtc-transport", () => ({ SmallWebRTCTransport: class {} }));
vi.mock("@pipecat-ai/daily-transport", () => ({ DailyTransport: class {} }));

const streams: { url: string; handlers: EventStreamHandlers; close: ReturnType<typeof vi.fn> }[] = [];
vi.mock("./eventStream", () => ({
  openEventStream: (url: string, handlers: EventStreamHandlers) => {
    const stream = { url, handlers, close: vi.fn() };
    streams.push(stream);
    return { ...stream, lastEventId: () => "", interrupt: vi.fn(), reconnect: vi.fn() };
  },
}));

const api = {
  createSession: vi.fn<(body: unknown) => Promise<SessionOut>>(),
  liveSessions: vi.fn<() => Promise<SessionOut[]>>(),
  endSession: vi.fn(),
  session: vi.fn(),
  peerConnect: vi.fn(),
};
vi.mock("../lib/api", async (importOriginal) => ({ ...(await importOriginal<object>()), api }));

const { VoiceSessionProvider, useVoiceSession } = await import("./VoiceSession");
type Voice = ReturnType<typeof useVoiceSession>;

const session = (status: SessionOut["status"], stateSeq: number) => sessionOut(status, stateSeq);

let voice: Voice;
function Probe() {
  voice = useVoiceSession();
  return <p data-testid="status">{voice.view.status}</p>;
}

function mount() {
  return render(
    <VoiceSessionProvider>
      <Probe />
    </VoiceSessionProvider>,
  );
}

/** The session's events, as the stream delivers them. */
function deliver(...states: [seq: number, state: string, reason: string][]) {
  const stream = streams[streams.length - 1];
  for (const [seq, state, reason] of states) {
    const event: VPEvent = { session_id: "s1", seq, ts: seq, type: "session.state", data: { state, reason } };
    act(() => stream.handlers.onEvent(event, `${seq}-0`));
  }
}

const client = () => FakeClient.made[FakeClient.made.length - 1];
const offers = () => client().connect.mock.calls.length;

beforeEach(() => {
  vi.clearAllMocks();
  FakeClient.made = [];
  streams.length = 0;
  sessionStorage.clear();
  api.liveSessions.mockResolvedValue([]);
  api.peerConnect.mockResolvedValue({ offer_url: "/api/sessions/s1/offer", ice_servers: [] });
});
afterEach(cleanup);

describe("the call's media, through the reconnect phases", () => {
  it("connects with the ICE servers the API minted for this attempt, TURN credential included", async () => {
    const turn = { urls: ["turn:turn.test:3478?transport=udp"], username: "1900000000:user-u1", credential: "c1" };
    api.peerConnect
      .mockResolvedValueOnce({ offer_url: "/api/sessions/s1/offer", ice_servers: [{ urls: ["stun:stun.test:3478"], username: null, credential: null }, turn] })
      .mockResolvedValueOnce({ offer_url: "/api/sessions/s1/offer", ice_servers: [{ ...turn, credential: "c2" }] });
    api.createSession.mockResolvedValue(session("queued", 1));
    mount();
    await act(() => voice.start({ profile: "echo", transport: "webrtc" }));
    deliver([1, "queued", "created"], [2, "starting", "picked_up"]);
    await waitFor(() => expect(offers()).toBe(1));
    // Null fields dropped: RTCPeerConnection would take a null username as the string "null".
    const iceConfig = (call: number) => (client().connect.mock.calls[call][0] as { iceConfig: { iceServers: RTCIceServer[] } }).iceConfig;
    expect(iceConfig(0)).toEqual({ iceServers: [{ urls: ["stun:stun.test:3478"] }, turn] });
    expect(JSON.stringify(JSON.parse(sessionStorage.getItem("voicepool.call")!))).not.toContain("c1");
    deliver([3, "ready", "pipeline_ready"], [4, "connected", "client_connected"], [5, "reconnecting", "client_lost"]);
    await waitFor(() => expect(offers()).toBe(2));
    expect(iceConfig(1).iceServers[0].credential).toBe("c2"); // asked again
  });

  it("offers once ready, and again each time the worker lost the media", async () => {
    api.createSession.mockResolvedValue(session("queued", 1));
    mount();
    await act(() => voice.start({ profile: "echo", transport: "webrtc" }));
    expect(JSON.parse(sessionStorage.getItem("voicepool.call")!)).toMatchObject({ session_id: "s1" });
    expect(offers()).toBe(0);
    deliver([1, "queued", "created"], [2, "starting", "picked_up"]);
    await waitFor(() => expect(offers()).toBe(1));
    expect(client().connect.mock.calls[0][0]).toMatchObject({ webrtcRequestParams: { endpoint: "/api/sessions/s1/offer" } });
    deliver([3, "ready", "pipeline_ready"], [4, "connected", "client_connected"]);

    deliver([5, "reconnecting", "client_lost"]);
    await waitFor(() => expect(offers()).toBe(2)); // hung up first, then a new offer
    expect(client().disconnect).toHaveBeenCalledTimes(1);
    expect(client().disconnect.mock.invocationCallOrder[0]).toBeLessThan(client().connect.mock.invocationCallOrder[1]);
    deliver([6, "connected", "client_reconnected"]);

    deliver([7, "recovering", "worker_lost"]);
    await waitFor(() => expect(client().disconnect).toHaveBeenCalledTimes(2));
    expect(offers()).toBe(2); // nothing to offer to while the call moves
    deliver([8, "starting", "picked_up"]);
    await waitFor(() => expect(offers()).toBe(3)); // the API holds it until ready
    deliver([9, "ready", "recovered"], [10, "connected", "client_reconnected"]);
    expect(offers()).toBe(3);

    deliver([11, "ended", "client_ended"]);
    await waitFor(() => expect(sessionStorage.getItem("voicepool.call")).toBeNull());
  });

  it("after a reload, attaches to this tab's call: the events from the start, a new offer", async () => {
    sessionStorage.setItem("voicepool.call", JSON.stringify({ session_id: "s1", transport: "webrtc" }));
    api.liveSessions.mockResolvedValue([{ ...session("reconnecting", 7), reason: "client_lost" }]);
    const { getByTestId } = mount();
    await waitFor(() => expect(streams).toHaveLength(1));
    expect(streams[0].url).toBe("/api/sessions/s1/events");
    expect(getByTestId("status").textContent).toBe("reconnecting");
    await waitFor(() => expect(offers()).toBe(1));
    // The replay from seq 1 shows no old state, and offers nothing more.
    deliver([1, "queued", "created"], [3, "ready", "pipeline_ready"], [4, "connected", "client_connected"]);
    expect(getByTestId("status").textContent).toBe("reconnecting");
    deliver([7, "reconnecting", "client_lost"], [8, "connected", "client_reconnected"]);
    expect(getByTestId("status").textContent).toBe("connected");
    expect(offers()).toBe(1);
  });

  it("leaves alone a call this tab does not remember, and forgets one that has ended", async () => {
    api.liveSessions.mockResolvedValue([session("connected", 4)]);
    mount();
    await act(async () => undefined);
    expect(api.liveSessions).not.toHaveBeenCalled();
    expect(streams).toHaveLength(0);
    cleanup();

    sessionStorage.setItem("voicepool.call", JSON.stringify({ session_id: "gone", transport: "webrtc" }));
    mount();
    await waitFor(() => expect(sessionStorage.getItem("voicepool.call")).toBeNull());
    expect(streams).toHaveLength(0);
  });

  it("does not end the call when the page goes away: it lets go of the media", async () => {
    const fetchMock = vi.fn<typeof fetch>();
    vi.stubGlobal("fetch", fetchMock);
    try {
      api.createSession.mockResolvedValue(session("queued", 1));
      mount();
      await act(() => voice.start({ profile: "echo", transport: "webrtc" }));
      deliver([2, "starting", "picked_up"], [3, "ready", "pipeline_ready"], [4, "connected", "client_connected"]);
      await waitFor(() => expect(offers()).toBe(1));
      act(() => {
        window.dispatchEvent(new Event("pagehide"));
      });
      expect(fetchMock).not.toHaveBeenCalled(); // no DELETE
      expect(client().disconnect).toHaveBeenCalled();
      expect(sessionStorage.getItem("voicepool.call")).not.toBeNull();
    } finally {
      vi.unstubAllGlobals();
    }
  });
});

describe("putting a finished call away", () => {
  it("clears a finished call back to idle, and leaves a live one alone", async () => {
    api.createSession.mockResolvedValue(session("queued", 1));
    mount();
    await act(() => voice.start({ profile: "echo", transport: "webrtc" }));
    deliver([1, "queued", "created"]);
    act(() => voice.clear());
    expect(voice.phase).toBe("live"); // not while it goes on
    expect(voice.session?.session_id).toBe("s1");
    deliver([2, "ended", "client_ended"]);
    expect(voice.phase).toBe("done");
    act(() => voice.clear());
    expect(voice.phase).toBe("idle");
    expect(voice.session).toBeNull();
    expect(voice.view.status).toBeNull();
    expect(voice.stream.events).toHaveLength(0);
  });
});

describe("the bot's sound", () => {
  it("plays in the SDK's audio element, there once a call has a client, on the speaker picked", async () => {
    api.createSession.mockResolvedValue(session("queued", 1));
    const { findByTestId, queryByTestId } = mount();
    expect(queryByTestId("bot-audio")).toBeNull(); // no SDK before a call
    await act(() => voice.start({ profile: "echo", transport: "webrtc" }));
    const audio = (await findByTestId("bot-audio")) as HTMLAudioElement & { setSinkId?: (id: string) => Promise<void> };
    audio.setSinkId = vi.fn(async () => undefined);
    act(() => voice.selectSpeaker("speaker-2"));
    expect(audio.setSinkId).toHaveBeenCalledWith("speaker-2");
    expect(voice.devices.speaker).toBe("speaker-2");
  });
});
