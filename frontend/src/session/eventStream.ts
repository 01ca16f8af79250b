// A session's Server-Sent Events, resumed across network blips.
//
// EventSource reconnects by itself after a dropped connection and sends the last
// `id:` it saw as Last-Event-ID, so the API resumes right after it. When the
// browser gives up instead (an HTTP error while reconnecting), we open a new one
// with `?after=<last id>`, which the API treats like Last-Event-ID. Either way
// the reducer also drops events it has already seen (by seq). The stream is
// closed by us on the session's final state: the API closes it then, and an
// EventSource would otherwise reconnect forever.

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
  "error", // also EventSource's own error event: told apart by being a MessageEvent with data
  "message",
] as const;

export type StreamStatus = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export interface EventStreamHandlers {
  onEvent(event: VPEvent, id: string): void;
  onStatus?(status: StreamStatus): void;
}

export interface EventStreamOptions {
  /** Attempts to reopen after the browser gave up, before reporting "failed". */
  maxRetries?: number;
  retryDelayMs?: (attempt: number) => number;
  EventSourceImpl?: typeof EventSource;
}

export interface EventStream {
  close(): void;
  /** The `id:` of the last event received. */
  lastEventId(): string;
  /** Drop the connection as a network blip would (tests): it resumes from the last id. */
  interrupt(): void;
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
  const maxRetries = options.maxRetries ?? 8;
  const delay = options.retryDelayMs ?? ((n: number) => Math.min(500 * 2 ** n, 8000));
  let source: EventSource | null = null;
  let lastId = "";
  let closed = false;
  let retries = 0;
  let timer: ReturnType<typeof setTimeout> | null = null;

  const status = (s: StreamStatus) => handlers.onStatus?.(s);

  const close = () => {
    closed = true;
    if (timer) clearTimeout(timer);
    timer = null;
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

  const onMessage = (raw: Event) => {
    if (closed) return;
    const message = raw as MessageEvent;
    if (raw.type === "error" && !(typeof message.data === "string" && message.data)) {
      // EventSource's own error: it reconnects by itself unless it gave up (CLOSED).
      if (source && source.readyState === Impl.CLOSED) scheduleReopen();
      else status("reconnecting");
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
    const target = lastId
      ? `${url}${url.includes("?") ? "&" : "?"}after=${encodeURIComponent(lastId)}`
      : url;
    status(lastId ? "reconnecting" : "connecting");
    const es = new Impl(target);
    source = es;
    es.onopen = () => {
      if (source === es) status("open");
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
  };
}
