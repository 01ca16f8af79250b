import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { VPEvent } from "../lib/types";
import { openEventStream, type StreamStatus } from "./eventStream";

/** Enough of EventSource to drive the stream: named events, readyState, close. */
class FakeEventSource extends EventTarget {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  static instances: FakeEventSource[] = [];
  readyState = FakeEventSource.CONNECTING;
  onopen: ((ev: Event) => void) | null = null;
  constructor(readonly url: string) {
    super();
    FakeEventSource.instances.push(this);
  }
  open() {
    this.readyState = FakeEventSource.OPEN;
    this.onopen?.(new Event("open"));
  }
  send(id: string, event: VPEvent) {
    this.dispatchEvent(new MessageEvent(event.type, { data: JSON.stringify(event), lastEventId: id }));
  }
  /** A dropped connection: the browser retries by itself (CONNECTING) or gives up (CLOSED). */
  fail(gaveUp: boolean) {
    this.readyState = gaveUp ? FakeEventSource.CLOSED : FakeEventSource.CONNECTING;
    this.dispatchEvent(new Event("error"));
  }
  close() {
    this.readyState = FakeEventSource.CLOSED;
  }
}

const ev = (seq: number, type: string, data: Record<string, unknown> = {}): VPEvent => ({
  session_id: "s1",
  seq,
  ts: seq,
  type,
  data,
});

describe("openEventStream", () => {
  beforeEach(() => {
    FakeEventSource.instances = [];
    vi.useFakeTimers();
  });
  afterEach(() => vi.useRealTimers());

  const start = () => {
    const events: [VPEvent, string][] = [];
    const statuses: StreamStatus[] = [];
    const stream = openEventStream(
      "/api/sessions/s1/events",
      { onEvent: (e, id) => events.push([e, id]), onStatus: (s) => statuses.push(s) },
      { EventSourceImpl: FakeEventSource as unknown as typeof EventSource, retryDelayMs: () => 100 },
    );
    return { events, statuses, stream };
  };

  it("passes named events on, with their ids, and closes itself on the final state", () => {
    const { events, statuses, stream } = start();
    const es = FakeEventSource.instances[0];
    es.open();
    es.send("1-0", ev(1, "session.state", { state: "queued" }));
    es.send("2-0", ev(2, "user.turn_started", { turn: 1 }));
    // The server's own `event: error` is an event, not a network error.
    es.send("3-0", ev(3, "error", { message: "tts hiccup", fatal: false }));
    es.send("4-0", ev(4, "session.state", { state: "ended", reason: "client_ended" }));
    expect(events.map(([e, id]) => [e.seq, id])).toEqual([
      [1, "1-0"],
      [2, "2-0"],
      [3, "3-0"],
      [4, "4-0"],
    ]);
    expect(es.readyState).toBe(FakeEventSource.CLOSED);
    expect(statuses).toEqual(["connecting", "open", "closed"]);
    expect(stream.lastEventId()).toBe("4-0");
    es.send("5-0", ev(5, "user.turn_started"));
    expect(events).toHaveLength(4);
  });

  it("lets the browser reconnect by itself (it sends Last-Event-ID)", () => {
    const { statuses } = start();
    const es = FakeEventSource.instances[0];
    es.open();
    es.send("1-0", ev(1, "session.state", { state: "queued" }));
    es.fail(false);
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(statuses.at(-1)).toBe("reconnecting");
    es.open();
    expect(statuses.at(-1)).toBe("open");
  });

  it("reopens with ?after=<last id> when the browser gave up", () => {
    const { events } = start();
    const first = FakeEventSource.instances[0];
    first.open();
    first.send("1700000000000-0", ev(1, "session.state", { state: "queued" }));
    first.fail(true);
    vi.advanceTimersByTime(100);
    const second = FakeEventSource.instances[1];
    expect(second.url).toBe("/api/sessions/s1/events?after=1700000000000-0");
    second.open();
    second.send("1700000000001-0", ev(2, "session.state", { state: "starting" }));
    expect(events.map(([e]) => e.seq)).toEqual([1, 2]);
  });

  it("reports failure after its retries, and close() stops everything", () => {
    const { statuses, stream } = start();
    for (let i = 0; i < 9; i++) {
      FakeEventSource.instances.at(-1)!.fail(true);
      vi.advanceTimersByTime(100);
    }
    expect(statuses.at(-1)).toBe("failed");
    stream.close();
    expect(statuses.at(-1)).toBe("closed");
  });
});
