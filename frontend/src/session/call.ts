// The web app's voice call, as a plain state machine: one call at a time, for the whole
// app (so a call goes on while you look at History). It owns the Pipecat client, the
// session's event stream and the microphone; VoiceSession.tsx hands it to React
// (useSyncExternalStore over subscribe/getSnapshot).
//
// Phases: idle → mic → creating → live → stopping → done (NEXT below says which moves
// there are besides). Open the microphone first (a refused permission never creates a
// session) → POST /api/sessions → EventSource(events_url) → once the session is
// `starting`/`ready`, PipecatClient.connect() with SmallWebRTCTransport posting its SDP
// offer to offer_url (the API waits for `ready`), our cookie going along (same origin)
// and the CSRF token as a header, on the offer POST and on the ICE PATCHes alike →
// DELETE /api/sessions/{id} to stop.
//
// The call survives the page: leaving it (a reload, a closed tab) does not end it, the
// worker holds it (`reconnecting`) for its reconnect grace. The tab remembers its call
// (sessionStorage) and, loaded again, finds it among the user's live sessions
// (GET /api/sessions?live=true) and attaches to it: the events from the start (the
// transcript so far), then a new offer. When the worker loses the media (`reconnecting`)
// or the call moves to another worker (`recovering`), the client hangs up and connects
// again (reconnect.ts).
//
// The Pipecat SDK is loaded when a call first needs a client (pipecat.tsx), not with the app.

import type { Participant, PipecatClient, RTVIEventCallbacks, TransportState } from "@pipecat-ai/client-js";
import { api as httpApi, ApiError, csrfHeaders, errorFromResponse } from "../lib/api";
import type { IceServer, SessionOut } from "../lib/types";
import { audioContext, monitorTrack, playbackAllowed, type LevelMonitor } from "./audio";
import { openEventStream, type EventStream, type StreamRefusal, type StreamStatus } from "./eventStream";
import { currentView, initialStream, streamReducer, type SessionView, type StreamAction, type StreamState } from "./events";
import type { BrowserMediaManager } from "./mediaManager";
import { apiProblem, loadProblem, micProblem, type Problem } from "./messages";
import { newPlan, nextMediaStep, type MediaKind } from "./reconnect";

export type Phase = "idle" | "mic" | "creating" | "live" | "stopping" | "done";

/** The moves between phases; any other is ignored. */
const NEXT: Readonly<Record<Phase, readonly Phase[]>> = {
  // Start; or, after a reload, this tab's call found again.
  idle: ["mic"],
  // The microphone open: ask for a session, or attach to the call found (live, or done if it
  // has ended). Stop pressed. Refused: back to what was shown before (nothing, or the last call).
  mic: ["creating", "live", "done", "stopping", "idle"],
  // Created; Stop pressed (the session is ended as soon as it exists); refused.
  creating: ["live", "stopping", "idle", "done"],
  // Stop pressed; the session's final state came.
  live: ["stopping", "done"],
  // Ended; the end refused (the call goes on); a start stopped before it made a session.
  stopping: ["done", "live", "idle"],
  // Start again; put away (clear).
  done: ["mic", "idle"],
};

/** Transports the web app can drive (the server lists the ones it offers in /api/config). */
export const WEB_APP_TRANSPORTS: readonly string[] = ["webrtc", "daily"];

/** The Pipecat client for the session at hand, as a ClientFactory makes it. */
export interface CallClient {
  kind: MediaKind;
  client: PipecatClient;
  /** The microphone of a SmallWebRTC client (a Daily client has its own). */
  media: Pick<BrowserMediaManager, "enableMic" | "release"> | null;
}

/** Makes the client for a transport, its events going to `callbacks`. */
export type ClientFactory = (kind: MediaKind, callbacks: RTVIEventCallbacks) => Promise<CallClient>;

export type CallApi = Pick<typeof httpApi, "createSession" | "liveSessions" | "endSession" | "session" | "peerConnect">;

export interface CallOptions {
  /** Default: the Pipecat SDK's client (pipecat.tsx, loaded then). */
  createClient?: ClientFactory;
  api?: CallApi;
  openEvents?: typeof openEventStream;
  /** The `<audio>` element the bot's sound plays in (the SDK's PipecatClientAudio renders it). */
  audioElement?: () => HTMLAudioElement | null;
}

export interface Devices {
  mics: MediaDeviceInfo[];
  mic: string | null;
  speakers: MediaDeviceInfo[];
  speaker: string | null;
}

export interface StartOptions {
  profile: string;
  transport: string;
  conversationId?: string | null;
}

export interface CallSnapshot {
  phase: Phase;
  session: SessionOut | null;
  view: SessionView;
  stream: StreamState;
  streamStatus: StreamStatus | null;
  /** The API refused the live events (until they flow again): what is shown is stale. */
  streamRefusal: StreamRefusal | null;
  transportState: TransportState;
  /** The bot answered the client's ready message (RTVI bot-ready). */
  botReady: boolean;
  /** Speaking, as the bot's pipeline reports it over the data channel (RTVI); faster than events. */
  rtvi: { userSpeaking: boolean; botSpeaking: boolean };
  micEnabled: boolean;
  problem: Problem | null;
  /** The browser holds the call's sound until a click (after a reload): offer "Resume call". */
  playbackBlocked: boolean;
  /** Microphones and speakers (known once the microphone is open), and the ones in use. */
  devices: Devices;
  /** The Pipecat client (null until a call needed one), for the SDK's audio element. */
  client: PipecatClient | null;
}

const QUIET = { userSpeaking: false, botSpeaking: false };

const INITIAL: CallSnapshot = Object.freeze({
  phase: "idle",
  session: null,
  view: currentView(initialStream),
  stream: initialStream,
  streamStatus: null,
  streamRefusal: null,
  transportState: "disconnected",
  botReady: false,
  rtvi: QUIET,
  micEnabled: true,
  problem: null,
  playbackBlocked: false,
  devices: { mics: [], mic: null, speakers: [], speaker: null },
  client: null,
});

/** Test and debugging hook: levels measured in the page, and the call's state. */
export interface DebugHandle {
  remoteRms(): number;
  remotePeakRms(): number;
  localRms(): number;
  localPeakRms(): number;
  /** Whether the microphone track the call sends is on (muted / push to talk: off). */
  localTrackEnabled(): boolean | null;
  /** The microphone track the connection sends (after a switch: the new one). */
  sentAudioTrack(): { id: string; label: string } | null;
  state(): Record<string, unknown>;
  interruptEvents(): void;
}

declare global {
  interface Window {
    __voicepool?: DebugHandle;
  }
}

/** The call's audio transceiver. SmallWebRTCTransport keeps its RTCPeerConnection in `pc`
 * (not typed; its own media manager reaches the sender the same way); other transports
 * (Daily's) have none of ours. */
function peerConnection(transport: unknown): RTCPeerConnection | null {
  return (transport as { pc?: RTCPeerConnection | null } | null)?.pc ?? null;
}

export function audioTransceiver(transport: unknown): RTCRtpTransceiver | undefined {
  return peerConnection(transport)
    ?.getTransceivers()
    .find((t) => t.receiver.track?.kind === "audio");
}

/** The API's refusal of the SDP offer, when that is why the SDK's connect() failed. */
async function offerRefusal(error: unknown): Promise<ApiError | null> {
  const cause = (error as { cause?: unknown } | null)?.cause;
  if (typeof Response !== "undefined" && cause instanceof Response) return errorFromResponse(cause);
  return error instanceof ApiError ? error : null;
}

function connectProblem(error: unknown, refusal: ApiError | null): Problem {
  if (refusal) return apiProblem(refusal, "The audio connection failed");
  return {
    title: "The audio connection failed",
    detail: error instanceof Error && error.message ? error.message : "The browser could not connect its audio to the worker.",
  };
}

const OFFER_RETRIES = 3;
/** How long a finished call's event stream waits for the final event the API's answer to
 * Stop came before (the API has it by then; it is on its way). */
export const FINAL_EVENT_WAIT_MS = 3000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The API's ICE server as RTCPeerConnection takes it: no null fields (STUN has no credential). */
function rtcIceServer(server: IceServer): RTCIceServer {
  return {
    urls: server.urls,
    ...(server.username ? { username: server.username } : {}),
    ...(server.credential ? { credential: server.credential } : {}),
  };
}

/** Transport states in which the client's media is up (see reconnect.ts). */
const MEDIA_UP: ReadonlySet<string> = new Set(["connected", "ready"]);

// This tab's live call, so that a reload finds it again. sessionStorage: per tab (another
// tab has its own call, or none), kept across reloads, gone with the tab.
const CALL_KEY = "voicepool.call";

interface RememberedCall {
  session_id: string;
  transport: string;
}

function remember(call: RememberedCall): void {
  try {
    sessionStorage.setItem(CALL_KEY, JSON.stringify(call));
  } catch {
    // storage disabled: a reload then starts afresh
  }
}

function recall(): RememberedCall | null {
  try {
    const call = JSON.parse(sessionStorage.getItem(CALL_KEY) ?? "null") as Partial<RememberedCall> | null;
    if (!call || typeof call.session_id !== "string" || typeof call.transport !== "string") return null;
    return { session_id: call.session_id, transport: call.transport };
  } catch {
    return null;
  }
}

function forget(sessionId: string): void {
  try {
    if (recall()?.session_id === sessionId) sessionStorage.removeItem(CALL_KEY);
  } catch {
    // nothing to forget
  }
}

const loadPipecatClient: ClientFactory = async (kind, callbacks) =>
  (await import("./pipecat")).createCallClient(kind, callbacks);

export class CallMachine {
  private snapshot: CallSnapshot = INITIAL;
  private readonly listeners = new Set<() => void>();
  private readonly createClient: ClientFactory;
  private readonly api: CallApi;
  private readonly openEvents: typeof openEventStream;
  private readonly audioElement: () => HTMLAudioElement | null;

  /** One Pipecat client at a time, for the transport of the session at hand; a new one
   * when that changes (the Daily one creates a daily-js call object at once, so it is
   * made only for a Daily session). */
  private slot: CallClient | null = null;
  /** Bumped with each client made: the events of a client replaced are not this call's. */
  private clientSerial = 0;
  private events: EventStream | null = null;
  /** A finished call's stream, kept until its final event comes (see finish). */
  private lingering: { stream: EventStream; timer: ReturnType<typeof setTimeout> } | null = null;
  private local: LevelMonitor | null = null;
  private remote: LevelMonitor | null = null;
  /** What the media has done for the call as it is now (see reconnect.ts). */
  private plan = newPlan();
  /** Bumped when a connect attempt is given up (hung up, or another call): its failure is no problem. */
  private generation = 0;
  /** The hang-up under way, which a new connect waits for. */
  private hangingUp: Promise<void> = Promise.resolve();
  /** The connect() under way, if any (see hangUp). */
  private connecting: Promise<void> | null = null;
  private lookingAtMedia = false;
  private lookAgain = false;
  /** This page ended (or is ending) the call: its media is not connected again. */
  private ending = false;
  /** Stop was pressed while the call was being set up: it is ended as soon as it exists. */
  private stopWanted = false;
  /** The start, reattach or stop under way: what stop() waits for. */
  private running: Promise<void> | null = null;
  /** The session whose end was handled (its stream closed, the client hung up). */
  private finished: SessionOut | null = null;

  constructor(options: CallOptions = {}) {
    this.createClient = options.createClient ?? loadPipecatClient;
    this.api = options.api ?? httpApi;
    this.openEvents = options.openEvents ?? openEventStream;
    this.audioElement = options.audioElement ?? (() => null);
  }

  // --- the store React reads (useSyncExternalStore) -----------------------------------------

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** The call as it is now: frozen, and a new object only when something changed. */
  readonly getSnapshot = (): CallSnapshot => this.snapshot;

  private set(patch: Partial<Omit<CallSnapshot, "view">>): void {
    const current = this.snapshot;
    const keys = Object.keys(patch) as (keyof typeof patch)[];
    if (keys.every((key) => Object.is(patch[key], current[key]))) return;
    const next = { ...current, ...patch };
    if (next.stream !== current.stream) next.view = currentView(next.stream);
    this.snapshot = Object.freeze(next);
    for (const listener of [...this.listeners]) listener();
  }

  /** The one place the phase changes, along NEXT only. */
  private moveTo(phase: Phase): boolean {
    const from = this.snapshot.phase;
    if (from === phase) return true;
    if (!NEXT[from].includes(phase)) return false;
    this.set({ phase });
    return true;
  }

  /** Where a start that did not happen leaves the page: as it was (nothing, or the finished call). */
  private settledPhase(): Phase {
    const { session, view } = this.snapshot;
    return session ? (view.final ? "done" : "live") : "idle";
  }

  // --- the page --------------------------------------------------------------------------------

  /**
   * Follow the page: after a reload, attach to this tab's call; when the page goes, let go of
   * the media. Returns the undo, which also ends everything (the provider unmounting: sign-out).
   */
  connectPage(): () => void {
    const abort = new AbortController();
    void this.reattachRemembered(abort.signal);
    // Leaving the page (a reload, a closed tab) does not end the call: the worker holds it
    // for its reconnect grace, and this tab, loaded again, attaches to it. Closing the peer
    // connection now (rather than when the page is torn down) tells the worker at once.
    const onPageHide = () => {
      if (!this.snapshot.session || this.snapshot.view.final) return;
      void this.slot?.client.disconnect().catch(() => undefined);
    };
    window.addEventListener("pagehide", onPageHide);
    return () => {
      abort.abort();
      window.removeEventListener("pagehide", onPageHide);
      this.events?.close();
      this.stopLingering();
      this.local?.stop();
      this.remote?.stop();
      void this.slot?.client.disconnect().catch(() => undefined);
      void this.slot?.media?.release();
    };
  }

  debugHandle(): DebugHandle {
    return {
      remoteRms: () => this.remote?.rms() ?? 0,
      remotePeakRms: () => this.remote?.peak() ?? 0,
      localRms: () => this.local?.rms() ?? 0,
      localPeakRms: () => this.local?.peak() ?? 0,
      localTrackEnabled: () => this.local?.track.enabled ?? null,
      sentAudioTrack: () => {
        const track = audioTransceiver(this.slot?.client.transport)?.sender.track;
        return track ? { id: track.id, label: track.label } : null;
      },
      state: () => {
        const { phase, session, view, transportState, botReady, playbackBlocked, streamStatus, streamRefusal, stream } =
          this.snapshot;
        return {
          phase,
          sessionId: session?.session_id ?? null,
          conversationId: session?.conversation_id ?? null,
          status: view.status,
          reason: view.reason,
          transport: transportState,
          botReady,
          playbackBlocked,
          streamStatus,
          streamRefusal: streamRefusal?.code ?? null,
          events: stream.events.length,
          duplicates: stream.duplicates,
          lastSeq: stream.events.length ? stream.events[stream.events.length - 1].seq : 0,
        };
      },
      interruptEvents: () => this.events?.interrupt(),
    };
  }

  // --- what the page asks for ------------------------------------------------------------------

  /** From a click (idle, or a call finished): open the microphone, create a session, follow it. */
  readonly start = (options: StartOptions): Promise<void> => {
    audioContext(); // inside the click: lets WebAudio run
    const { phase } = this.snapshot;
    if (phase !== "idle" && phase !== "done") return Promise.resolve(); // one call at a time
    this.set({ problem: null });
    if (!WEB_APP_TRANSPORTS.includes(options.transport)) {
      this.set({
        problem: { title: "The web app can't use that transport", detail: `Pick ${WEB_APP_TRANSPORTS.join(" or ")}.` },
      });
      return Promise.resolve();
    }
    return this.run(() => this.startCall(options));
  };

  /**
   * End the call (DELETE). While it is being set up: a start still at the microphone makes no
   * session; one being created is ended as soon as it exists. Resolves once that is done.
   */
  readonly stop = (): Promise<void> => {
    const { phase, session } = this.snapshot;
    if (phase === "live" && session) return this.run(() => this.endCall(session));
    if (phase === "mic" || phase === "creating") {
      this.stopWanted = true;
      this.moveTo("stopping");
    }
    return this.running ?? Promise.resolve();
  };

  /** Put a finished call away (back to idle), e.g. before another conversation is continued. */
  readonly clear = (): void => {
    if (this.snapshot.phase !== "done") return; // only a finished call
    this.generation += 1;
    this.stopLingering();
    this.set({
      session: null,
      stream: streamReducer(this.snapshot.stream, { type: "reset", sessionId: null }),
      problem: null,
      streamStatus: null,
      streamRefusal: null,
      botReady: false,
      playbackBlocked: false,
    });
    this.moveTo("idle");
  };

  readonly setMicEnabled = (enabled: boolean): void => {
    this.set({ micEnabled: enabled });
    const slot = this.slot;
    if (!slot) return;
    // Once connected, the client also tells the bot (over the data channel).
    if (slot.client.connected || !slot.media) slot.client.enableMic(enabled);
    else slot.media.enableMic(enabled);
  };

  readonly selectMic = (deviceId: string): void => {
    this.set({ devices: { ...this.snapshot.devices, mic: deviceId } });
    const client = this.slot?.client;
    if (client) void Promise.resolve(client.updateMic(deviceId)).catch(() => undefined);
  };

  /** Plays the call on this output (where the browser can choose one: setSinkId). */
  readonly selectSpeaker = (deviceId: string): void => {
    this.set({ devices: { ...this.snapshot.devices, speaker: deviceId } });
    const element = this.audioElement() as (HTMLAudioElement & { setSinkId?: (id: string) => Promise<void> }) | null;
    void element?.setSinkId?.(deviceId).catch(() => undefined);
  };

  /** Type to the assistant: the words go to the model as the user's (RTVI send-text). */
  readonly sendText = (text: string): Promise<void> => {
    const client = this.slot?.client;
    return client ? client.sendText(text) : Promise.reject(new Error("no call to send to"));
  };

  /** The WebRTC connection's statistics (null: no peer connection of ours, e.g. Daily). */
  readonly connectionStats = async (): Promise<RTCStatsReport | null> => {
    const pc = peerConnection(this.slot?.client.transport);
    return pc && pc.connectionState === "connected" ? pc.getStats() : null;
  };

  /** From a click: let the call's sound play. */
  readonly resumePlayback = (): void => this.checkPlayback();

  readonly dismissProblem = (): void => this.set({ problem: null });

  /** Open the live events again now (after a refusal, or when they were lost). */
  readonly reconnectEvents = (): void => this.events?.reconnect();

  readonly localLevel = (): number => this.local?.rms() ?? 0;

  readonly remoteLevel = (): number => this.remote?.rms() ?? 0;

  // --- setting a call up -----------------------------------------------------------------------

  private run(task: () => Promise<void>): Promise<void> {
    const running: Promise<void> = task().finally(() => {
      if (this.running === running) this.running = null;
    });
    this.running = running;
    return running;
  }

  private async startCall(options: StartOptions): Promise<void> {
    this.stopWanted = false;
    this.moveTo("mic");
    const problem = await this.openMicrophone(options.transport as MediaKind);
    if (problem || this.stopWanted) {
      if (!problem) this.releaseMicrophone();
      this.set({ problem });
      this.moveTo(this.settledPhase());
      return;
    }
    this.moveTo("creating");
    let created: SessionOut;
    try {
      created = await this.api.createSession({
        transport: options.transport,
        profile: options.profile,
        ...(options.conversationId ? { conversation_id: options.conversationId } : {}),
      });
    } catch (error) {
      this.releaseMicrophone();
      this.set({ problem: apiProblem(error, "The session could not start") });
      this.moveTo(this.settledPhase());
      return;
    }
    await this.attach(created, false);
  }

  // Only the call this tab remembers: another tab's call is that tab's (two pages offering
  // for one call would take it from each other in turn).
  private async reattachRemembered(signal: AbortSignal): Promise<void> {
    const call = recall();
    if (!call) return;
    let live: SessionOut[];
    try {
      live = await this.api.liveSessions(signal);
    } catch {
      return; // not now (offline, signed out): the next load looks again
    }
    if (signal.aborted || this.snapshot.phase !== "idle") return; // a Start meanwhile goes its own way
    const found = live.find((s) => s.session_id === call.session_id);
    if (!found || !WEB_APP_TRANSPORTS.includes(found.transport)) {
      forget(call.session_id); // it has ended meanwhile
      return;
    }
    await this.run(() => this.reattach(found, signal));
  }

  private async reattach(found: SessionOut, signal: AbortSignal): Promise<void> {
    this.stopWanted = false;
    this.moveTo("mic");
    const problem = await this.openMicrophone(found.transport as MediaKind);
    if (problem) this.set({ problem }); // the call is shown all the same: it can be stopped
    if (signal.aborted) {
      this.moveTo(this.settledPhase());
      return;
    }
    await this.attach(found, true);
  }

  /** The client for the transport, its microphone open; else why not. */
  private async openMicrophone(kind: MediaKind): Promise<Problem | null> {
    let slot: CallClient;
    try {
      slot = await this.clientFor(kind);
    } catch (error) {
      return loadProblem(error);
    }
    try {
      await slot.client.initDevices();
      if (!slot.client.tracks().local.audio) throw new DOMException("no microphone track", "NotFoundError");
    } catch (error) {
      return micProblem(error);
    }
    return null;
  }

  /** The client for a transport kind: the current one, or a new one in its place. */
  private async clientFor(kind: MediaKind): Promise<CallClient> {
    if (this.slot?.kind === kind) return this.slot;
    await this.slot?.client.disconnect().catch(() => undefined);
    const serial = ++this.clientSerial;
    const slot = await this.createClient(kind, this.clientCallbacks(serial));
    this.slot = slot;
    this.set({ client: slot.client, transportState: slot.client.state });
    return slot;
  }

  /** Let go of the microphone of a call that did not come about. */
  private releaseMicrophone(): void {
    const slot = this.slot;
    if (slot?.media) void slot.media.release();
    else void slot?.client.disconnect().catch(() => undefined);
  }

  /** The call set up: follow it, or (Stop pressed meanwhile) end it at once. */
  private async attach(found: SessionOut, reattached: boolean): Promise<void> {
    this.ending = this.stopWanted; // then its media is never connected
    if (!this.stopWanted) this.moveTo("live");
    this.follow(found, reattached);
    if (this.stopWanted) await this.endCall(found);
  }

  /** Show `found` and follow it: its events (from the start), its media (mediaStep). */
  private follow(found: SessionOut, reattached: boolean): void {
    this.events?.close();
    this.stopLingering();
    this.plan = newPlan(reattached);
    this.generation += 1; // an attempt for an earlier call is not this one's problem
    const slot = this.slot;
    if (slot?.media) slot.media.enableMic(true); // not client.enableMic: no data channel to tell yet
    else slot?.client.enableMic(true);
    this.set({
      session: found,
      stream: streamReducer(this.snapshot.stream, {
        type: "reset",
        sessionId: found.session_id,
        conversationId: found.conversation_id,
        status: found.status,
        reason: found.reason,
        stateSeq: found.state_seq ?? null,
        queuePosition: found.queue_position,
      }),
      botReady: false,
      playbackBlocked: false,
      micEnabled: true,
      streamRefusal: null,
    });
    this.events = this.openEvents(found.events_url, {
      onEvent: (event) => this.dispatch({ type: "event", event }),
      onStatus: (status) => {
        this.set({ streamStatus: status });
        if (status === "open") this.set({ streamRefusal: null }); // flowing again
      },
      onRefused: (refusal) => this.set({ streamRefusal: refusal }),
    });
    remember({ session_id: found.session_id, transport: found.transport });
    this.viewChanged();
  }

  private async endCall(current: SessionOut): Promise<void> {
    this.ending = true;
    this.moveTo("stopping");
    try {
      const ended = await this.api.endSession(current.session_id);
      if (this.snapshot.session === current) {
        this.dispatch({ type: "snapshot", status: ended.status, reason: ended.reason ?? null });
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        // Gone already (its stream may have been refused, 404, so no final state comes).
        if (this.snapshot.session === current) this.dispatch({ type: "snapshot", status: "ended", reason: null });
      } else {
        this.set({ problem: apiProblem(error, "The session could not be ended") });
      }
    } finally {
      await this.hangUp();
      if (this.snapshot.session === current) this.moveTo(this.settledPhase());
    }
  }

  // --- the session's state, as its events and the API tell it -----------------------------

  private dispatch(action: StreamAction): void {
    const before = this.snapshot.stream;
    this.set({ stream: streamReducer(before, action) });
    if (this.snapshot.stream !== before) this.viewChanged();
  }

  private viewChanged(): void {
    const { session, view } = this.snapshot;
    if (session && view.final && this.finished !== session) this.finish(session);
    if (this.lingering && this.snapshot.stream.view.final) this.stopLingering();
    this.lookAtMedia();
  }

  /** The end: close the stream, hang up, let go of the microphone. The answer to Stop can
   * come before the stream's own final event: the stream stays open for it a moment, so
   * the event log ends with the end (FINAL_EVENT_WAIT_MS at most). */
  private finish(session: SessionOut): void {
    this.finished = session;
    forget(session.session_id);
    if (this.events && !this.snapshot.stream.view.final) {
      const stream = this.events;
      this.lingering = { stream, timer: setTimeout(() => this.stopLingering(), FINAL_EVENT_WAIT_MS) };
    } else {
      this.events?.close();
    }
    this.events = null;
    void this.hangUp().then(() => this.slot?.media?.release());
    this.ending = false;
    this.set({ playbackBlocked: false });
    this.moveTo("done");
  }

  private stopLingering(): void {
    if (!this.lingering) return;
    clearTimeout(this.lingering.timer);
    this.lingering.stream.close();
    this.lingering = null;
  }

  // --- the media: connect once a worker has the session, and again when it was lost ----------

  /** Looked at after each change that may call for it. Hanging up reports transport states at
   * once, which ask again: that is looked at after the step at hand, not inside it. */
  private lookAtMedia(): void {
    if (this.lookingAtMedia) {
      this.lookAgain = true;
      return;
    }
    this.lookingAtMedia = true;
    try {
      do {
        this.lookAgain = false;
        this.mediaStep();
      } while (this.lookAgain);
    } finally {
      this.lookingAtMedia = false;
    }
  }

  private mediaStep(): void {
    const session = this.snapshot.session;
    const slot = this.slot;
    if (!session || !slot || this.ending) return;
    const { view } = this.snapshot;
    const client = slot.client;
    // SmallWebRTC: offer as soon as a worker has it (the API holds the offer until `ready`).
    // Daily: the room exists once the session is `ready`. Both: again after `reconnecting`
    // or `recovering` (reconnect.ts says when).
    const step = nextMediaStep(this.plan, {
      status: view.status,
      stateSeq: view.stateSeq,
      final: view.final,
      kind: slot.kind,
      connecting: this.connecting !== null && !MEDIA_UP.has(client.state),
    });
    this.plan = step.plan;
    if (step.hangUp) {
      // Also stops the transport's own reconnect attempts (to a worker that lost us).
      this.generation += 1;
      this.hangingUp = this.hangUp();
    }
    if (!step.connect) return;
    const attemptOf = ++this.generation;
    const gone = () =>
      this.ending || this.snapshot.view.final || this.snapshot.session !== session || this.generation !== attemptOf;

    const attempt = async (tries: number): Promise<void> => {
      try {
        await this.hangingUp; // the last connection is down before the next one starts
        if (gone()) return;
        await client.connect(await this.connectParams(slot.kind, session));
      } catch (error) {
        if (gone()) return;
        const refusal = await offerRefusal(error);
        // `409 not_ready`: no worker had it ready within the API's wait; offer again.
        if (refusal?.code === "not_ready" && tries < OFFER_RETRIES) {
          await sleep((refusal.retryAfter ?? 2) * 1000);
          if (!gone()) await attempt(tries + 1);
          return;
        }
        this.set({ problem: connectProblem(error, refusal) });
      }
    };
    const running: Promise<void> = attempt(0).finally(() => {
      if (this.connecting === running) this.connecting = null;
      this.lookAtMedia(); // settled: look again (the call may still wait for its client)
    });
    this.connecting = running;
  }

  private async connectParams(kind: MediaKind, session: SessionOut): Promise<Record<string, unknown>> {
    if (kind === "daily") {
      const join = (await this.api.session(session.session_id)).connect;
      if (!join?.room_url) throw new ApiError(409, "not_ready", "the Daily room is not ready yet");
      return { room_url: join.room_url, token: join.token };
    }
    // Asked per attempt: a TURN credential minted now, valid for the whole call.
    const { ice_servers: ice } = await this.api.peerConnect(session.session_id);
    return {
      webrtcRequestParams: {
        endpoint: session.offer_url,
        // The session cookie goes along by itself (same origin); the CSRF token does not.
        // The transport sends these headers with the offer POST and the ICE PATCHes.
        headers: new Headers(csrfHeaders()),
      },
      ...(ice.length ? { iceConfig: { iceServers: ice.map(rtcIceServer) } } : {}),
    };
  }

  /**
   * Disconnect the client, but not in the middle of its SDP exchange: SmallWebRTCTransport
   * leaves a promise rejected and unhandled when it is disconnected while its offer is
   * in flight (the API answers that offer at once, 409, when the session has ended).
   */
  private async hangUp(): Promise<void> {
    const pending = this.connecting;
    if (pending && this.slot?.client.state === "connecting") {
      await Promise.race([pending, sleep(3000)]);
    }
    await this.slot?.client.disconnect().catch(() => undefined);
  }

  // --- the Pipecat client's events ----------------------------------------------------------

  private clientCallbacks(serial: number): RTVIEventCallbacks {
    const ours =
      <A extends unknown[]>(handler: (...args: A) => void) =>
      (...args: A) => {
        if (serial === this.clientSerial) handler(...args);
      };
    const speaking = (key: keyof CallSnapshot["rtvi"], value: boolean) =>
      ours(() => {
        const { rtvi } = this.snapshot;
        if (rtvi[key] !== value) this.set({ rtvi: { ...rtvi, [key]: value } });
      });
    const devices = (patch: Partial<Devices>) => this.set({ devices: { ...this.snapshot.devices, ...patch } });
    return {
      onTransportStateChanged: ours((state: TransportState) => {
        this.set({ transportState: state });
        this.lookAtMedia(); // the media up, or down: look again
      }),
      onTrackStarted: ours((track: MediaStreamTrack, participant?: Participant) => this.trackStarted(track, participant)),
      onTrackStopped: ours((track: MediaStreamTrack) => this.trackStopped(track)),
      onBotReady: ours(() => this.set({ botReady: true })),
      onDisconnected: ours(() => this.set({ botReady: false, rtvi: QUIET })),
      onUserStartedSpeaking: speaking("userSpeaking", true),
      onUserStoppedSpeaking: speaking("userSpeaking", false),
      onBotStartedSpeaking: speaking("botSpeaking", true),
      onBotStoppedSpeaking: speaking("botSpeaking", false),
      onAvailableMicsUpdated: ours((mics: MediaDeviceInfo[]) => devices({ mics })),
      onMicUpdated: ours((mic: MediaDeviceInfo) => devices({ mic: mic.deviceId || null })),
      onAvailableSpeakersUpdated: ours((speakers: MediaDeviceInfo[]) => devices({ speakers })),
    };
  }

  private trackStarted(track: MediaStreamTrack, participant?: Participant): void {
    if (track.kind !== "audio") return;
    const local = Boolean(participant?.local);
    const monitor = local ? this.local : this.remote;
    if (monitor?.track === track) return;
    monitor?.stop();
    if (local) {
      this.local = monitorTrack(track);
      return;
    }
    this.remote = monitorTrack(track);
    // The bot's sound: PipecatClientAudio plays it (autoplay) once it has rendered.
    window.setTimeout(() => this.checkPlayback(), 250);
  }

  private trackStopped(track: MediaStreamTrack): void {
    if (this.local?.track === track) {
      this.local.stop();
      this.local = null;
    }
    if (this.remote?.track === track) {
      this.remote.stop();
      this.remote = null;
    }
  }

  private checkPlayback(): void {
    void playbackAllowed(this.audioElement()).then((allowed) => this.set({ playbackBlocked: !allowed }));
  }
}
