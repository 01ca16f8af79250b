import { describe, expect, it } from "vitest";
import type { VPEvent } from "../lib/types";
import {
  conversationViews,
  currentView,
  foldEvents,
  initialStream,
  streamReducer,
  type StreamAction,
  type StreamState,
} from "./events";

const SID = "s1";

function ev(seq: number, type: string, data: Record<string, unknown> = {}, session_id = SID): VPEvent {
  return { session_id, conversation_id: "c1", seq, ts: 1_700_000_000 + seq, type, data };
}

/** A whole echo session, as the worker publishes it. */
const ECHO: VPEvent[] = [
  ev(1, "session.state", { state: "queued", reason: "created" }),
  ev(2, "session.queue", { position: 1, estimated_wait_s: 0.5 }),
  ev(3, "session.state", { state: "starting", reason: "picked_up", previous: "queued" }),
  ev(4, "session.state", { state: "ready", reason: "pipeline_ready", previous: "starting" }),
  ev(5, "session.state", { state: "connected", reason: "client_connected", previous: "ready" }),
  ev(6, "user.turn_started", { turn: 1 }),
  ev(7, "user.turn_stopped", { turn: 1, duration_s: 2.3 }),
  ev(8, "bot.started_speaking", { turn: 1 }),
  ev(9, "bot.stopped_speaking", { turn: 1, duration_s: 2.1 }),
  ev(10, "session.state", { state: "ended", reason: "client_ended", previous: "connected" }),
];

const run = (actions: StreamAction[], from: StreamState = initialStream) => actions.reduce(streamReducer, from);
const reset: StreamAction = { type: "reset", sessionId: SID, conversationId: "c1", status: "queued", queuePosition: 3 };
const deliver = (events: VPEvent[]): StreamAction[] => events.map((event) => ({ type: "event", event }));

describe("stream reducer", () => {
  it("folds a session in order to its final state", () => {
    const state = run([reset, ...deliver(ECHO)]);
    const view = currentView(state);
    expect(view.status).toBe("ended");
    expect(view.reason).toBe("client_ended");
    expect(view.final).toBe(true);
    expect(view.queue).toBeNull();
    expect(view.userSpeaking).toBe(false);
    expect(view.botSpeaking).toBe(false);
    expect(view.items.map((i) => i.kind)).toEqual(["turn", "turn", "status"]);
    const [user, bot] = view.items;
    expect(user).toMatchObject({ who: "user", turn: 1, durationS: 2.3 });
    expect(bot).toMatchObject({ who: "bot", turn: 1, durationS: 2.1 });
    expect(state.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  it("shows each step on the way: queue place, speaking", () => {
    let state = run([reset, ...deliver(ECHO.slice(0, 2))]);
    expect(currentView(state)).toMatchObject({
      status: "queued",
      queue: { position: 1, estimatedWaitS: 0.5 },
    });
    state = run(deliver(ECHO.slice(2, 6)), state);
    expect(currentView(state)).toMatchObject({ status: "connected", userSpeaking: true, queue: null });
    expect(currentView(state).items).toEqual([expect.objectContaining({ kind: "turn", durationS: null })]);
    state = run(deliver(ECHO.slice(6, 8)), state);
    expect(currentView(state)).toMatchObject({ userSpeaking: false, botSpeaking: true, userTurns: 1 });
  });

  it("uses the POST reply's queue position until the stream says more", () => {
    const state = run([reset]);
    expect(currentView(state)).toMatchObject({ status: "queued", queue: { position: 3 }, final: false });
  });

  it("drops duplicates by seq, so a replayed stream repeats no line", () => {
    const once = run([reset, ...deliver(ECHO)]);
    const twice = run([reset, ...deliver(ECHO), ...deliver(ECHO)]);
    expect(twice.duplicates).toBe(ECHO.length);
    expect(twice.events).toEqual(once.events);
    expect(currentView(twice)).toEqual(currentView(once));
  });

  it("resumes: an overlapping replay after a reconnect loses and repeats nothing", () => {
    const first = deliver(ECHO.slice(0, 7)); // seq 1..7, then the connection drops
    const resumed = deliver(ECHO.slice(4)); // the new connection starts at seq 5
    const state = run([reset, ...first, ...resumed]);
    expect(state.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(state.duplicates).toBe(3);
    expect(currentView(state)).toEqual(currentView(run([reset, ...deliver(ECHO)])));
  });

  it("puts out-of-order events in place (same view as in order)", () => {
    const shuffled = [ECHO[0], ECHO[4], ECHO[2], ECHO[9], ECHO[1], ECHO[7], ECHO[3], ECHO[8], ECHO[6], ECHO[5]];
    const state = run([reset, ...deliver(shuffled)]);
    expect(state.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(currentView(state)).toEqual(currentView(run([reset, ...deliver(ECHO)])));
  });

  it("ignores another session's events and events before a reset", () => {
    const state = run([reset, { type: "event", event: ev(1, "session.state", { state: "failed" }, "other") }]);
    expect(state.events).toEqual([]);
    expect(run([{ type: "event", event: ECHO[0] }]).events).toEqual([]);
  });

  it("takes the final state from DELETE's reply when the stream lags, and keeps it", () => {
    let state = run([reset, ...deliver(ECHO.slice(0, 5))]);
    state = run([{ type: "snapshot", status: "ended", reason: "client_ended" }], state);
    expect(currentView(state)).toMatchObject({ status: "ended", final: true, reason: "client_ended" });
    state = run(deliver(ECHO.slice(5)), state);
    expect(currentView(state)).toMatchObject({ status: "ended", final: true });
    // A snapshot never moves the state backwards.
    state = run([{ type: "snapshot", status: "connected", reason: null }], state);
    expect(currentView(state).status).toBe("ended");
  });

  it("marks turns the end cut off", () => {
    const view = foldEvents([
      ev(1, "session.state", { state: "connected" }),
      ev(2, "bot.started_speaking", { turn: 1 }),
      ev(3, "session.state", { state: "failed", reason: "worker_lost" }),
    ]);
    expect(view.items[0]).toMatchObject({ kind: "turn", who: "bot", durationS: null, cutOff: true });
    expect(view.items[1]).toMatchObject({ kind: "status", state: "failed", reason: "worker_lost" });
    expect(view.botSpeaking).toBe(false);
  });
});

describe("transcript and tools", () => {
  it("keeps user and assistant lines, interrupted ones marked", () => {
    const view = foldEvents([
      ev(1, "user.transcript", { text: "What's the weather?" }),
      ev(2, "assistant.transcript", { text: "It is sunny and", interrupted: true }),
      ev(3, "user.transcript", { text: "Thanks" }),
      ev(4, "metrics.latency", { kind: "user_bot", seconds: 0.8 }),
    ]);
    expect(view.hasTranscript).toBe(true);
    expect(view.items).toEqual([
      expect.objectContaining({ kind: "user", text: "What's the weather?" }),
      expect.objectContaining({ kind: "assistant", text: "It is sunny and", interrupted: true }),
      expect.objectContaining({ kind: "user", text: "Thanks" }),
    ]);
  });

  it("puts words transcribed late before the tool call and the answer they caused", () => {
    const iso = (seq: number) => new Date((1_700_000_000 + seq) * 1000).toISOString();
    const call = { name: "send_to_nested", call_id: "c-1" };
    const view = foldEvents([
      ev(1, "assistant.transcript", { text: "Hello!" }),
      ev(3, "tool.started", { ...call, arguments: { text: "find flights" } }),
      ev(4, "assistant.transcript", { text: "Searching now." }),
      // The words the user started saying at seq 2's time, transcribed last.
      ev(5, "user.transcript", { text: "Find flights to Oslo", started: iso(2) }),
      ev(6, "tool.completed", { ...call, result: "3 flights" }),
    ]);
    expect(view.items.map((i) => (i.kind === "tool" ? "tool" : `${i.kind}:${"text" in i ? i.text : ""}`))).toEqual([
      "assistant:Hello!",
      "user:Find flights to Oslo",
      "tool",
      "assistant:Searching now.",
    ]);
    expect(view.items[1].ts).toBe(1_700_000_002); // when the words started
    expect(view.items[2]).toMatchObject({ status: "completed" }); // still found by its key
  });

  it("gathers a tool call's steps into one card", () => {
    const call = { name: "send_to_nested", call_id: "c-1" };
    const view = foldEvents([
      ev(1, "tool.started", { ...call, arguments: { text: "find flights" } }),
      ev(2, "tool.progress", { ...call, step: 1, text: "searching", kind: "status" }),
      ev(3, "user.transcript", { text: "still there?" }),
      ev(4, "tool.progress", { ...call, step: 2, text: "found 3", kind: "text" }),
      ev(5, "tool.completed", { ...call, result: "3 flights", duration_s: 4.2 }),
      ev(6, "tool.started", { name: "lookup", call_id: "c-2", arguments: {} }),
      ev(7, "tool.failed", { name: "lookup", call_id: "c-2", error: "timed out", duration_s: 30 }),
    ]);
    expect(view.items.map((i) => i.kind)).toEqual(["tool", "user", "tool"]);
    expect(view.items[0]).toMatchObject({
      name: "send_to_nested",
      status: "completed",
      args: { text: "find flights" },
      steps: [
        { step: 1, text: "searching", kind: "status" },
        { step: 2, text: "found 3", kind: "text" },
      ],
      result: "3 flights",
      durationS: 4.2,
    });
    expect(view.items[2]).toMatchObject({ name: "lookup", status: "failed", error: "timed out" });
  });

  it("groups a stored conversation by session, in the sessions' order", () => {
    const views = conversationViews(
      ["a", "b"],
      [
        ev(1, "user.transcript", { text: "first" }, "a"),
        ev(1, "user.transcript", { text: "second" }, "b"),
        ev(2, "assistant.transcript", { text: "reply" }, "a"),
        ev(2, "assistant.transcript", { text: "reply" }, "a"),
      ],
    );
    expect(views.map((v) => v.sessionId)).toEqual(["a", "b"]);
    expect(views[0].view.items.map((i) => (i.kind === "user" || i.kind === "assistant" ? i.text : ""))).toEqual([
      "first",
      "reply",
    ]);
    expect(views[1].view.items).toHaveLength(1);
  });
});

describe("merging the API's snapshot with the events, by seq", () => {
  /** An echo call that loses its client and gets it back, then moves to another worker. */
  const CYCLES: VPEvent[] = [
    ...ECHO.slice(0, 5), // queued … connected (seq 5)
    ev(6, "user.turn_started", { turn: 1 }),
    ev(7, "session.state", { state: "reconnecting", reason: "client_lost", previous: "connected" }),
    ev(8, "session.state", { state: "connected", reason: "client_reconnected", previous: "reconnecting" }),
    ev(9, "user.transcript", { text: "still there?" }),
    ev(10, "bot.started_speaking", { turn: 1 }),
    ev(11, "session.state", { state: "recovering", reason: "worker_lost", previous: "connected" }),
    ev(12, "session.state", { state: "starting", reason: "picked_up", previous: "recovering" }),
    ev(13, "session.state", { state: "ready", reason: "recovered", previous: "starting" }),
    ev(14, "session.state", { state: "connected", reason: "client_reconnected", previous: "ready" }),
  ];

  it("follows states that cycle, by the events alone", () => {
    const seen = CYCLES.map((_, i) => currentView(run([reset, ...deliver(CYCLES.slice(0, i + 1))])));
    expect(seen.map((v) => v.status)).toEqual([
      "queued", "queued", "starting", "ready", "connected", "connected", "reconnecting", "connected",
      "connected", "connected", "recovering", "starting", "ready", "connected",
    ]);
    expect(seen.map((v) => v.stateSeq)).toEqual([1, 1, 3, 4, 5, 5, 7, 8, 8, 8, 11, 12, 13, 14]);
    expect(seen.every((v) => !v.final)).toBe(true);
  });

  it("shows a later snapshot while the events replay (a reload), and no state from the replay", () => {
    // After a reload: the live list says reconnecting (seq 7); the stream replays from seq 1.
    const attach: StreamAction = { type: "reset", sessionId: SID, status: "reconnecting", reason: "client_lost", stateSeq: 7 };
    let state = run([attach]);
    const shown = [currentView(state).status];
    for (const event of CYCLES.slice(0, 6)) {
      state = run(deliver([event]), state);
      shown.push(currentView(state).status);
    }
    expect(new Set(shown)).toEqual(new Set(["reconnecting"])); // never queued … connected again
    expect(currentView(state)).toMatchObject({ reason: "client_lost", stateSeq: 7, userSpeaking: false });
    state = run(deliver(CYCLES.slice(6, 8)), state); // seq 7 (the same state), then 8
    expect(currentView(state)).toMatchObject({ status: "connected", reason: "client_reconnected", stateSeq: 8 });
  });

  it("ignores an earlier snapshot, whatever its state", () => {
    // The POST reply said queued (seq 1), a DELETE raced a reconnect: both older than the events.
    for (const snapshot of [
      { status: "queued", seq: 1 },
      { status: "connected", seq: 5 },
      { status: "reconnecting", seq: 7 },
    ] as const) {
      const state = run([reset, ...deliver(CYCLES.slice(0, 8)), { type: "snapshot", reason: null, ...snapshot }]);
      expect(currentView(state)).toMatchObject({ status: "connected", reason: "client_reconnected", stateSeq: 8 });
    }
    // Moving: ready on the next worker (seq 13) is later than recovering (seq 11), though "earlier" on the path.
    const moved = run([reset, ...deliver(CYCLES.slice(0, 11)), { type: "snapshot", status: "ready", reason: "recovered", seq: 13 }]);
    expect(currentView(moved)).toMatchObject({ status: "ready", reason: "recovered", stateSeq: 13 });
  });

  it("without a seq, trusts a snapshot only for an end (a final state is the last)", () => {
    const connected = run([reset, ...deliver(CYCLES.slice(0, 8))]);
    expect(currentView(run([{ type: "snapshot", status: "ready", reason: null }], connected)).status).toBe("connected");
    expect(currentView(run([{ type: "snapshot", status: "ended", reason: "client_ended" }], connected))).toMatchObject({
      status: "ended",
      final: true,
    });
  });

  it("marks the pauses in the transcript, and cuts off turns the lost worker never ends", () => {
    const view = currentView(run([reset, ...deliver(CYCLES)]));
    const lines = view.items.filter((i) => i.kind === "status").map((i) => (i.kind === "status" ? `${i.state}/${i.reason}` : ""));
    expect(lines).toEqual(["reconnecting/client_lost", "connected/client_reconnected", "recovering/worker_lost", "ready/recovered", "connected/client_reconnected"]);
    expect(view.items.find((i) => i.kind === "turn" && i.who === "bot")).toMatchObject({ durationS: null, cutOff: true });
    expect(view.items.find((i) => i.kind === "user")).toMatchObject({ text: "still there?" });
    // Nobody speaks while the call waits.
    const waiting = currentView(run([reset, ...deliver(CYCLES.slice(0, 6)), ...deliver([CYCLES[6]])]));
    expect(waiting).toMatchObject({ status: "reconnecting", userSpeaking: false });
  });
});
