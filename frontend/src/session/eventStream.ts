// A session's Server-Sent Events, resumed across network blips.
//
// EventSource reconnects by itself after a dropped connection and sends the last
// `id:` it saw as Last-Event-ID, so the API resumes right after it. When the
// browser gives up instead (an HTTP error while reconnecting), we open a new one
// with `?after=<last id>`, which the API treats like Last-Event-ID. Either way
// the reducer also drops events it has already seen (by seq). The stream is
// closed by us on the session's final state: the API closes it then, and an
// EventSource would otherwise reconnect forever.
//
// EventSource can't see why a request failed: a refusal (429 too_many_streams,
// 503, 401 signed out, 404) looks just like a dropped connection. So when it
// fails before the stream opened, or gives up, we ask the same URL once with
// fetch(): a refusal is reported (onRefused) and retried after Retry-After, or
// not at all when retrying can't help (401, 403, 404, 410); a 200 was a blip
// (that request is cut at once, as it would hold one of the user's streams).

import { errorFromResponse } from "../lib/api";
import { FINAL_STATES, type VPEvent } from "../lib/types";

export const EVENT_TYPES = [
  "session.state",
  "session.queue",
  "user.turn_started",
  "user.turn_stopped",
  "bot.started_speaking",
  "bot.stopped_speaking",
  "user.transcript",
  "assistant.transcript",
  "tool.started",
  "tool.progress",
  "tool.completed",
  "tool.failed",
  "metrics.usage",
  "metrics.latency",
  "model.reconnecting", // not shown, but listened for: an event not listened for is a gap in seq
  "model.reconnected",
  "error", // also EventSource's own error event: told apart by being a MessageEvent with data
  "message",
] as const;

export type StreamStatus = "connecting" | "open" | "reconnecting" | "closed" | "failed";

/** The API's answer when it refused the stream. */
export interface StreamRefusal {
  /** HTTP status (429, 503, 401, 404, …). */
  status: number;
  /** The API's error code (`too_many_streams`, `redis_unavailable`, …), else `http_<status>`. */
  code: string;
  /** The API's message, else the status text. */
  message: string;
  /** Seconds from a Retry-After header, if any. */
  retryAfterS?: number;
  /**
   * When the stream tries again, in ms from now; null when it stopped (401, 403, 404,
   * 410, or out of retries): then the status goes to "failed".
   */
  retryInMs: number | null;
}

export interface EventStreamHandlers {
  onEvent(event: VPEvent, id: string): void;
  onStatus?(status: StreamStatus): void;
  /** The API refused the stream. Until the status is "open" again, the events shown are stale. */
  onRefused?(refusal: StreamRefusal): void;
}

export interface EventStreamOptions {
  /** Attempts to reopen after the browser gave up (or the API refused), before reporting "failed". */
  maxRetries?: number;
  retryDelayMs?: (attempt: number) => number;
  EventSourceImpl?: typeof EventSource;
  /** Asks the stream's URL why EventSource failed (default: the global fetch). */
  fetchImpl?: typeof fetch;
  /** Give up asking after this long (then it counts as a blip). */
  probeTimeoutMs?: number;
}

export interface EventStream {
  close(): void;
  /** The `id:` of the last event received. */
  lastEventId(): string;
  /** Drop the connection as a network blip would (tests): it resumes from the last id. */
  interrupt(): void;
  /** Open again now with a fresh set of retries (after a refusal or "failed"). */
  reconnect(): void;
}

/** Answers for which retrying the same request can't help. */
const STOP_STATUSES: ReadonlySet<number> = new Set([401, 403, 404, 410]);

/** Whether trying again may help (not for 401, 403, 404, 410). */
export function isRetryable(refusal: StreamRefusal): boolean {
  return !STOP_STATUSES.has(refusal.status);
}

/**
 * Why the API refuses `url`, or null when it doesn't (it answers with a stream: the
 * EventSource's failure was a blip) or can't be reached (a blip too).
 */
export async function probeRefusal(
  url: string,
  fetchImpl: typeof fetch,
  signal?: AbortSignal,
): Promise<StreamRefusal | null> {
  const abort = new AbortController();
  const cut = () => abort.abort();
  signal?.addEventListener("abort", cut);
  let response: Response;
  try {
    response = await fetchImpl(url, {
      credentials: "same-origin",
      headers: { Accept: "text/event-stream" },
      signal: abort.signal,
    });
  } catch {
    return null;
  } finally {
    signal?.removeEventListener("abort", cut);
  }
  if (response.ok) {
    abort.abort(); // a live stream: don't hold one of the user's streams open
    return null;
  }
  const error = await errorFromResponse(response);
  return {
    status: error.status,
    code: error.code,
    message: error.message,
    ...(error.retryAfter ? { retryAfterS: error.retryAfter } : {}),
    retryInMs: null,
  };
}

export function isFinalEvent(event: VPEvent): boolean {
  return event.type === "session.state" && FINAL_STATES.has(String(event.data?.state));
}

export function openEventStream(
  url: string,
  handlers: EventStreamHandlers,
  options: EventStreamOptions = {},
): EventStream {
  const Impl = options.EventSourceImpl ?? EventSource;
  const fetchImpl: typeof fetch = options.fetchImpl ?? ((input, init) => fetch(input, init));
  const probeTimeoutMs = options.probeTimeoutMs ?? 10_000;
  const maxRetries = options.maxRetries ?? 8;
  const delay = options.retryDelayMs ?? ((n: number) => Math.min(500 * 2 ** n, 8000));
  let source: EventSource | null = null;
  let target = "";
  /** The current source has opened (then the browser reconnects it by itself). */
  let opened = false;
  /** Its failure before opening was looked into already (a blip: the browser goes on trying). */
  let asked = false;
  /** The look into why a source failed, under way. */
  let probe: { source: EventSource; abort: AbortController } | null = null;
  let lastId = "";
  let closed = false;
  let retries = 0;
  let timer: ReturnType<typeof setTimeout> | null = null;

  let reported: StreamStatus | null = null;
  const status = (s: StreamStatus) => {
    if (s === reported) return;
    reported = s;
    handlers.onStatus?.(s);
  };

  const stopProbe = () => {
    probe?.abort.abort();
    probe = null;
  };

  const close = () => {
    closed = true;
    if (timer) clearTimeout(timer);
    timer = null;
    stopProbe();
    source?.close();
    source = null;
    status("closed");
  };

  const scheduleReopen = () => {
    source?.close();
    source = null;
    if (closed) return;
    if (retries >= maxRetries) {
      status("failed");
      return;
    }
    status("reconnecting");
    timer = setTimeout(open, delay(retries++));
  };

  /** The API refused: say why, and try again later unless that can't help. */
  const refused = (refusal: StreamRefusal) => {
    source?.close();
    source = null;
    const stop = !isRetryable(refusal) || retries >= maxRetries;
    const wait = stop ? null : refusal.retryAfterS ? refusal.retryAfterS * 1000 : delay(retries);
    handlers.onRefused?.({ ...refusal, retryInMs: wait });
    if (wait === null) {
      status("failed");
      return;
    }
    retries++;
    status("reconnecting");
    timer = setTimeout(open, wait);
  };

  /** EventSource's own error event. */
  const onError = () => {
    const es = source;
    if (!es) return;
    const gaveUp = es.readyState === Impl.CLOSED;
    status("reconnecting");
    // Dropped after it had opened: the browser reconnects by itself, with Last-Event-ID
    // (and if that reconnect is refused, it gives up: CLOSED, asked about below).
    if (!gaveUp && (opened || asked)) return;
    asked = true;
    if (probe?.source === es) return; // asking already; its answer decides
    stopProbe();
    const abort = new AbortController();
    const current = { source: es, abort };
    probe = current;
    const timeout = setTimeout(() => abort.abort(), probeTimeoutMs);
    void probeRefusal(target, fetchImpl, abort.signal).then((refusal) => {
      clearTimeout(timeout);
      if (probe !== current) return; // closed, or reopened meanwhile
      probe = null;
      if (closed || source !== es) return;
      if (refusal && es.readyState !== Impl.OPEN) refused(refusal);
      else if (es.readyState === Impl.CLOSED) scheduleReopen();
      // else: a blip, and the browser is still trying (or got through meanwhile)
    });
  };

  const onMessage = (raw: Event) => {
    if (closed) return;
    const message = raw as MessageEvent;
    if (raw.type === "error" && !(typeof message.data === "string" && message.data)) {
      onError();
      return;
    }
    let event: VPEvent;
    try {
      event = JSON.parse(message.data) as VPEvent;
    } catch {
      return;
    }
    if (message.lastEventId) lastId = message.lastEventId;
    retries = 0;
    handlers.onEvent(event, message.lastEventId);
    if (isFinalEvent(event)) close();
  };

  function open() {
    timer = null;
    if (closed) return;
    stopProbe();
    target = lastId ? `${url}${url.includes("?") ? "&" : "?"}after=${encodeURIComponent(lastId)}` : url;
    opened = false;
    asked = false;
    status(lastId ? "reconnecting" : "connecting");
    const es = new Impl(target);
    source = es;
    es.onopen = () => {
      if (source !== es) return;
      opened = true;
      status("open");
    };
    for (const type of EVENT_TYPES) es.addEventListener(type, onMessage);
  }

  open();
  return {
    close,
    lastEventId: () => lastId,
    interrupt() {
      if (!closed) scheduleReopen();
    },
    reconnect() {
      if (closed) return;
      if (timer) clearTimeout(timer);
      source?.close();
      source = null;
      retries = 0;
      open();
    },
  };
}
