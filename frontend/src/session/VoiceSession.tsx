// One voice session at a time, for the whole app (so a call goes on while you
// look at History): create it, follow its events, connect the Pipecat client
// when a worker has it, stop it.
//
// Flow: open the microphone first (a refused permission never creates a
// session) → POST /api/sessions → EventSource(events_url) → once the session is
// `starting`/`ready`, PipecatClient.connect() with SmallWebRTCTransport posting
// its SDP offer to offer_url (the API waits for `ready`), our cookie going along
// (same origin) and the CSRF token as a header, on the offer POST and on the ICE
// PATCHes alike → DELETE /api/sessions/{id} to stop.

import { LogLevel, PipecatClient, RTVIEvent, type Participant, type TransportState } from "@pipecat-ai/client-js";
import { PipecatClientAudio, PipecatClientProvider } from "@pipecat-ai/client-react";
import { DailyTransport } from "@pipecat-ai/daily-transport";
import { SmallWebRTCTransport } from "@pipecat-ai/small-webrtc-transport";
import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useReducer,
  useRef,
  useState,
  type ReactNode,
} from "react";
import { api, ApiError, csrfHeaders, errorFromResponse, getCsrfToken } from "../lib/api";
import type { SessionOut } from "../lib/types";
import { audioContext, monitorTrack, type LevelMonitor } from "./audio";
import { openEventStream, type EventStream, type StreamRefusal, type StreamStatus } from "./eventStream";
import { currentView, initialStream, streamReducer, type SessionView, type StreamState } from "./events";
import { BrowserMediaManager } from "./mediaManager";
import { apiProblem, micProblem, type Problem } from "./messages";

export type Phase = "idle" | "mic" | "creating" | "live" | "stopping" | "done";

/** Transports the web app can drive (the server lists the ones it offers in /api/config). */
export const WEB_APP_TRANSPORTS: readonly string[] = ["webrtc", "daily"];
type ClientKind = "webrtc" | "daily";

interface ClientSlot {
  kind: ClientKind;
  client: PipecatClient;
  /** The microphone of a SmallWebRTC client (a Daily client has its own). */
  media: BrowserMediaManager | null;
}

export interface StartOptions {
  profile: string;
  transport: string;
  conversationId?: string | null;
  iceServers?: string[];
}

export interface VoiceSessionApi {
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
  start(options: StartOptions): Promise<void>;
  stop(): Promise<void>;
  setMicEnabled(enabled: boolean): void;
  dismissProblem(): void;
  /** Open the live events again now (after a refusal, or when they were lost). */
  reconnectEvents(): void;
  localLevel(): number;
  remoteLevel(): number;
}

const VoiceSessionContext = createContext<VoiceSessionApi | null>(null);

/** Test and debugging hook: levels measured in the page, and the session's state. */
declare global {
  interface Window {
    __voicepool?: {
      remoteRms(): number;
      remotePeakRms(): number;
      localRms(): number;
      localPeakRms(): number;
      state(): Record<string, unknown>;
      interruptEvents(): void;
    };
  }
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

export function VoiceSessionProvider({ children }: { children: ReactNode }) {
  // One Pipecat client at a time, for the transport of the session at hand; a new one
  // when that changes (the Daily one creates a daily-js call object at once, so it is
  // made only for a Daily session).
  const makeClient = useCallback((kind: ClientKind): ClientSlot => {
    // Our media manager: the transport's default one drives the mic through daily-js
    // (see mediaManager.ts).
    const media = kind === "webrtc" ? new BrowserMediaManager() : null;
    const transport = media ? new SmallWebRTCTransport({ mediaManager: media }) : new DailyTransport();
    const client = new PipecatClient({ transport, enableMic: true, enableCam: false });
    client.setLogLevel(LogLevel.WARN);
    return { kind, client, media };
  }, []);
  const release = () => {
    const { media, client: current } = slotRef.current;
    if (media) void media.release();
    else void current.disconnect().catch(() => undefined);
  };
  const [slot, setSlot] = useState<ClientSlot>(() => makeClient("webrtc"));
  const slotRef = useRef(slot);
  const client = slot.client;

  const [stream, dispatch] = useReducer(streamReducer, initialStream);
  const [session, setSession] = useState<SessionOut | null>(null);
  const [pending, setPending] = useState<"mic" | "creating" | "stopping" | null>(null);
  const [streamStatus, setStreamStatus] = useState<StreamStatus | null>(null);
  const [streamRefusal, setStreamRefusal] = useState<StreamRefusal | null>(null);
  const [transportState, setTransportState] = useState<TransportState>("disconnected");
  const [botReady, setBotReady] = useState(false);
  const [rtvi, setRtvi] = useState({ userSpeaking: false, botSpeaking: false });
  const [micEnabled, setMicEnabledState] = useState(true);
  const [problem, setProblem] = useState<Problem | null>(null);

  const view = useMemo(() => currentView(stream), [stream]);
  const sessionRef = useRef<SessionOut | null>(null);
  const viewRef = useRef(view);
  viewRef.current = view;
  const eventsRef = useRef<EventStream | null>(null);
  const connectStarted = useRef(false);
  /** The connect() under way, if any (see hangUp). */
  const connecting = useRef<Promise<void> | null>(null);
  const stopping = useRef(false);
  const local = useRef<LevelMonitor | null>(null);
  const remote = useRef<LevelMonitor | null>(null);

  // --- the Pipecat client's events ------------------------------------------------------
  // Bound imperatively to each client as it is made (a Daily client is made inside
  // start(), and its microphone track starts before an effect would run).
  const unbind = useRef<(() => void) | null>(null);
  const bindClient = useCallback((target: PipecatClient) => {
    unbind.current?.();
    const onState = (state: TransportState) => setTransportState(state);
    const onTrackStarted = (track: MediaStreamTrack, participant?: Participant) => {
      if (track.kind !== "audio") return;
      const slot = participant?.local ? local : remote;
      if (slot.current?.track === track) return;
      slot.current?.stop();
      slot.current = monitorTrack(track);
    };
    const onTrackStopped = (track: MediaStreamTrack) => {
      for (const slot of [local, remote]) {
        if (slot.current?.track === track) {
          slot.current.stop();
          slot.current = null;
        }
      }
    };
    const onBotReady = () => setBotReady(true);
    const onDisconnected = () => {
      setBotReady(false);
      setRtvi({ userSpeaking: false, botSpeaking: false });
    };
    const speaking = (key: "userSpeaking" | "botSpeaking", value: boolean) => () =>
      setRtvi((s) => (s[key] === value ? s : { ...s, [key]: value }));
    const handlers: [RTVIEvent, (...args: never[]) => void][] = [
      [RTVIEvent.TransportStateChanged, onState],
      [RTVIEvent.TrackStarted, onTrackStarted],
      [RTVIEvent.TrackStopped, onTrackStopped],
      [RTVIEvent.BotReady, onBotReady],
      [RTVIEvent.Disconnected, onDisconnected],
      [RTVIEvent.UserStartedSpeaking, speaking("userSpeaking", true)],
      [RTVIEvent.UserStoppedSpeaking, speaking("userSpeaking", false)],
      [RTVIEvent.BotStartedSpeaking, speaking("botSpeaking", true)],
      [RTVIEvent.BotStoppedSpeaking, speaking("botSpeaking", false)],
    ];
    for (const [event, handler] of handlers) target.on(event, handler as never);
    setTransportState(target.state);
    unbind.current = () => {
      for (const [event, handler] of handlers) target.off(event, handler as never);
    };
  }, []);

  useEffect(() => {
    bindClient(slotRef.current.client);
    return () => {
      unbind.current?.();
      unbind.current = null;
    };
  }, [bindClient]);

  // --- connect the media once a worker has the session ------------------------------------
  const iceServers = useRef<string[]>([]);
  useEffect(() => {
    if (!session || connectStarted.current || stopping.current || view.final) return;
    const kind = slotRef.current.kind;
    // SmallWebRTC: offer as soon as a worker has it (the API holds the offer until `ready`).
    // Daily: the room exists once the session is `ready`.
    if (!(view.status === "ready" || (kind === "webrtc" && view.status === "starting"))) return;
    connectStarted.current = true;
    const current = slotRef.current.client;
    const gone = () => stopping.current || viewRef.current.final || sessionRef.current !== session;

    const params = async (): Promise<Record<string, unknown>> => {
      if (kind === "daily") {
        const join = (await api.session(session.session_id)).connect;
        if (!join?.room_url) throw new ApiError(409, "not_ready", "the Daily room is not ready yet");
        return { room_url: join.room_url, token: join.token };
      }
      const ice = iceServers.current;
      return {
        webrtcRequestParams: {
          endpoint: session.offer_url,
          // The session cookie goes along by itself (same origin); the CSRF token does not.
          // The transport sends these headers with the offer POST and the ICE PATCHes.
          headers: new Headers(csrfHeaders()),
        },
        ...(ice.length ? { iceConfig: { iceServers: [{ urls: ice }] } } : {}),
      };
    };

    const attempt = async (tries: number): Promise<void> => {
      try {
        await current.connect(await params());
      } catch (error) {
        if (gone()) return;
        const refusal = await offerRefusal(error);
        // `409 not_ready`: no worker had it ready within the API's wait; offer again.
        if (refusal?.code === "not_ready" && tries < OFFER_RETRIES) {
          await new Promise((r) => setTimeout(r, (refusal.retryAfter ?? 2) * 1000));
          if (!gone()) await attempt(tries + 1);
          return;
        }
        setProblem(connectProblem(error, refusal));
      }
    };
    const running = attempt(0).finally(() => {
      if (connecting.current === running) connecting.current = null;
    });
    connecting.current = running;
  }, [session, view.status, view.final]);

  /**
   * Disconnect the client, but not in the middle of its SDP exchange: SmallWebRTCTransport
   * leaves a promise rejected and unhandled when it is disconnected while its offer is
   * in flight (the API answers that offer at once, 409, when the session has ended).
   */
  const hangUp = useCallback(async () => {
    const pending = connecting.current;
    if (pending && slotRef.current.client.state === "connecting") {
      await Promise.race([pending, new Promise((r) => setTimeout(r, 3000))]);
    }
    await slotRef.current.client.disconnect().catch(() => undefined);
  }, []);

  // --- the end: close the stream, hang up, let go of the microphone ---------------------------
  useEffect(() => {
    if (!session || !view.final) return;
    eventsRef.current?.close();
    eventsRef.current = null;
    void hangUp().then(() => slotRef.current.media?.release());
    setPending(null);
    stopping.current = false;
  }, [hangUp, session, view.final]);

  /** The client for a transport kind: the current one, or a new one in its place. */
  const clientFor = useCallback(
    async (kind: ClientKind): Promise<PipecatClient> => {
      if (slotRef.current.kind === kind) return slotRef.current.client;
      const old = slotRef.current.client;
      await old.disconnect().catch(() => undefined);
      const next = makeClient(kind);
      slotRef.current = next;
      bindClient(next.client);
      setSlot(next);
      return next.client;
    },
    [makeClient, bindClient],
  );

  const start = useCallback(
    async (options: StartOptions) => {
      audioContext(); // inside the click: lets WebAudio run
      setProblem(null);
      if (!WEB_APP_TRANSPORTS.includes(options.transport)) {
        setProblem({ title: "The web app can't use that transport", detail: `Pick ${WEB_APP_TRANSPORTS.join(" or ")}.` });
        return;
      }
      setPending("mic");
      let client: PipecatClient;
      try {
        client = await clientFor(options.transport as ClientKind);
        await client.initDevices();
        if (!client.tracks().local.audio) throw new DOMException("no microphone track", "NotFoundError");
      } catch (error) {
        setPending(null);
        setProblem(micProblem(error));
        return;
      }
      setPending("creating");
      let created: SessionOut;
      try {
        created = await api.createSession({
          transport: options.transport,
          profile: options.profile,
          ...(options.conversationId ? { conversation_id: options.conversationId } : {}),
        });
      } catch (error) {
        setPending(null);
        release();
        setProblem(apiProblem(error, "The session could not start"));
        return;
      }
      eventsRef.current?.close();
      iceServers.current = options.iceServers ?? [];
      connectStarted.current = false;
      stopping.current = false;
      sessionRef.current = created;
      setBotReady(false);
      setMicEnabledState(true);
      const media = slotRef.current.media;
      if (media) media.enableMic(true); // not client.enableMic: no data channel to tell yet
      else client.enableMic(true);
      dispatch({
        type: "reset",
        sessionId: created.session_id,
        conversationId: created.conversation_id,
        status: created.status,
        queuePosition: created.queue_position,
      });
      setSession(created);
      setPending(null);
      setStreamRefusal(null);
      eventsRef.current = openEventStream(created.events_url, {
        onEvent: (event) => dispatch({ type: "event", event }),
        onStatus: (status) => {
          setStreamStatus(status);
          if (status === "open") setStreamRefusal(null); // flowing again
        },
        onRefused: setStreamRefusal,
      });
    },
    [clientFor],
  );

  const stop = useCallback(async () => {
    const current = sessionRef.current;
    if (!current || viewRef.current.final) return;
    stopping.current = true;
    setPending("stopping");
    try {
      const ended = await api.endSession(current.session_id);
      if (sessionRef.current === current) {
        dispatch({ type: "snapshot", status: ended.status, reason: ended.reason });
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        // Gone already (its stream may have been refused, 404, so no final state comes).
        if (sessionRef.current === current) dispatch({ type: "snapshot", status: "ended", reason: null });
      } else {
        setProblem(apiProblem(error, "The session could not be ended"));
      }
    } finally {
      await hangUp();
      if (sessionRef.current === current) setPending(null);
    }
  }, [hangUp]);

  const setMicEnabled = useCallback(
    (enabled: boolean) => {
      setMicEnabledState(enabled);
      const { media, client: current } = slotRef.current;
      // Once connected, the client also tells the bot (over the data channel).
      if (current.connected || !media) current.enableMic(enabled);
      else media.enableMic(enabled);
    },
    [],
  );

  // Closing the tab ends a live session at once rather than after the connection times out.
  useEffect(() => {
    const onPageHide = () => {
      const current = sessionRef.current;
      if (!current || viewRef.current.final) return;
      const token = getCsrfToken();
      void fetch(`/api/sessions/${encodeURIComponent(current.session_id)}`, {
        method: "DELETE",
        keepalive: true,
        credentials: "same-origin",
        headers: token ? { "X-CSRF-Token": token } : {},
      }).catch(() => undefined);
    };
    window.addEventListener("pagehide", onPageHide);
    return () => window.removeEventListener("pagehide", onPageHide);
  }, []);

  // Unmounting (signing out) ends everything.
  useEffect(
    () => () => {
      eventsRef.current?.close();
      local.current?.stop();
      remote.current?.stop();
      void slotRef.current.client.disconnect().catch(() => undefined);
      void slotRef.current.media?.release();
    },
    [],
  );

  const phase: Phase = pending ?? (session ? (view.final ? "done" : "live") : "idle");

  useEffect(() => {
    window.__voicepool = {
      remoteRms: () => remote.current?.rms() ?? 0,
      remotePeakRms: () => remote.current?.peak() ?? 0,
      localRms: () => local.current?.rms() ?? 0,
      localPeakRms: () => local.current?.peak() ?? 0,
      state: () => ({
        phase,
        sessionId: sessionRef.current?.session_id ?? null,
        conversationId: sessionRef.current?.conversation_id ?? null,
        status: viewRef.current.status,
        reason: viewRef.current.reason,
        transport: transportState,
        botReady,
        streamStatus,
        streamRefusal: streamRefusal?.code ?? null,
        events: stream.events.length,
        duplicates: stream.duplicates,
        lastSeq: stream.events.length ? stream.events[stream.events.length - 1].seq : 0,
      }),
      interruptEvents: () => eventsRef.current?.interrupt(),
    };
  }, [phase, transportState, botReady, streamStatus, streamRefusal, stream]);

  const value: VoiceSessionApi = {
    phase,
    session,
    view,
    stream,
    streamStatus,
    streamRefusal,
    transportState,
    botReady,
    rtvi,
    micEnabled,
    problem,
    start,
    stop,
    setMicEnabled,
    dismissProblem: useCallback(() => setProblem(null), []),
    reconnectEvents: useCallback(() => eventsRef.current?.reconnect(), []),
    localLevel: useCallback(() => local.current?.rms() ?? 0, []),
    remoteLevel: useCallback(() => remote.current?.rms() ?? 0, []),
  };

  return (
    <PipecatClientProvider client={client}>
      <VoiceSessionContext.Provider value={value}>{children}</VoiceSessionContext.Provider>
      <PipecatClientAudio />
    </PipecatClientProvider>
  );
}

export function useVoiceSession(): VoiceSessionApi {
  const value = useContext(VoiceSessionContext);
  if (!value) throw new Error("useVoiceSession outside VoiceSessionProvider");
  return value;
}
