import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { VPEvent } from "../lib/types";
import { openEventStream, type StreamRefusal, type StreamStatus } from "./eventStream";

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

/** What the API answers when it refuses the stream. */
const refusal = (status: number, code: string, message: string, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify({ detail: { code, message } }), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });

/** What it answers when it does not: an event stream (that never ends by itself). */
const streaming = () =>
  new Response(new ReadableStream(), { status: 200, headers: { "Content-Type": "text/event-stream" } });

describe("openEventStream", () => {
  /** The probe's fetch: answers from `answers` in turn (a stream when there are none left). */
  let answers: (() => Response)[];
  let fetchMock: ReturnType<typeof vi.fn<typeof fetch>>;

  beforeEach(() => {
    FakeEventSource.instances = [];
    vi.useFakeTimers();
    answers = [];
    fetchMock = vi.fn<typeof fetch>(async () => (answers.shift() ?? streaming)());
  });
  afterEach(() => vi.useRealTimers());

  const start = () => {
    const events: [VPEvent, string][] = [];
    const statuses: StreamStatus[] = [];
    const refusals: StreamRefusal[] = [];
    const stream = openEventStream(
      "/api/sessions/s1/events",
      {
        onEvent: (e, id) => events.push([e, id]),
        onStatus: (s) => statuses.push(s),
        onRefused: (r) => refusals.push(r),
      },
      {
        EventSourceImpl: FakeEventSource as unknown as typeof EventSource,
        fetchImpl: fetchMock,
        retryDelayMs: () => 100,
      },
    );
    return { events, statuses, refusals, stream };
  };
  /** Let the probe's fetch answer (and run what is due by then). */
  const settle = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

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

  it("reopens with ?after=<last id> when the browser gave up (and the API still serves it: a blip)", async () => {
    const { events, refusals } = start();
    const first = FakeEventSource.instances[0];
    first.open();
    first.send("1700000000000-0", ev(1, "session.state", { state: "queued" }));
    first.fail(true);
    await settle(100);
    // It asked the same URL why, was answered with a stream, and cut that request at once.
    expect(fetchMock).toHaveBeenCalledTimes(1);
    const [asked, init] = fetchMock.mock.calls[0];
    expect(asked).toBe("/api/sessions/s1/events");
    expect(init).toMatchObject({ credentials: "same-origin", headers: { Accept: "text/event-stream" } });
    expect(init?.signal?.aborted).toBe(true);
    expect(refusals).toEqual([]);
    const second = FakeEventSource.instances[1];
    expect(second.url).toBe("/api/sessions/s1/events?after=1700000000000-0");
    second.open();
    second.send("1700000000001-0", ev(2, "session.state", { state: "starting" }));
    expect(events.map(([e]) => e.seq)).toEqual([1, 2]);
  });

  it("reports failure after its retries, and close() stops everything", async () => {
    const { statuses, stream } = start();
    for (let i = 0; i < 9; i++) {
      FakeEventSource.instances.at(-1)!.fail(true);
      await settle(100);
    }
    expect(statuses.at(-1)).toBe("failed");
    stream.close();
    expect(statuses.at(-1)).toBe("closed");
  });

  it("reports a refusal (429 too_many_streams), retries after Retry-After, then recovers", async () => {
    const { events, statuses, refusals } = start();
    const message = "at most 20 open event streams per user; close other tabs or wait a minute";
    answers.push(() => refusal(429, "too_many_streams", message, { "Retry-After": "5" }));
    const first = FakeEventSource.instances[0];
    first.fail(true); // refused: EventSource gives up without telling why
    await settle();
    expect(refusals).toEqual([
      { status: 429, code: "too_many_streams", message, retryAfterS: 5, retryInMs: 5000 },
    ]);
    expect(statuses).toEqual(["connecting", "reconnecting"]);
    // Not at the usual backoff (100 ms here), but after Retry-After.
    await settle(4999);
    expect(FakeEventSource.instances).toHaveLength(1);
    await settle(1);
    expect(FakeEventSource.instances).toHaveLength(2);
    const second = FakeEventSource.instances[1];
    expect(second.url).toBe("/api/sessions/s1/events");
    second.open();
    expect(statuses.at(-1)).toBe("open");
    second.send("1-0", ev(1, "session.state", { state: "starting" }));
    expect(events.map(([e]) => e.seq)).toEqual([1]);
    expect(refusals).toHaveLength(1);
  });

  it("asks why when the first connection fails while the browser is still retrying by itself", async () => {
    const { refusals, statuses } = start();
    answers.push(() => refusal(503, "redis_unavailable", "the event store is unavailable"));
    const first = FakeEventSource.instances[0];
    first.fail(false);
    await settle();
    // Refused: the browser's own retries are stopped, ours use the backoff (no Retry-After).
    expect(first.readyState).toBe(FakeEventSource.CLOSED);
    expect(refusals).toEqual([
      { status: 503, code: "redis_unavailable", message: "the event store is unavailable", retryInMs: 100 },
    ]);
    expect(statuses.at(-1)).toBe("reconnecting");
    await settle(100);
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it("leaves a blip before the first open to the browser, asking only once", async () => {
    const { refusals, statuses } = start();
    const first = FakeEventSource.instances[0];
    first.fail(false);
    await settle();
    expect(fetchMock).toHaveBeenCalledTimes(1);
    expect(fetchMock.mock.calls[0][1]?.signal?.aborted).toBe(true);
    first.fail(false);
    await settle(1000);
    expect(fetchMock).toHaveBeenCalledTimes(1);
    expect(refusals).toEqual([]);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(first.readyState).toBe(FakeEventSource.CONNECTING);
    first.open();
    expect(statuses.at(-1)).toBe("open");
  });

  it.each([
    [401, "unauthorized", "sign in first"],
    [404, "not_found", "no such session"],
  ])("stops on %i: retrying can't help", async (status, code, message) => {
    const { refusals, statuses } = start();
    answers.push(() => refusal(status, code, message));
    FakeEventSource.instances[0].fail(true);
    await settle();
    expect(refusals).toEqual([{ status, code, message, retryInMs: null }]);
    expect(statuses.at(-1)).toBe("failed");
    await settle(60_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(fetchMock).toHaveBeenCalledTimes(1);
  });

  it("stops after its retries when refused every time; reconnect() starts over", async () => {
    const { refusals, statuses, stream } = start();
    for (let i = 0; i < 9; i++) {
      answers.push(() => refusal(429, "too_many_streams", "too many", { "Retry-After": "5" }));
      FakeEventSource.instances.at(-1)!.fail(true);
      await settle(5000);
    }
    expect(refusals).toHaveLength(9);
    expect(refusals.slice(0, 8).every((r) => r.retryInMs === 5000)).toBe(true);
    expect(refusals[8].retryInMs).toBeNull();
    expect(statuses.at(-1)).toBe("failed");
    expect(FakeEventSource.instances).toHaveLength(9);
    stream.reconnect();
    expect(FakeEventSource.instances).toHaveLength(10);
    FakeEventSource.instances[9].open();
    expect(statuses.at(-1)).toBe("open");
  });

  it("ignores the answer of a look-up that close() cut short", async () => {
    const { refusals, statuses, stream } = start();
    let answer: (r: Response) => void = () => undefined;
    fetchMock.mockImplementationOnce(() => new Promise<Response>((resolve) => (answer = resolve)));
    FakeEventSource.instances[0].fail(true);
    stream.close();
    answer(refusal(429, "too_many_streams", "too many", { "Retry-After": "5" }));
    await settle(10_000);
    expect(refusals).toEqual([]);
    expect(statuses.at(-1)).toBe("closed");
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});
