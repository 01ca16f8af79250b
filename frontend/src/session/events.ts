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

import { FINAL_STATES, type SessionStatus, type VPEvent } from "../lib/types";

export interface ToolStep {
  step: number;
  text: string;
  kind: string;
}

export type TranscriptItem =
  | { kind: "user"; key: string; ts: number; text: string }
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
        final,
        queue: state === "queued" ? view.queue : null,
      };
      if (final) {
        next = { ...next, userSpeaking: false, botSpeaking: false };
        // Close turns and tool calls that never got their end.
        next = {
          ...next,
          items: next.items.map((item) =>
            item.kind === "turn" && item.durationS === null ? { ...item, cutOff: true } : item,
          ),
        };
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
    case "user.transcript":
      return {
        ...push(view, { kind: "user", key: `${sid}:${event.seq}`, ts, text: str(d.text) }),
        hasTranscript: true,
      };
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
              return { ...item, name: str(d.name) || item.name, args: d.arguments };
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
  /** What the API said outside the stream (POST /sessions, DELETE): used until events say more. */
  snapshot: { status: SessionStatus; reason: string | null; queuePosition: number | null } | null;
  /** Events dropped as already seen (replays after a reconnect). */
  duplicates: number;
}

export type StreamAction =
  | {
      type: "reset";
      sessionId: string | null;
      conversationId?: string | null;
      status?: SessionStatus;
      queuePosition?: number | null;
    }
  | { type: "event"; event: VPEvent }
  | { type: "snapshot"; status: SessionStatus; reason: string | null };

export const initialStream: StreamState = {
  sessionId: null,
  conversationId: null,
  events: [],
  view: emptyView(),
  snapshot: null,
  duplicates: 0,
};

const RANK: Record<string, number> = {
  queued: 0,
  starting: 1,
  ready: 2,
  connected: 3,
  ended: 4,
  failed: 4,
  expired: 4,
  cancelled: 4,
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
          ? { status: action.status, reason: null, queuePosition: action.queuePosition ?? null }
          : null,
      };
    case "snapshot":
      return {
        ...state,
        snapshot: { status: action.status, reason: action.reason, queuePosition: null },
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

/** The view to show: the events' view, completed by the API's snapshot where events lag behind. */
export function currentView(state: StreamState): SessionView {
  const { view, snapshot } = state;
  if (!snapshot) return view;
  const eventsRank = view.status ? RANK[view.status] ?? -1 : -1;
  const snapshotRank = RANK[snapshot.status] ?? -1;
  let result = view;
  if (snapshotRank > eventsRank) {
    const final = FINAL_STATES.has(snapshot.status);
    result = {
      ...view,
      status: snapshot.status,
      reason: snapshot.reason ?? view.reason,
      final,
      userSpeaking: final ? false : view.userSpeaking,
      botSpeaking: final ? false : view.botSpeaking,
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
