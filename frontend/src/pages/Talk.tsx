import { useEffect, useLayoutEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { Link, useSearchParams } from "react-router";
import { CallInfo } from "../components/CallInfo";
import { EventLog } from "../components/EventLog";
import { InlineForm } from "../components/InlineForm";
import { LevelMeter } from "../components/LevelMeter";
import { LiveSessions } from "../components/LiveSessions";
import { ProblemBox } from "../components/Problem";
import { Transcript } from "../components/Transcript";
import { api } from "../lib/api";
import { useConfig } from "../lib/config";
import type { ConversationDetail } from "../lib/types";
import { conversationViews, emptyView, type SessionView } from "../session/events";
import { isRetryable } from "../session/eventStream";
import { endProblem, formatWait, reasonText, STATE_LABELS, streamRefusalProblem } from "../session/messages";
import { useVoiceSession, WEB_APP_TRANSPORTS, type Phase } from "../session/VoiceSession";

const STEPS = ["queued", "starting", "ready", "connected"] as const;
/** Shown after the steps once the call has been in them: it lost its media, or its worker. */
const PAUSES = ["reconnecting", "recovering"] as const;

const TRANSPORT_LABELS: Record<string, string> = {
  webrtc: "WebRTC (direct to the worker)",
  daily: "Daily (through a Daily room)",
  websocket: "WebSocket",
};

export function Talk() {
  const voice = useVoiceSession();
  const { config, problem: configProblem } = useConfig();
  const [params, setParams] = useSearchParams();
  const continuing = params.get("conversation");
  const [profile, setProfile] = useState("");
  const [transport, setTransport] = useState("webrtc");
  const [earlier, setEarlier] = useState<ConversationDetail | null>(null);

  // A finished call of another conversation than the one being continued (History →
  // "Continue this conversation") is put away: Talk shows one conversation, the continued one.
  const stale =
    voice.phase === "done" && !!voice.session && !!continuing && voice.session.conversation_id !== continuing;
  const phase: Phase = stale ? "idle" : voice.phase;
  const view = useMemo(() => (stale ? emptyView() : voice.view), [stale, voice.view]);
  const session = stale ? null : voice.session;
  const { clear } = voice;
  useLayoutEffect(() => {
    if (stale) clear();
  }, [stale, clear]);
  const busy = phase === "mic" || phase === "creating" || phase === "live" || phase === "stopping";

  useEffect(() => {
    if (!config) return;
    setProfile((p) => (p && config.profiles.includes(p) ? p : session?.profile ?? config.default_profile));
    const usable = config.transports.filter((t) => WEB_APP_TRANSPORTS.includes(t));
    setTransport((t) => (usable.includes(t) ? t : usable[0] ?? "webrtc"));
  }, [config, session?.profile]);

  // Continuing a conversation: show what was said before this session.
  const currentId = session?.session_id;
  useEffect(() => {
    if (!continuing) {
      setEarlier(null);
      return;
    }
    const abort = new AbortController();
    api
      .conversation(continuing, abort.signal)
      .then(setEarlier)
      .catch(() => setEarlier(null));
    return () => abort.abort();
  }, [continuing, currentId]);

  const earlierViews = useMemo(() => {
    if (!earlier) return [];
    return conversationViews(
      earlier.sessions.map((s) => s.session_id).filter((id) => id !== currentId),
      earlier.events.filter((e) => e.session_id !== currentId),
    ).filter((s) => s.view.items.length);
  }, [earlier, currentId]);

  const reached = useMemo(() => {
    const seen = new Set<string>();
    for (const event of stale ? [] : voice.stream.events) {
      if (event.type === "session.state") seen.add(String(event.data.state));
    }
    if (view.status) seen.add(view.status);
    return seen;
  }, [stale, voice.stream.events, view.status]);

  // A call that failed (or expired): the step it was in when it did shows as failed, not done.
  const failedAt = useMemo(() => {
    if (view.status !== "failed" && view.status !== "expired") return null;
    let last: string = "queued";
    for (const event of stale ? [] : voice.stream.events) {
      const state = String(event.data?.state);
      if (event.type === "session.state" && (STEPS as readonly string[]).concat(PAUSES).includes(state)) last = state;
    }
    return last;
  }, [stale, voice.stream.events, view.status]);

  const start = (conversationId: string | null) =>
    voice.start({
      profile: profile || config?.default_profile || "echo",
      transport,
      conversationId,
    });

  // Start and Stop replace each other: the focus follows to the button that took the pressed
  // one's place (once it can take it), rather than falling to the page.
  const startButton = useRef<HTMLButtonElement | null>(null);
  const stopButton = useRef<HTMLButtonElement | null>(null);
  const focusNext = useRef(false);
  useEffect(() => {
    if (!focusNext.current) return;
    const target = busy ? stopButton.current : startButton.current;
    if (!target || target.disabled) return; // not yet (Stop waits for the call to be live)
    focusNext.current = false;
    const active = document.activeElement as HTMLElement | null;
    const lost =
      !active || active === document.body || !active.isConnected || (active as HTMLButtonElement).disabled === true;
    if (lost || active === startButton.current || active === stopButton.current) target.focus();
  }, [busy, phase]);

  // Push to talk: the microphone is on only while Space (or the Hold to talk button) is held.
  const [pushToTalk, setPushToTalk] = useState(false);
  const [holding, setHolding] = useState(false);
  const { setMicEnabled } = voice;
  const live = phase === "live";
  useEffect(() => {
    if (live && pushToTalk) setMicEnabled(holding);
  }, [live, pushToTalk, holding, setMicEnabled]);
  const choosePushToTalk = (on: boolean) => {
    setPushToTalk(on);
    setHolding(false);
    if (live && !on) setMicEnabled(true);
  };

  // Keyboard: M mutes, Esc stops, Space (held) talks in push-to-talk; not while typing.
  const stopRef = useRef<() => void>(() => undefined);
  stopRef.current = () => {
    focusNext.current = true;
    void voice.stop();
  };
  const micRef = useRef(voice.micEnabled);
  micRef.current = voice.micEnabled;
  useEffect(() => {
    if (!live) return;
    const typing = (target: EventTarget | null) =>
      target instanceof HTMLElement &&
      (target.isContentEditable ||
        target instanceof HTMLTextAreaElement ||
        target instanceof HTMLSelectElement ||
        (target instanceof HTMLInputElement && !["checkbox", "radio", "button", "submit"].includes(target.type)));
    const down = (event: KeyboardEvent) => {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      if (event.key === " " && pushToTalk) {
        event.preventDefault(); // neither scroll nor press the focused button
        if (!event.repeat) setHolding(true);
      } else if ((event.key === "m" || event.key === "M") && !pushToTalk) {
        event.preventDefault();
        setMicEnabled(!micRef.current);
      } else if (event.key === "Escape") {
        event.preventDefault();
        stopRef.current();
      }
    };
    const up = (event: KeyboardEvent) => {
      if (event.key === " " && pushToTalk) {
        event.preventDefault();
        setHolding(false);
      }
    };
    window.addEventListener("keydown", down);
    window.addEventListener("keyup", up);
    return () => {
      window.removeEventListener("keydown", down);
      window.removeEventListener("keyup", up);
    };
  }, [live, pushToTalk, setMicEnabled]);

  const continueConversation = () => {
    if (!session) return;
    focusNext.current = true;
    setParams({ conversation: session.conversation_id });
    void start(session.conversation_id);
  };

  const description = config?.profile_info?.[profile]?.description;
  const finished = phase === "done" ? endProblem(view.status, view.reason, serverWords(view)) : null;
  const connected = view.status === "connected";
  const userSpeaking = view.userSpeaking || (connected && voice.rtvi.userSpeaking);
  const botSpeaking = view.botSpeaking || (connected && voice.rtvi.botSpeaking);
  const mediaLive = voice.transportState === "connected" || voice.transportState === "ready";
  // The API refused the live events: what the page shows is stale until they flow again.
  const refusal = voice.streamRefusal && !view.final && !stale ? voice.streamRefusal : null;
  const refusalProblem = refusal ? streamRefusalProblem(refusal) : null;

  return (
    <main id="main" className="page talk">
      <h1>Talk</h1>
      {configProblem ? <ProblemBox problem={configProblem} /> : null}

      <section className="card controls" aria-label="Session controls">
        <div className="fields">
          <label>
            Profile
            <select
              value={profile}
              onChange={(e) => setProfile(e.target.value)}
              disabled={busy || !config}
              aria-describedby={description ? "profile-description" : undefined}
            >
              {(config?.profiles ?? []).map((p) => (
                <option key={p} value={p}>
                  {config?.profile_info?.[p]?.label ?? p}
                </option>
              ))}
              {(config?.unavailable_profiles ?? []).map((p) => (
                <option key={p.name} value={p.name} disabled title={`Needs ${p.needs}`}>
                  {config?.profile_info?.[p.name]?.label ?? p.name} (needs {p.needs})
                </option>
              ))}
            </select>
          </label>
          <label>
            Transport
            <select value={transport} onChange={(e) => setTransport(e.target.value)} disabled={busy || !config}>
              {(config?.transports ?? ["webrtc"]).map((t) => (
                <option key={t} value={t} disabled={!WEB_APP_TRANSPORTS.includes(t)}>
                  {TRANSPORT_LABELS[t] ?? t}
                  {WEB_APP_TRANSPORTS.includes(t) ? "" : " (not in the web app)"}
                </option>
              ))}
            </select>
          </label>
        </div>
        {description ? (
          <p className="hint" id="profile-description" data-testid="profile-description">
            {description}
          </p>
        ) : null}
        <DevicePickers voice={voice} />
        <label className="check">
          <input
            type="checkbox"
            checked={pushToTalk}
            onChange={(e) => choosePushToTalk(e.target.checked)}
            data-testid="push-to-talk"
          />
          Push to talk: the microphone is on only while you hold Space or the Hold to talk button
        </label>
        {continuing && !busy ? (
          <p className="note">
            Continuing conversation <code>{continuing.slice(0, 8)}</code>.{" "}
            <button type="button" className="button-link" onClick={() => setParams({})}>
              Start a new one instead
            </button>
          </p>
        ) : null}
        <div className="buttons">
          {busy ? (
            <>
              <button
                type="button"
                className="button-danger"
                ref={stopButton}
                onClick={() => {
                  focusNext.current = true;
                  void voice.stop();
                }}
                disabled={phase !== "live"}
                aria-keyshortcuts="Escape"
                data-testid="stop"
              >
                {phase === "stopping" ? "Stopping…" : "Stop"}
                <KeyHint keys="Esc" />
              </button>
              {pushToTalk ? (
                <button
                  type="button"
                  className={holding ? "button-primary" : undefined}
                  aria-pressed={holding}
                  aria-keyshortcuts="Space"
                  disabled={phase !== "live"}
                  onPointerDown={() => setHolding(true)}
                  onPointerUp={() => setHolding(false)}
                  onPointerLeave={() => setHolding(false)}
                  onKeyDown={(e) => e.key === "Enter" && setHolding(true)}
                  onKeyUp={(e) => e.key === "Enter" && setHolding(false)}
                  data-testid="hold-to-talk"
                >
                  {holding ? "Talking…" : "Hold to talk"}
                  <KeyHint keys="Space" />
                </button>
              ) : (
                <button
                  type="button"
                  aria-pressed={!voice.micEnabled}
                  aria-keyshortcuts="M"
                  onClick={() => voice.setMicEnabled(!voice.micEnabled)}
                  disabled={phase !== "live"}
                  data-testid="mute"
                >
                  {voice.micEnabled ? "Mute" : "Unmute"}
                  <KeyHint keys="M" />
                </button>
              )}
            </>
          ) : (
            <button
              type="button"
              className="button-primary"
              ref={startButton}
              onClick={() => {
                focusNext.current = true;
                void start(continuing);
              }}
              disabled={!config || !profile}
              data-testid="start"
            >
              Start
            </button>
          )}
          {phase === "done" && session ? (
            <>
              <button type="button" onClick={continueConversation} data-testid="continue">
                Continue this conversation
              </button>
              <Link to={`/history/${session.conversation_id}`}>Open in History</Link>
            </>
          ) : null}
        </div>
      </section>

      {voice.problem && !stale ? <ProblemBox problem={voice.problem} onDismiss={voice.dismissProblem} /> : null}
      {voice.problem?.code === "too_many_sessions" && !stale && !busy ? <LiveSessions /> : null}
      {finished ? <ProblemBox problem={finished} /> : null}
      {refusal && refusalProblem ? (
        <div className="problem" role="alert" data-testid="stream-refused" data-code={refusal.code}>
          <div>
            <strong>{refusalProblem.title}</strong>
            {refusalProblem.detail ? <p>{refusalProblem.detail}</p> : null}
          </div>
          {isRetryable(refusal) ? (
            <button type="button" className="problem-action" onClick={voice.reconnectEvents}>
              {refusal.retryInMs != null ? "Try again now" : "Try again"}
            </button>
          ) : null}
        </div>
      ) : null}

      <section className="card status" aria-label="Session status">
        <p
          className="status-line"
          role="status"
          data-testid="session-status"
          data-status={view.status ?? phase}
          data-stream={refusal ? "refused" : voice.streamStatus ?? undefined}
        >
          <StatusText phase={phase} view={view} />
        </p>
        <ol className="steps">
          {[...STEPS, ...PAUSES.filter((pause) => reached.has(pause))].map((step) => {
            const failed = step === failedAt;
            const done = reached.has(step) && !failed;
            return (
              <li
                key={step}
                className={`step${done ? " step-reached" : ""}${failed ? " step-failed" : ""}${(PAUSES as readonly string[]).includes(step) ? " step-pause" : ""}`}
                data-testid={`step-${step}`}
                data-reached={done ? "true" : "false"}
                data-failed={failed ? "true" : undefined}
                aria-current={view.status === step || failed ? "step" : undefined}
              >
                {STATE_LABELS[step]}
                {failed ? <span className="step-failed-mark"> — failed</span> : null}
              </li>
            );
          })}
        </ol>
        {voice.playbackBlocked && phase === "live" ? (
          <p className="note" data-testid="playback-blocked">
            The browser is holding back the call&apos;s sound until you click.{" "}
            <button type="button" className="button-primary" onClick={voice.resumePlayback} data-testid="resume-call">
              Resume call
            </button>
          </p>
        ) : null}
        <div className="levels">
          <LevelMeter
            label="You"
            level={voice.localLevel}
            speaking={userSpeaking}
            active={mediaLive}
            muted={busy && !voice.micEnabled}
            testId="user-level"
          />
          <LevelMeter
            label="Bot"
            level={voice.remoteLevel}
            speaking={botSpeaking}
            active={mediaLive}
            testId="bot-level"
          />
        </div>
        {live && connected && session?.profile === "assistant" ? <TypeToAssistant voice={voice} /> : null}
        <CallInfo
          events={stale ? [] : voice.stream.events}
          who={session?.profile === "assistant" ? config?.assistant_name || "Assistant" : "Bot"}
          userSpeaking={userSpeaking}
          botSpeaking={botSpeaking}
          micEnabled={voice.micEnabled}
          live={live && connected}
          final={view.final}
          stats={voice.connectionStats}
        />
        {voice.streamStatus === "reconnecting" && !view.final && !refusal ? (
          <p className="note" data-testid="stream-reconnecting">
            Reconnecting to the live events…
          </p>
        ) : null}
        {voice.streamStatus === "failed" && !view.final && !refusal ? (
          <p className="note" data-testid="stream-failed">
            Lost the live events; the call may still be going on.{" "}
            <button type="button" className="button-link" onClick={voice.reconnectEvents}>
              Try again
            </button>
          </p>
        ) : null}
      </section>

      <section className="card" aria-labelledby="transcript-title">
        <h2 id="transcript-title">Transcript</h2>
        {earlierViews.length ? (
          <details className="earlier" open={phase === "idle" || undefined} data-testid="earlier">
            <summary>Earlier in this conversation</summary>
            {earlierViews.map((s) => (
              <Transcript key={s.sessionId} items={s.view.items} hasTranscript={s.view.hasTranscript} />
            ))}
          </details>
        ) : null}
        <Transcript
          items={view.items}
          hasTranscript={view.hasTranscript}
          live
          emptyText={
            phase === "idle" ? "Press Start and speak; what is said shows up here." : "Nothing said yet."
          }
        />
      </section>
      {session && !stale ? <EventLog events={voice.stream.events} /> : null}
    </main>
  );
}

/** A line typed to the assistant, sent as the user's message; answered like spoken words. */
function TypeToAssistant({ voice }: { voice: ReturnType<typeof useVoiceSession> }) {
  const [text, setText] = useState("");
  const [sending, setSending] = useState(false);
  const [failed, setFailed] = useState(false);
  const send = async (event: FormEvent) => {
    event.preventDefault();
    const words = text.trim();
    if (!words) return;
    setSending(true);
    setFailed(false);
    try {
      await voice.sendText(words);
      setText("");
    } catch {
      setFailed(true); // the words stay in the box, to send again
    } finally {
      setSending(false);
    }
  };
  return (
    <>
      <InlineForm
        id="type-to-text"
        label="Type instead of speaking"
        value={text}
        onChange={setText}
        onSubmit={(e) => void send(e)}
        placeholder="Ask something…"
        maxLength={2000}
        className="type-to"
        formTestId="type-to"
        inputTestId="type-to-text"
      >
        <button type="submit" disabled={sending || !text.trim()} data-testid="type-to-send">
          Send
        </button>
      </InlineForm>
      {failed ? <p className="note">That didn&apos;t go through; try sending it again.</p> : null}
    </>
  );
}

const canPickSpeaker = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

/** Microphone and speaker, once the browser has said which there are (the microphone open). */
/** A shortcut's key, shown on its button but not part of the button's name. */
function KeyHint({ keys }: { keys: string }) {
  return (
    <kbd className="kbd-hint" aria-hidden="true">
      {keys}
    </kbd>
  );
}

function DevicePickers({ voice }: { voice: ReturnType<typeof useVoiceSession> }) {
  const { mics, mic, speakers, speaker } = voice.devices;
  if (!mics.length) return null;
  return (
    <div className="fields devices">
      <DeviceSelect label="Microphone" devices={mics} value={mic} onPick={voice.selectMic} testId="mic-picker" />
      {canPickSpeaker && speakers.length ? (
        <DeviceSelect label="Speaker" devices={speakers} value={speaker} onPick={voice.selectSpeaker} testId="speaker-picker" />
      ) : null}
    </div>
  );
}

function DeviceSelect(props: {
  label: string;
  devices: MediaDeviceInfo[];
  value: string | null;
  onPick: (deviceId: string) => void;
  testId: string;
}) {
  return (
    <label>
      {props.label}
      <select value={props.value ?? ""} onChange={(e) => props.onPick(e.target.value)} data-testid={props.testId}>
        {props.value ? null : <option value="">System default</option>}
        {props.devices.map((d, i) => (
          <option key={d.deviceId || i} value={d.deviceId}>
            {d.label || `${props.label} ${i + 1}`}
          </option>
        ))}
      </select>
    </label>
  );
}

function StatusText({ phase, view }: { phase: Phase; view: SessionView }) {
  const { transportState, botReady, streamStatus, streamRefusal, micEnabled } = useVoiceSession();
  switch (phase) {
    case "idle":
      return <>Not started.</>;
    case "mic":
      return <>Opening the microphone…</>;
    case "creating":
      return <>Asking for a session…</>;
    case "stopping":
      return <>Ending the session…</>;
    case "done":
      return (
        <>
          <strong>{STATE_LABELS[view.status ?? "ended"] ?? view.status}.</strong>{" "}
          {/* A failure is explained in the box above; a normal end here. */}
          {endProblem(view.status, view.reason) ? "" : reasonText(view.reason, serverWords(view))}
        </>
      );
  }
  if (streamRefusal || streamStatus === "failed") {
    // No events come in: don't show the last state as if it were live.
    const last = view.status ? STATE_LABELS[view.status] ?? view.status : null;
    return (
      <>
        <strong>Live updates stopped</strong>
        {last ? ` — last known state: ${last}.` : " — the session's state is unknown."}
      </>
    );
  }
  switch (view.status) {
    case "queued": {
      const position = view.queue?.position;
      const wait = formatWait(view.queue?.estimatedWaitS);
      return (
        <>
          <strong>Queued</strong>
          {position ? ` — number ${position} in line` : " — waiting for a free worker"}
          {wait ? `, ${wait} to wait` : ""}.
        </>
      );
    }
    case "starting":
      return (
        <>
          <strong>Starting</strong> — a worker is preparing your bot.
        </>
      );
    case "ready":
      return (
        <>
          <strong>Ready</strong> — {view.reason === "recovered" ? "your call moved to another worker; " : ""}connecting
          audio{transportState === "connecting" ? "…" : "."}
        </>
      );
    case "connected":
      if (!micEnabled) {
        // Not "talk now": the bot hears nothing until the microphone is on again.
        return (
          <>
            <strong>Muted</strong> — {view.reason === "client_reconnected" ? "back again; " : ""}unmute to talk
            {botReady ? "." : " (the bot is getting ready…)."}
          </>
        );
      }
      return (
        <>
          <strong>Connected</strong> — {view.reason === "client_reconnected" ? "back again; " : ""}
          {botReady ? "talk now." : "the bot is getting ready…"}
        </>
      );
    case "reconnecting":
      return (
        <>
          <strong>Reconnecting…</strong> — the audio connection dropped; the call waits while your browser connects
          again.
        </>
      );
    case "recovering":
      return (
        <>
          <strong>Moving your call…</strong> —{" "}
          {view.reason === "worker_draining"
            ? "its worker is being taken out of service"
            : "the worker running it stopped unexpectedly"}
          ; another one takes it over, with everything said so far.
        </>
      );
    default:
      return <>Waiting for the session…</>;
  }
}

/** What the server said about the session's end: the final state's message and error events. */
function serverWords(view: SessionView): string[] {
  return view.items.flatMap((item) =>
    item.kind === "error" ? [item.message] : item.kind === "status" && item.message ? [item.message] : [],
  );
}
