// The event-stream reducer: a session's events in, what the page shows out.
//
// Design. The state keeps the events themselves, unique by `seq` and sorted by
// it; the view (status, queue place, who is speaking, transcript items) is a
// fold over those events. The common case, the next event in order, is folded
// in incrementally; a duplicate (a replay after a reconnect) is dropped; an
// event older than the newest one (out of order) is inserted in place and the
// view is folded again from the start. So the view only depends on the *set*
// of events received, never on how often or in which order they came, and a
// resumed stream can neither lose nor repeat a line.
//
// What the API said outside the stream (the POST or DELETE reply, the live list
// after a reload) is a snapshot with the seq of the state event behind it; the
// view shows whichever state is later by seq. States cycle (connected →
// reconnecting → connected, recovering → ready), so no order of states can tell.

import { FINAL_STATES, type SessionStatus, type VPEvent } from "../lib/types";

export interface ToolStep {
  step: number;
  text: string;
  kind: string;
}

export type TranscriptItem =
  | { kind: "user"; key: string; ts: number; text: string; typed?: boolean }
  | { kind: "assistant"; key: string; ts: number; text: string; interrupted: boolean }
  | {
      kind: "turn";
      key: string;
      ts: number;
      who: "user" | "bot";
      turn: number;
      /** null while the turn is still going on. */
      durationS: number | null;
      /** The session ended before the turn did. */
      cutOff?: boolean;
    }
  | {
      kind: "tool";
      key: string;
      ts: number;
      callId: string;
      name: string;
      /** What people see on the card (the tool's configured title), when it has one. */
      title?: string;
      args: unknown;
      status: "running" | "completed" | "failed";
      steps: ToolStep[];
      result?: unknown;
      error?: string;
      durationS?: number;
    }
  | {
      kind: "status";
      key: string;
      ts: number;
      state: SessionStatus;
      reason: string | null;
      message?: string;
    }
  | { kind: "error"; key: string; ts: number; message: string; fatal: boolean };

export interface QueueInfo {
  position: number | null;
  estimatedWaitS: number | null;
}

export interface SessionView {
  status: SessionStatus | null;
  reason: string | null;
  /** `seq` of the state event behind `status` (null: none yet, or a snapshot without one). */
  stateSeq: number | null;
  final: boolean;
  queue: QueueInfo | null;
  userSpeaking: boolean;
  botSpeaking: boolean;
  items: TranscriptItem[];
  /** Position of an item in `items` by its key (tool calls and turns are updated in place). */
  index: Record<string, number>;
  /** Whether any user or assistant transcript line came (else turn lines stand in for it). */
  hasTranscript: boolean;
  userTurns: number;
  botTurns: number;
}

export const emptyView = (): SessionView => ({
  status: null,
  reason: null,
  stateSeq: null,
  final: false,
  queue: null,
  userSpeaking: false,
  botSpeaking: false,
  items: [],
  index: {},
  hasTranscript: false,
  userTurns: 0,
  botTurns: 0,
});

const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
const str = (v: unknown): string => (typeof v === "string" ? v : v == null ? "" : String(v));

function push(view: SessionView, item: TranscriptItem): SessionView {
  return {
    ...view,
    items: [...view.items, item],
    index: { ...view.index, [item.key]: view.items.length },
  };
}

/** A user's words arrive once transcribed, often after the tools and the answer they
 * caused: put them before those (what came after the speaker started), at that start. */
function placeUserLine(view: SessionView, item: Extract<TranscriptItem, { kind: "user" }>, started: number | null): SessionView {
  if (started === null) return push(view, item);
  let at = view.items.length;
  while (at > 0) {
    const before = view.items[at - 1];
    if ((before.kind !== "tool" && before.kind !== "assistant") || before.ts <= started) break;
    at -= 1;
  }
  const items = [...view.items.slice(0, at), { ...item, ts: started }, ...view.items.slice(at)];
  const index = { ...view.index };
  items.slice(at).forEach((moved, i) => (index[moved.key] = at + i));
  return { ...view, items, index };
}

function upsert(
  view: SessionView,
  key: string,
  create: () => TranscriptItem,
  update: (item: TranscriptItem) => TranscriptItem,
): SessionView {
  const at = view.index[key];
  if (at === undefined) return push(view, update(create()));
  const items = view.items.slice();
  items[at] = update(items[at]);
  return { ...view, items };
}

/** States in which the call goes on without its media: the client must connect again. */
export const LOST_STATES: ReadonlySet<string> = new Set(["reconnecting", "recovering"]);
/** Reasons of the states that end such a pause (connected again; ready on another worker). */
const RESUMED_REASONS: ReadonlySet<string> = new Set(["client_reconnected", "recovered"]);

/** Fold one event into the view (events must come in `seq` order). */
export function applyEvent(view: SessionView, event: VPEvent): SessionView {
  const d = event.data ?? {};
  const sid = event.session_id;
  const ts = event.ts;
  switch (event.type) {
    case "session.state": {
      const state = str(d.state) as SessionStatus;
      const reason = d.reason == null ? null : str(d.reason);
      const final = FINAL_STATES.has(state);
      let next: SessionView = {
        ...view,
        status: state,
        reason,
        stateSeq: event.seq,
        final,
        queue: state === "queued" ? view.queue : null,
      };
      if (final || LOST_STATES.has(state)) {
        // Nobody speaks while the call waits for its client or its next worker.
        next = { ...next, userSpeaking: false, botSpeaking: false };
      }
      if (final || state === "recovering") {
        // Close turns that never got their end (a lost worker never sends it).
        next = {
          ...next,
          items: next.items.map((item) =>
            item.kind === "turn" && item.durationS === null ? { ...item, cutOff: true } : item,
          ),
        };
      }
      if (final || LOST_STATES.has(state) || RESUMED_REASONS.has(reason ?? "")) {
        // A line in the transcript: how it ended, and where the call was lost and found again.
        next = push(next, {
          kind: "status",
          key: `${sid}:state:${event.seq}`,
          ts,
          state,
          reason,
          message: d.message == null ? undefined : str(d.message),
        });
      }
      return next;
    }
    case "session.queue":
      return {
        ...view,
        queue: { position: num(d.position), estimatedWaitS: num(d.estimated_wait_s) },
      };
    case "user.turn_started":
    case "user.turn_stopped":
    case "bot.started_speaking":
    case "bot.stopped_speaking": {
      const who = event.type.startsWith("user") ? "user" : "bot";
      const started = event.type.endsWith("started") || event.type.endsWith("started_speaking");
      const turn = num(d.turn) ?? (who === "user" ? view.userTurns + 1 : view.botTurns + 1);
      const key = `${sid}:${who}-turn:${turn}`;
      const duration = num(d.duration_s);
      let next = upsert(
        view,
        key,
        () => ({ kind: "turn", key, ts, who, turn, durationS: null }),
        (item) =>
          item.kind === "turn" && !started ? { ...item, durationS: duration ?? 0 } : item,
      );
      if (who === "user") {
        next = {
          ...next,
          userSpeaking: started,
          userTurns: started ? next.userTurns : Math.max(next.userTurns, turn),
        };
      } else {
        next = {
          ...next,
          botSpeaking: started,
          botTurns: started ? next.botTurns : Math.max(next.botTurns, turn),
        };
      }
      return next;
    }
    case "user.transcript": {
      const started = typeof d.started === "string" ? Date.parse(d.started) / 1000 : NaN;
      const line = { kind: "user" as const, key: `${sid}:${event.seq}`, ts, text: str(d.text), typed: Boolean(d.typed) };
      return {
        ...placeUserLine(view, line, Number.isFinite(started) && started <= ts ? started : null),
        hasTranscript: true,
      };
    }
    case "assistant.transcript":
      return {
        ...push(view, {
          kind: "assistant",
          key: `${sid}:${event.seq}`,
          ts,
          text: str(d.text),
          interrupted: Boolean(d.interrupted),
        }),
        hasTranscript: true,
      };
    case "tool.started":
    case "tool.progress":
    case "tool.completed":
    case "tool.failed": {
      const callId = str(d.call_id) || `seq${event.seq}`;
      const key = `${sid}:tool:${callId}`;
      return upsert(
        view,
        key,
        () => ({
          kind: "tool",
          key,
          ts,
          callId,
          name: str(d.name) || "tool",
          args: undefined,
          status: "running",
          steps: [],
        }),
        (item) => {
          if (item.kind !== "tool") return item;
          switch (event.type) {
            case "tool.started":
              return { ...item, name: str(d.name) || item.name, title: str(d.title) || undefined, args: d.arguments };
            case "tool.progress":
              return {
                ...item,
                steps: [
                  ...item.steps,
                  { step: num(d.step) ?? item.steps.length + 1, text: str(d.text), kind: str(d.kind) },
                ],
              };
            case "tool.completed":
              return {
                ...item,
                status: "completed",
                result: d.result,
                durationS: num(d.duration_s) ?? undefined,
              };
            default:
              return {
                ...item,
                status: "failed",
                error: str(d.error) || "the tool failed",
                durationS: num(d.duration_s) ?? undefined,
              };
          }
        },
      );
    }
    case "error":
      return push(view, {
        kind: "error",
        key: `${sid}:${event.seq}`,
        ts,
        message: str(d.message) || "error",
        fatal: Boolean(d.fatal),
      });
    default:
      return view; // metrics.* and anything newer: not shown
  }
}

export function foldEvents(events: readonly VPEvent[]): SessionView {
  return events.reduce(applyEvent, emptyView());
}

// --- the live stream's state -------------------------------------------------------

export interface StreamState {
  sessionId: string | null;
  conversationId: string | null;
  /** Unique by seq, sorted by seq. */
  events: VPEvent[];
  view: SessionView;
  /**
   * What the API said outside the stream (POST /sessions, DELETE, the live list): shown while
   * its `seq` (the state event behind it) is later than the events' last state.
   */
  snapshot: {
    status: SessionStatus;
    reason: string | null;
    queuePosition: number | null;
    seq: number | null;
  } | null;
  /** Events dropped as already seen (replays after a reconnect). */
  duplicates: number;
}

export type StreamAction =
  | {
      type: "reset";
      sessionId: string | null;
      conversationId?: string | null;
      status?: SessionStatus;
      reason?: string | null;
      /** The API's `state_seq` for `status`. */
      stateSeq?: number | null;
      queuePosition?: number | null;
    }
  | { type: "event"; event: VPEvent }
  | { type: "snapshot"; status: SessionStatus; reason: string | null; seq?: number | null };

export const initialStream: StreamState = {
  sessionId: null,
  conversationId: null,
  events: [],
  view: emptyView(),
  snapshot: null,
  duplicates: 0,
};

/** Where `seq` is, or would go, in events sorted by seq (binary search). */
function position(events: readonly VPEvent[], seq: number): number {
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[mid].seq < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function streamReducer(state: StreamState, action: StreamAction): StreamState {
  switch (action.type) {
    case "reset":
      return {
        ...initialStream,
        view: emptyView(),
        sessionId: action.sessionId,
        conversationId: action.conversationId ?? null,
        snapshot: action.status
          ? {
              status: action.status,
              reason: action.reason ?? null,
              queuePosition: action.queuePosition ?? null,
              seq: action.stateSeq ?? null,
            }
          : null,
      };
    case "snapshot":
      return {
        ...state,
        snapshot: { status: action.status, reason: action.reason, queuePosition: null, seq: action.seq ?? null },
      };
    case "event": {
      const event = action.event;
      if (!state.sessionId || event.session_id !== state.sessionId) return state;
      if (typeof event.seq !== "number") return state;
      const events = state.events;
      const last = events.length ? events[events.length - 1].seq : 0;
      if (event.seq > last) {
        return { ...state, events: [...events, event], view: applyEvent(state.view, event) };
      }
      const at = position(events, event.seq);
      if (at < events.length && events[at].seq === event.seq) {
        return { ...state, duplicates: state.duplicates + 1 };
      }
      const sorted = [...events.slice(0, at), event, ...events.slice(at)];
      return { ...state, events: sorted, view: foldEvents(sorted) };
    }
  }
}

/** Whether the snapshot says something later than the events' last state. */
function snapshotIsLater(view: SessionView, snapshot: NonNullable<StreamState["snapshot"]>): boolean {
  if (view.final) return false; // a final state is the last: nothing comes after it
  if (view.status === null) return true; // no state event yet
  if (snapshot.seq != null) return snapshot.seq > (view.stateSeq ?? 0);
  // No seq (a state the app inferred, e.g. gone on DELETE): only an end is surely later.
  return FINAL_STATES.has(snapshot.status);
}

/** The view to show: the events' view, or the API's snapshot where it is later (by seq). */
export function currentView(state: StreamState): SessionView {
  const { view, snapshot } = state;
  if (!snapshot) return view;
  let result = view;
  if (snapshotIsLater(view, snapshot)) {
    const final = FINAL_STATES.has(snapshot.status);
    const quiet = final || LOST_STATES.has(snapshot.status);
    result = {
      ...view,
      status: snapshot.status,
      reason: snapshot.reason ?? view.reason,
      stateSeq: snapshot.seq ?? view.stateSeq,
      final,
      userSpeaking: quiet ? false : view.userSpeaking,
      botSpeaking: quiet ? false : view.botSpeaking,
    };
  }
  if (result.status === "queued" && !result.queue && snapshot.queuePosition != null) {
    result = { ...result, queue: { position: snapshot.queuePosition, estimatedWaitS: null } };
  }
  return result;
}

// --- stored conversations ------------------------------------------------------------

export interface SessionTranscript {
  sessionId: string;
  view: SessionView;
}

/** Group a conversation's stored events by session (in the sessions' order) and fold each. */
export function conversationViews(
  sessionIds: readonly string[],
  events: readonly VPEvent[],
): SessionTranscript[] {
  const bySession = new Map<string, VPEvent[]>();
  for (const id of sessionIds) bySession.set(id, []);
  for (const event of events) {
    const list = bySession.get(event.session_id) ?? [];
    if (!bySession.has(event.session_id)) bySession.set(event.session_id, list);
    list.push(event);
  }
  return [...bySession.entries()].map(([sessionId, list]) => {
    const unique = new Map<number, VPEvent>();
    for (const e of list) if (!unique.has(e.seq)) unique.set(e.seq, e);
    const sorted = [...unique.values()].sort((a, b) => a.seq - b.seq);
    return { sessionId, view: foldEvents(sorted) };
  });
}
