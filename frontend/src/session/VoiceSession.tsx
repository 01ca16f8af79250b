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
//
// The call survives the page: leaving it (a reload, a closed tab) does not end
// it, the worker holds it (`reconnecting`) for its reconnect grace. The tab
// remembers its call (sessionStorage) and, loaded again, finds it among the
// user's live sessions (GET /api/sessions?live=true) and attaches to it: the
// events from the start (the transcript so far), then a new offer. When the
// worker loses the media (`reconnecting`) or the call moves to another worker
// (`recovering`), the client hangs up and connects again (reconnect.ts).

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
import { api, ApiError, csrfHeaders, errorFromResponse } from "../lib/api";
import type { IceServer, SessionOut } from "../lib/types";
import { audioContext, monitorTrack, playbackAllowed, type LevelMonitor } from "./audio";
import { openEventStream, type EventStream, type StreamRefusal, type StreamStatus } from "./eventStream";
import { currentView, initialStream, streamReducer, type SessionView, type StreamState } from "./events";
import { BrowserMediaManager } from "./mediaManager";
import { apiProblem, micProblem, type Problem } from "./messages";
import { newPlan, nextMediaStep } from "./reconnect";

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

export interface Devices {
  mics: MediaDeviceInfo[];
  mic: string | null;
  speakers: MediaDeviceInfo[];
  speaker: string | null;
}

const NO_DEVICES: Devices = { mics: [], mic: null, speakers: [], speaker: null };

export interface StartOptions {
  profile: string;
  transport: string;
  conversationId?: string | null;
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
  /** The browser holds the call's sound until a click (after a reload): offer "Resume call". */
  playbackBlocked: boolean;
  /** From a click: let the call's sound play. */
  resumePlayback(): void;
  start(options: StartOptions): Promise<void>;
  stop(): Promise<void>;
  setMicEnabled(enabled: boolean): void;
  dismissProblem(): void;
  /** Put a finished call away (back to idle), e.g. before another conversation is continued. */
  clear(): void;
  /** Open the live events again now (after a refusal, or when they were lost). */
  reconnectEvents(): void;
  localLevel(): number;
  remoteLevel(): number;
  /** Microphones and speakers (known once the microphone is open), and the ones in use. */
  devices: Devices;
  selectMic(deviceId: string): void;
  /** Plays the call on this output (where the browser can choose one: setSinkId). */
  selectSpeaker(deviceId: string): void;
  /** The WebRTC connection's statistics (null: no peer connection of ours, e.g. Daily). */
  connectionStats(): Promise<RTCStatsReport | null>;
  /** Type to the assistant: the words go to the model as the user's (RTVI send-text). */
  sendText(text: string): Promise<void>;
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
      /** Whether the microphone track the call sends is on (muted / push to talk: off). */
      localTrackEnabled(): boolean | null;
      /** The microphone track the connection sends (after a switch: the new one). */
      sentAudioTrack(): { id: string; label: string } | null;
      state(): Record<string, unknown>;
      interruptEvents(): void;
    };
  }
}

/** The call's audio transceiver. SmallWebRTCTransport keeps its RTCPeerConnection in `pc`
 * (not typed; its own media manager reaches the sender the same way); other transports
 * (Daily's) have none of ours. */
function peerConnection(transport: unknown): RTCPeerConnection | null {
  return (transport as { pc?: RTCPeerConnection | null } | null)?.pc ?? null;
}

function audioTransceiver(transport: unknown): RTCRtpTransceiver | undefined {
  return peerConnection(transport)
    ?.getTransceivers()
    .find((t) => t.receiver.track?.kind === "audio");
}

/** A switched microphone's track onto the call's connection. */
async function sendAudioTrack(transport: SmallWebRTCTransport | null, track: MediaStreamTrack): Promise<void> {
  await audioTransceiver(transport)?.sender.replaceTrack(track);
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

export function VoiceSessionProvider({ children }: { children: ReactNode }) {
  // One Pipecat client at a time, for the transport of the session at hand; a new one
  // when that changes (the Daily one creates a daily-js call object at once, so it is
  // made only for a Daily session).
  const makeClient = useCallback((kind: ClientKind): ClientSlot => {
    // Our media manager: the transport's default one drives the mic through daily-js
    // (see mediaManager.ts).
    let sent: SmallWebRTCTransport | null = null;
    const media = kind === "webrtc" ? new BrowserMediaManager((track) => sendAudioTrack(sent, track)) : null;
    const transport = media ? (sent = new SmallWebRTCTransport({ mediaManager: media })) : new DailyTransport();
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
  const [devices, setDevices] = useState<Devices>(NO_DEVICES);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [playbackBlocked, setPlaybackBlocked] = useState(false);
  /** Connect attempts that have settled (the media plan is looked at again then). */
  const [settled, setSettled] = useState(0);

  const view = useMemo(() => currentView(stream), [stream]);
  const sessionRef = useRef<SessionOut | null>(null);
  const viewRef = useRef(view);
  viewRef.current = view;
  const eventsRef = useRef<EventStream | null>(null);
  /** What the media has done for the call as it is now (see reconnect.ts). */
  const plan = useRef(newPlan());
  /** Bumped when a connect attempt is given up (hung up, or another call): its failure is no problem. */
  const generation = useRef(0);
  /** The hang-up under way, which a new connect waits for. */
  const hangingUp = useRef<Promise<void>>(Promise.resolve());
  /** The connect() under way, if any (see hangUp). */
  const connecting = useRef<Promise<void> | null>(null);
  const audioBox = useRef<HTMLDivElement | null>(null);
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
      if (!participant?.local) {
        // The bot's sound: PipecatClientAudio plays it (autoplay) once it has rendered.
        window.setTimeout(() => {
          const element = audioBox.current?.querySelector("audio") ?? null;
          void playbackAllowed(element).then((allowed) => setPlaybackBlocked(!allowed));
        }, 250);
      }
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
      [RTVIEvent.AvailableMicsUpdated, (mics: MediaDeviceInfo[]) => setDevices((d) => ({ ...d, mics }))],
      [RTVIEvent.MicUpdated, (mic: MediaDeviceInfo) => setDevices((d) => ({ ...d, mic: mic.deviceId || null }))],
      [RTVIEvent.AvailableSpeakersUpdated, (speakers: MediaDeviceInfo[]) => setDevices((d) => ({ ...d, speakers }))],
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

  // --- connect the media once a worker has the session, and again when it was lost ----------
  useEffect(() => {
    if (!session || stopping.current) return;
    const kind = slotRef.current.kind;
    const current = slotRef.current.client;
    // SmallWebRTC: offer as soon as a worker has it (the API holds the offer until `ready`).
    // Daily: the room exists once the session is `ready`. Both: again after `reconnecting`
    // or `recovering` (reconnect.ts says when).
    const step = nextMediaStep(plan.current, {
      status: view.status,
      stateSeq: view.stateSeq,
      final: view.final,
      kind,
      connecting: connecting.current !== null && !MEDIA_UP.has(current.state),
    });
    plan.current = step.plan;
    if (step.hangUp) {
      // Also stops the transport's own reconnect attempts (to a worker that lost us).
      generation.current += 1;
      hangingUp.current = hangUp();
    }
    if (!step.connect) return;
    const attemptOf = ++generation.current;
    const gone = () =>
      stopping.current || viewRef.current.final || sessionRef.current !== session || generation.current !== attemptOf;

    const params = async (): Promise<Record<string, unknown>> => {
      if (kind === "daily") {
        const join = (await api.session(session.session_id)).connect;
        if (!join?.room_url) throw new ApiError(409, "not_ready", "the Daily room is not ready yet");
        return { room_url: join.room_url, token: join.token };
      }
      // Asked per attempt: a TURN credential minted now, valid for the whole call.
      const { ice_servers: ice } = await api.peerConnect(session.session_id);
      return {
        webrtcRequestParams: {
          endpoint: session.offer_url,
          // The session cookie goes along by itself (same origin); the CSRF token does not.
          // The transport sends these headers with the offer POST and the ICE PATCHes.
          headers: new Headers(csrfHeaders()),
        },
        ...(ice.length ? { iceConfig: { iceServers: ice.map(rtcIceServer) } } : {}),
      };
    };

    const attempt = async (tries: number): Promise<void> => {
      try {
        await hangingUp.current; // the last connection is down before the next one starts
        if (gone()) return;
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
      setSettled((n) => n + 1);
    });
    connecting.current = running;
    // hangUp is stable; transportState and settled: look again once the media is up or failed.
  }, [session, view.status, view.stateSeq, view.final, transportState, settled]);

  // --- the end: close the stream, hang up, let go of the microphone ---------------------------
  useEffect(() => {
    if (!session || !view.final) return;
    forget(session.session_id);
    setPlaybackBlocked(false);
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

  /** Show `found` and follow it: its events (from the start), its media (the connect effect). */
  const follow = useCallback((found: SessionOut, reattached: boolean) => {
    eventsRef.current?.close();
    plan.current = newPlan(reattached);
    generation.current += 1; // an attempt for an earlier call is not this one's problem
    stopping.current = false;
    sessionRef.current = found;
    setBotReady(false);
    setPlaybackBlocked(false);
    setMicEnabledState(true);
    const { media, client: current } = slotRef.current;
    if (media) media.enableMic(true); // not client.enableMic: no data channel to tell yet
    else current.enableMic(true);
    dispatch({
      type: "reset",
      sessionId: found.session_id,
      conversationId: found.conversation_id,
      status: found.status,
      reason: found.reason,
      stateSeq: found.state_seq ?? null,
      queuePosition: found.queue_position,
    });
    setSession(found);
    setPending(null);
    setStreamRefusal(null);
    eventsRef.current = openEventStream(found.events_url, {
      onEvent: (event) => dispatch({ type: "event", event }),
      onStatus: (status) => {
        setStreamStatus(status);
        if (status === "open") setStreamRefusal(null); // flowing again
      },
      onRefused: setStreamRefusal,
    });
    remember({ session_id: found.session_id, transport: found.transport });
  }, []);

  const start = useCallback(
    async (options: StartOptions) => {
      audioContext(); // inside the click: lets WebAudio run
      setProblem(null);
      if (!WEB_APP_TRANSPORTS.includes(options.transport)) {
        setProblem({ title: "The web app can't use that transport", detail: `Pick ${WEB_APP_TRANSPORTS.join(" or ")}.` });
        return;
      }
      setPending("mic");
      try {
        const client = await clientFor(options.transport as ClientKind);
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
      follow(created, false);
    },
    [clientFor, follow],
  );

  // --- after a reload: this tab's call, found again --------------------------------------------
  // Only the call this tab remembers: another tab's call is that tab's (two pages offering
  // for one call would take it from each other in turn).
  useEffect(() => {
    const call = recall();
    if (!call) return;
    const abort = new AbortController();
    void (async () => {
      let live: SessionOut[];
      try {
        live = await api.liveSessions(abort.signal);
      } catch {
        return; // not now (offline, signed out): the next load looks again
      }
      const found = live.find((s) => s.session_id === call.session_id);
      if (abort.signal.aborted || sessionRef.current) return;
      if (!found || !WEB_APP_TRANSPORTS.includes(found.transport)) {
        forget(call.session_id); // it has ended meanwhile
        return;
      }
      setPending("mic");
      try {
        const client = await clientFor(found.transport as ClientKind);
        await client.initDevices();
      } catch (error) {
        setProblem(micProblem(error)); // the call is shown all the same: it can be stopped
      }
      if (abort.signal.aborted || sessionRef.current) {
        setPending(null);
        return;
      }
      follow(found, true);
    })();
    return () => abort.abort();
  }, [clientFor, follow]);

  const resumePlayback = useCallback(() => {
    const element = audioBox.current?.querySelector("audio") ?? null;
    void playbackAllowed(element).then((allowed) => setPlaybackBlocked(!allowed));
  }, []);

  const stop = useCallback(async () => {
    const current = sessionRef.current;
    if (!current || viewRef.current.final) return;
    stopping.current = true;
    setPending("stopping");
    try {
      const ended = await api.endSession(current.session_id);
      if (sessionRef.current === current) {
        dispatch({ type: "snapshot", status: ended.status, reason: ended.reason ?? null });
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

  const clear = useCallback(() => {
    const current = sessionRef.current;
    if (!current || !viewRef.current.final || stopping.current) return; // only a finished call
    sessionRef.current = null;
    generation.current += 1;
    dispatch({ type: "reset", sessionId: null });
    setSession(null);
    setPending(null);
    setProblem(null);
    setStreamStatus(null);
    setStreamRefusal(null);
    setBotReady(false);
    setPlaybackBlocked(false);
  }, []);

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

  // Leaving the page (a reload, a closed tab) does not end the call: the worker holds it
  // for its reconnect grace, and this tab, loaded again, attaches to it. Closing the peer
  // connection now (rather than when the page is torn down) tells the worker at once.
  useEffect(() => {
    const onPageHide = () => {
      if (!sessionRef.current || viewRef.current.final) return;
      void slotRef.current.client.disconnect().catch(() => undefined);
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
      localTrackEnabled: () => local.current?.track.enabled ?? null,
      sentAudioTrack: () => {
        const track = audioTransceiver(slotRef.current.client.transport)?.sender.track;
        return track ? { id: track.id, label: track.label } : null;
      },
      state: () => ({
        phase,
        sessionId: sessionRef.current?.session_id ?? null,
        conversationId: sessionRef.current?.conversation_id ?? null,
        status: viewRef.current.status,
        reason: viewRef.current.reason,
        transport: transportState,
        botReady,
        playbackBlocked,
        streamStatus,
        streamRefusal: streamRefusal?.code ?? null,
        events: stream.events.length,
        duplicates: stream.duplicates,
        lastSeq: stream.events.length ? stream.events[stream.events.length - 1].seq : 0,
      }),
      interruptEvents: () => eventsRef.current?.interrupt(),
    };
  }, [phase, transportState, botReady, playbackBlocked, streamStatus, streamRefusal, stream]);

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
    playbackBlocked,
    resumePlayback,
    start,
    stop,
    setMicEnabled,
    clear,
    dismissProblem: useCallback(() => setProblem(null), []),
    reconnectEvents: useCallback(() => eventsRef.current?.reconnect(), []),
    localLevel: useCallback(() => local.current?.rms() ?? 0, []),
    remoteLevel: useCallback(() => remote.current?.rms() ?? 0, []),
    devices,
    selectMic: useCallback(
      (id: string) => {
        setDevices((d) => ({ ...d, mic: id }));
        void Promise.resolve(client.updateMic(id)).catch(() => undefined);
      },
      [client],
    ),
    sendText: useCallback((text: string) => client.sendText(text), [client]),
    connectionStats: useCallback(async () => {
      const pc = peerConnection(client.transport);
      return pc && pc.connectionState === "connected" ? pc.getStats() : null;
    }, [client]),
    selectSpeaker: useCallback((id: string) => {
      setDevices((d) => ({ ...d, speaker: id }));
      const element = audioBox.current?.querySelector("audio") as (HTMLAudioElement & { setSinkId?: (id: string) => Promise<void> }) | null;
      void element?.setSinkId?.(id).catch(() => undefined);
    }, []),
  };

  return (
    <PipecatClientProvider client={client}>
      <VoiceSessionContext.Provider value={value}>{children}</VoiceSessionContext.Provider>
      <div ref={audioBox}>
        <PipecatClientAudio />
      </div>
    </PipecatClientProvider>
  );
}

export function useVoiceSession(): VoiceSessionApi {
  const value = useContext(VoiceSessionContext);
  if (!value) throw new Error("useVoiceSession outside VoiceSessionProvider");
  return value;
}
