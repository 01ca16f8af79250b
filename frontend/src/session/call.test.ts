import type { PipecatClient, RTVIEventCallbacks } from "@pipecat-ai/client-js";
import { afterEach, beforeEach, describe, expect, it, vi, type Mock } from "vitest";
import { ApiError } from "../lib/api";
import type { SessionOut, VPEvent } from "../lib/types";
import { CallMachine, FINAL_EVENT_WAIT_MS, type CallApi, type ClientFactory, type Phase } from "./call";
import type { EventStreamHandlers } from "./eventStream";
import { sessionOut } from "../testing/sessions";

// The call on its own: the Pipecat client, the API and the event stream are stand-ins.

/** How the stand-in client opens the microphone (a test makes it wait, or fail). */
let openMicrophone: () => Promise<void>;

class FakeClient {
  state = "disconnected";
  connect = vi.fn(async (_params: unknown) => this.setState("ready"));
  disconnect = vi.fn(async () => this.setState("disconnected"));
  initDevices = vi.fn(async () => {
    await openMicrophone();
    this.setState("initialized");
  });
  enableMic = vi.fn();
  constructor(readonly callbacks: RTVIEventCallbacks) {}
  get connected() {
    return this.state === "ready";
  }
  tracks() {
    return { local: { audio: {} } };
  }
  setState(state: string) {
    this.state = state;
    this.callbacks.onTransportStateChanged?.(state as never);
  }
}

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((yes, no) => {
    resolve = yes;
    reject = no;
  });
  return { promise, resolve, reject };
}

const session = (status: SessionOut["status"], stateSeq: number, id = "s1") =>
  sessionOut(status, stateSeq, id);

let clients: FakeClient[];
let streams: { url: string; handlers: EventStreamHandlers; close: Mock<() => void> }[];
let media: { enableMic: Mock<(enable: boolean) => void>; release: Mock<() => Promise<void>> };
let createClient: Mock<ClientFactory>;
let api: {
  createSession: Mock<(body: unknown) => Promise<SessionOut>>;
  liveSessions: Mock<() => Promise<SessionOut[]>>;
  endSession: Mock<(id: string) => Promise<SessionOut>>;
  session: Mock;
  peerConnect: Mock;
};
let call: CallMachine;
/** Each phase the call went through, as its subscribers saw it. */
let phases: Phase[];

beforeEach(() => {
  sessionStorage.clear();
  openMicrophone = async () => undefined;
  clients = [];
  streams = [];
  media = { enableMic: vi.fn(), release: vi.fn(async () => undefined) };
  createClient = vi.fn<ClientFactory>(async (kind, callbacks) => {
    const client = new FakeClient(callbacks);
    clients.push(client);
    return { kind, client: client as unknown as PipecatClient, media: kind === "webrtc" ? media : null };
  });
  api = {
    createSession: vi.fn(async () => session("queued", 1)),
    liveSessions: vi.fn(async (): Promise<SessionOut[]> => []),
    endSession: vi.fn(async (id: string) => ({ ...session("ended", 99, id), reason: "client_ended" })),
    session: vi.fn(),
    peerConnect: vi.fn(async () => ({ offer_url: "/api/sessions/s1/offer", ice_servers: [] })),
  };
  call = new CallMachine({
    createClient,
    api: api as unknown as CallApi,
    openEvents: (url, handlers) => {
      const stream = { url, handlers, close: vi.fn<() => void>() };
      streams.push(stream);
      return { close: stream.close, lastEventId: () => "", interrupt: vi.fn(), reconnect: vi.fn() };
    },
  });
  phases = [];
  call.subscribe(() => {
    const { phase } = call.getSnapshot();
    if (phases[phases.length - 1] !== phase) phases.push(phase);
  });
});
afterEach(() => vi.useRealTimers());

const now = () => call.getSnapshot();
const client = () => clients[clients.length - 1];
const offers = () => client().connect.mock.calls.length;
const startEcho = () => call.start({ profile: "echo", transport: "webrtc" });

/** The session's states, as its event stream delivers them. */
function deliver(...states: [seq: number, state: string, reason?: string][]) {
  const stream = streams[streams.length - 1];
  for (const [seq, state, reason = null] of states) {
    const event: VPEvent = { session_id: "s1", seq, ts: seq, type: "session.state", data: { state, reason } };
    stream.handlers.onEvent(event, `${seq}-0`);
  }
}

describe("a call, phase by phase", () => {
  it("goes idle → mic → creating → live → stopping → done, and back to idle when put away", async () => {
    const mic = deferred<void>();
    openMicrophone = () => mic.promise;
    const created = deferred<SessionOut>();
    api.createSession.mockReturnValue(created.promise);

    const starting = startEcho();
    expect(now().phase).toBe("mic");
    await vi.waitFor(() => expect(client().initDevices).toHaveBeenCalled());
    expect(now().client).toBe(client());
    mic.resolve();
    await vi.waitFor(() => expect(now().phase).toBe("creating"));
    expect(api.createSession).toHaveBeenCalledWith({ transport: "webrtc", profile: "echo" });

    created.resolve(session("queued", 1));
    await starting;
    expect(now().phase).toBe("live");
    expect(now().session?.session_id).toBe("s1");
    expect(streams[0].url).toBe("/api/sessions/s1/events");
    expect(JSON.parse(sessionStorage.getItem("voicepool.call")!)).toEqual({ session_id: "s1", transport: "webrtc" });
    expect(offers()).toBe(0); // queued: no worker to offer to yet

    deliver([1, "queued", "created"], [2, "starting", "picked_up"]);
    await vi.waitFor(() => expect(offers()).toBe(1));
    expect(client().connect.mock.calls[0][0]).toMatchObject({ webrtcRequestParams: { endpoint: "/api/sessions/s1/offer" } });
    deliver([3, "ready", "pipeline_ready"], [4, "connected", "client_connected"]);
    expect(now().view.status).toBe("connected");
    expect(now().transportState).toBe("ready");

    const stopping = call.stop();
    expect(now().phase).toBe("stopping");
    await stopping;
    expect(api.endSession).toHaveBeenCalledWith("s1");
    expect(now().phase).toBe("done");
    expect(now().view).toMatchObject({ status: "ended", reason: "client_ended", final: true });
    // The API answered before the stream's own end: the stream waits for it, then closes.
    expect(streams[0].close).not.toHaveBeenCalled();
    deliver([5, "ended", "client_ended"]);
    expect(streams[0].close).toHaveBeenCalled();
    expect(now().stream.events.map((e) => e.data.state)).toEqual(["queued", "starting", "ready", "connected", "ended"]);
    expect(client().disconnect).toHaveBeenCalled();
    await vi.waitFor(() => expect(media.release).toHaveBeenCalled());
    expect(sessionStorage.getItem("voicepool.call")).toBeNull();

    call.clear();
    expect(now().phase).toBe("idle");
    expect(now().session).toBeNull();
    expect(now().stream.events).toHaveLength(0);
    expect(phases).toEqual(["mic", "creating", "live", "stopping", "done", "idle"]);
  });

  it("closes a finished call's stream after a while if its final event never comes", async () => {
    await startEcho();
    deliver([1, "queued", "created"], [2, "starting", "picked_up"]);
    vi.useFakeTimers();
    await call.stop();
    expect(now().phase).toBe("done");
    expect(streams[0].close).not.toHaveBeenCalled();
    vi.advanceTimersByTime(FINAL_EVENT_WAIT_MS);
    expect(streams[0].close).toHaveBeenCalledTimes(1);
    deliver([3, "ended", "client_ended"]); // late: nothing more to close
    expect(streams[0].close).toHaveBeenCalledTimes(1);
  });

  it("ends with the session's final event too, and starts again from done with the same client", async () => {
    await startEcho();
    deliver([1, "queued", "created"], [2, "failed", "pipeline_error"]);
    expect(now().phase).toBe("done");
    expect(streams[0].close).toHaveBeenCalled();
    api.createSession.mockResolvedValue(session("queued", 1, "s2"));
    await startEcho();
    expect(now().phase).toBe("live");
    expect(now().session?.session_id).toBe("s2");
    expect(createClient).toHaveBeenCalledTimes(1);
    expect(phases).toEqual(["mic", "creating", "live", "done", "mic", "creating", "live"]);
  });
});

describe("Stop while the call is being set up", () => {
  it("while the session is being created: ends it as soon as it exists, and never offers", async () => {
    const created = deferred<SessionOut>();
    api.createSession.mockReturnValue(created.promise);
    void startEcho();
    await vi.waitFor(() => expect(now().phase).toBe("creating"));
    const stopped = call.stop();
    expect(now().phase).toBe("stopping");
    created.resolve(session("starting", 2)); // a worker has it already: it would be offered to
    await stopped;
    expect(api.endSession).toHaveBeenCalledWith("s1");
    expect(offers()).toBe(0);
    expect(now().phase).toBe("done");
    expect(sessionStorage.getItem("voicepool.call")).toBeNull();
    expect(phases).toEqual(["mic", "creating", "stopping", "done"]);
  });

  it("while the microphone opens: no session is made, the microphone is let go", async () => {
    const mic = deferred<void>();
    openMicrophone = () => mic.promise;
    void startEcho();
    const stopped = call.stop();
    mic.resolve();
    await stopped;
    expect(api.createSession).not.toHaveBeenCalled();
    expect(media.release).toHaveBeenCalled();
    expect(now()).toMatchObject({ phase: "idle", session: null, problem: null });
    expect(phases).toEqual(["mic", "stopping", "idle"]);
  });
});

describe("a call that does not come about", () => {
  it("a refused microphone makes no session", async () => {
    openMicrophone = async () => {
      throw new DOMException("Permission denied", "NotAllowedError");
    };
    await startEcho();
    expect(api.createSession).not.toHaveBeenCalled();
    expect(now().phase).toBe("idle");
    expect(now().problem?.title).toBe("No microphone permission");
  });

  it("the API's refusal: the microphone is let go, and the page says why", async () => {
    api.createSession.mockRejectedValue(new ApiError(503, "no_workers", "no worker serves this pool"));
    await startEcho();
    expect(media.release).toHaveBeenCalled();
    expect(now().phase).toBe("idle");
    expect(now().problem).toMatchObject({ title: "No voice workers are running", code: "no_workers" });
    expect(streams).toHaveLength(0);
    expect(phases).toEqual(["mic", "creating", "idle"]);
  });

  it("the call's code could not be loaded: said so, not blamed on the microphone", async () => {
    createClient.mockRejectedValue(new TypeError("Failed to fetch dynamically imported module"));
    await startEcho();
    expect(now().phase).toBe("idle");
    expect(now().problem?.title).toBe("The call could not be set up");
    expect(now().problem?.detail).toContain("Reload the page");
  });

  it("a transport the web app can't drive is refused before anything opens", async () => {
    await call.start({ profile: "echo", transport: "websocket" });
    expect(createClient).not.toHaveBeenCalled();
    expect(now().phase).toBe("idle");
    expect(now().problem?.title).toBe("The web app can't use that transport");
  });

  it("a failed audio connection is shown, after offering again on 409 not_ready", async () => {
    vi.useFakeTimers();
    await startEcho();
    client()
      .connect.mockRejectedValueOnce(new ApiError(409, "not_ready", "no worker had it ready", 1))
      .mockRejectedValueOnce(new Error("ICE failed"));
    deliver([2, "starting", "picked_up"]);
    await vi.advanceTimersByTimeAsync(0);
    expect(offers()).toBe(1);
    await vi.advanceTimersByTimeAsync(1000); // Retry-After
    expect(offers()).toBe(2);
    expect(now().problem).toEqual({ title: "The audio connection failed", detail: "ICE failed" });
    expect(now().phase).toBe("live"); // the call goes on: it can still be stopped
  });
});

describe("after a reload", () => {
  beforeEach(() => {
    sessionStorage.setItem("voicepool.call", JSON.stringify({ session_id: "s1", transport: "webrtc" }));
  });

  it("attaches to this tab's call: its events from the start, one new offer", async () => {
    api.liveSessions.mockResolvedValue([{ ...session("reconnecting", 7), reason: "client_lost" }]);
    const leave = call.connectPage();
    await vi.waitFor(() => expect(offers()).toBe(1));
    expect(phases).toEqual(["mic", "live"]);
    expect(streams[0].url).toBe("/api/sessions/s1/events");
    // The replay from seq 1 shows no old state, and offers nothing more.
    deliver([1, "queued", "created"], [3, "ready", "pipeline_ready"], [4, "connected", "client_connected"]);
    expect(now().view.status).toBe("reconnecting");
    deliver([7, "reconnecting", "client_lost"], [8, "connected", "client_reconnected"]);
    expect(now().view.status).toBe("connected");
    expect(offers()).toBe(1);

    leave(); // the provider unmounted (signed out): everything ends
    expect(streams[0].close).toHaveBeenCalled();
    expect(client().disconnect).toHaveBeenCalled();
  });

  it("offers even while the worker still counts the call as connected (the old page's media)", async () => {
    api.liveSessions.mockResolvedValue([{ ...session("connected", 4), reason: "client_connected" }]);
    call.connectPage();
    await vi.waitFor(() => expect(offers()).toBe(1));
    deliver([5, "reconnecting", "client_lost"]); // the worker noticing, while our offer is under way
    deliver([6, "connected", "client_reconnected"]);
    expect(offers()).toBe(1);
  });

  it("a Stop while its microphone opens ends the call it found", async () => {
    const mic = deferred<void>();
    openMicrophone = () => mic.promise;
    api.liveSessions.mockResolvedValue([{ ...session("reconnecting", 7), reason: "client_lost" }]);
    call.connectPage();
    await vi.waitFor(() => expect(now().phase).toBe("mic"));
    const stopped = call.stop();
    mic.resolve();
    await stopped;
    expect(api.endSession).toHaveBeenCalledWith("s1");
    expect(offers()).toBe(0);
    expect(now().phase).toBe("done");
  });

  it("forgets a call that has ended meanwhile", async () => {
    call.connectPage();
    await vi.waitFor(() => expect(sessionStorage.getItem("voicepool.call")).toBeNull());
    expect(createClient).not.toHaveBeenCalled();
    expect(now().phase).toBe("idle");
  });
});

describe("the snapshot", () => {
  it("is the same frozen object until something changes, and each change is told once", async () => {
    const first = now();
    expect(now()).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    const told = vi.fn();
    call.subscribe(told);
    call.dismissProblem();
    call.setMicEnabled(true);
    call.clear(); // nothing to put away
    await call.stop(); // nothing to stop
    expect(now()).toBe(first);
    expect(told).not.toHaveBeenCalled();

    call.setMicEnabled(false);
    expect(told).toHaveBeenCalledTimes(1);
    expect(now()).not.toBe(first);
    expect(now().micEnabled).toBe(false);
    expect(now().view).toBe(first.view); // what did not change keeps its identity

    await startEcho();
    const live = now();
    deliver([1, "queued", "created"]);
    const view = now().view;
    client().setState("connecting");
    expect(now()).not.toBe(live);
    expect(now().view).toBe(view);
  });

  it("moves only along the lifecycle: Start while live, or Clear before the end, does nothing", async () => {
    await startEcho();
    await startEcho();
    expect(api.createSession).toHaveBeenCalledTimes(1);
    call.clear();
    expect(now().phase).toBe("live");
    expect(now().session?.session_id).toBe("s1");
  });
});

describe("the microphone and the client", () => {
  it("mutes the track before the media is up, and through the client (which tells the bot) after", async () => {
    await startEcho();
    call.setMicEnabled(false);
    expect(media.enableMic).toHaveBeenLastCalledWith(false);
    expect(client().enableMic).not.toHaveBeenCalled();
    deliver([2, "starting", "picked_up"]);
    await vi.waitFor(() => expect(client().connected).toBe(true));
    call.setMicEnabled(true);
    expect(client().enableMic).toHaveBeenLastCalledWith(true);
  });

  it("makes a new client for another transport, and no longer listens to the old one", async () => {
    await startEcho();
    deliver([2, "ended", "client_ended"]);
    const old = client();
    await call.start({ profile: "echo", transport: "daily" });
    expect(createClient).toHaveBeenLastCalledWith("daily", expect.anything());
    expect(old.disconnect).toHaveBeenCalled();
    expect(now().client).toBe(client());
    expect(client()).not.toBe(old);
    const state = now().transportState;
    old.setState("ready");
    expect(now().transportState).toBe(state);
  });
});
