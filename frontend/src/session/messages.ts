// Everything the app tells a person about states, reasons and errors, in plain words.

import { ApiError } from "../lib/api";
import type { StreamRefusal } from "./eventStream";

export interface Problem {
  title: string;
  detail?: string;
  /** The API's error code behind it, when the page has more to offer for it. */
  code?: string;
}

const seconds = (s: number) => (s < 60 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);

/** An error from the API (or the network) as something to show. */
export function apiProblem(error: unknown, doing = "That did not work"): Problem {
  if (!(error instanceof ApiError)) {
    return { title: doing, detail: error instanceof Error ? error.message : String(error) };
  }
  const retry = error.retryAfter ? ` Try again in about ${seconds(error.retryAfter)}.` : "";
  switch (error.code) {
    case "network":
      return { title: "Can't reach the server", detail: "Check your connection and try again." };
    case "no_workers":
      return {
        title: "No voice workers are running",
        detail: `Nothing can take a call right now: no worker is serving this pool (or all are being taken out of service). Ask an operator to start one.${retry}`,
        code: error.code,
      };
    case "queue_full":
      return {
        title: "The waiting line is full",
        detail: `Every voice worker is busy and as many people are waiting as the line holds.${retry || " Try again in a little while."}`,
        code: error.code,
      };
    case "no_capacity":
      return {
        title: "No capacity right now",
        detail: `Every voice worker is busy, and at the pace calls are ending a new one would wait longer than a call may wait.${retry || " Try again in a little while."}`,
        code: error.code,
      };
    case "too_many_sessions":
      return {
        title: "Too many sessions",
        detail: `You already have as many live sessions as you may have at once. End one (maybe in another tab) first.${retry}`,
        code: error.code,
      };
    case "rate_limited":
      return { title: "Slow down a little", detail: `Too many requests in a short time.${retry || " Try again in a minute."}` };
    case "too_many_streams":
      return { title: "Too many open pages", detail: "Close some voicepool tabs, then try again." };
    case "transport_unavailable":
      return { title: "That transport isn't available here", detail: error.message };
    case "profile_unavailable":
      return { title: "That profile isn't available here", detail: error.message };
    case "unknown_pool":
      return { title: "Unknown worker pool", detail: error.message };
    case "queue_unavailable":
      return { title: "The session queue is down", detail: "The server can't reach its queue. Try again later." };
    case "invalid_token":
      return { title: "That token didn't work", detail: "It is unknown, revoked or expired. Ask an administrator for a new one." };
    case "unauthorized":
      return { title: "You're signed out", detail: "Sign in again to go on." };
    case "csrf_failed":
      return { title: "Your sign-in needs refreshing", detail: "Reload the page and try again." };
    case "admin_only":
      return { title: "Operators only", detail: "This needs an administrator's account." };
    case "not_found":
      return { title: "Not found", detail: "It doesn't exist, or it isn't yours." };
    case "worker_not_found":
      return { title: "That worker is gone", detail: "It stopped or was drained already." };
    case "not_ready":
      return { title: "No worker had the session ready in time", detail: `Try again.${retry}` };
    case "session_ended":
      return { title: "The session has already ended" };
    default:
      return { title: doing, detail: error.message };
  }
}

/** A message from the API as a sentence: "at most 20 …" → "At most 20 …." */
const sentence = (text: string) => {
  const t = text.trim();
  if (!t) return "";
  return `${t[0].toUpperCase()}${t.slice(1)}${/[.!?…]$/.test(t) ? "" : "."}`;
};

/** The API refused the session's live events (see eventStream.ts): why, and what happens next. */
export function streamRefusalProblem(refusal: StreamRefusal): Problem {
  if (refusal.status === 401) {
    return {
      title: "Your sign-in has expired",
      detail: "Live updates for this session stopped. Sign out, then sign in again to go on.",
    };
  }
  if (refusal.status === 404 || refusal.status === 410) {
    return {
      title: "This session is gone",
      detail: "The server no longer knows it, so there are no live updates to show. Press Stop, then start a new session.",
    };
  }
  const next =
    refusal.retryInMs != null
      ? `Trying again in about ${seconds(Math.max(1, refusal.retryInMs / 1000))}.`
      : "Stopped trying for now.";
  const said = sentence(refusal.message);
  const detail = (explanation: string) => [said || explanation, next].join(" ");
  switch (refusal.code) {
    case "too_many_streams":
      return {
        title: "Live updates stopped: too many open pages",
        detail: detail("You have too many voicepool pages open. Close some tabs."),
      };
    case "rate_limited":
      return { title: "Live updates stopped: too many requests", detail: detail("Too many requests in a short time.") };
    case "redis_unavailable":
      return { title: "Live updates stopped: the server is having trouble", detail: detail("The server can't reach its event store.") };
  }
  if (refusal.status === 403) return { title: "Live updates aren't allowed", detail: said || undefined };
  if (refusal.status >= 500) {
    return { title: "Live updates stopped: the server is having trouble", detail: detail("The server couldn't send them.") };
  }
  return { title: "Live updates stopped", detail: detail(`The server refused them (HTTP ${refusal.status}).`) };
}

/** The call's client could not be made: most often its code (the Pipecat SDK, loaded with the
 * first call) could not be loaded, e.g. the app was updated since this page was opened. */
export function loadProblem(error: unknown): Problem {
  const reason = error instanceof Error && error.message ? ` (${error.message})` : "";
  return {
    title: "The call could not be set up",
    detail: `The page could not load what a call needs${reason}. Reload the page, then press Start again.`,
  };
}

/** The microphone could not be opened: getUserMedia's error (or the SDK's DeviceError). */
export function micProblem(error: unknown): Problem {
  const name =
    (error as { name?: string } | null)?.name ??
    "";
  const type = (error as { type?: string } | null)?.type ?? "";
  if (name === "NotAllowedError" || name === "SecurityError" || type === "permissions") {
    return {
      title: "No microphone permission",
      detail:
        "The browser blocked the microphone. Allow it for this site (the icon in the address bar), then press Start again.",
    };
  }
  if (name === "NotFoundError" || type === "not-found") {
    return { title: "No microphone found", detail: "Plug in or enable a microphone, then press Start again." };
  }
  if (name === "NotReadableError" || type === "in-use") {
    return {
      title: "The microphone is busy",
      detail: "Another program is using it. Close that program, then press Start again.",
    };
  }
  if (type === "undefined-mediadevices" || name === "TypeError") {
    return {
      title: "This page can't use a microphone",
      detail: "Browsers allow microphones only on https:// pages (or http://localhost).",
    };
  }
  return {
    title: "The microphone could not be opened",
    detail: error instanceof Error ? error.message : undefined,
  };
}

export const STATE_LABELS: Record<string, string> = {
  queued: "Queued",
  starting: "Starting",
  ready: "Ready",
  connected: "Connected",
  reconnecting: "Reconnecting",
  recovering: "Moving",
  ended: "Ended",
  failed: "Failed",
  expired: "Expired",
  cancelled: "Cancelled",
};

/** The model refused the server's key: only an operator can do something about it. */
export const MODEL_AUTH_TEXT = "The voice model refused this server's API key; an operator must fix OPENAI_API_KEY.";
const MODEL_RATE_TEXT = "The voice model is turning this server away for now (too many requests). Try again in a minute.";
const MODEL_UNREACHABLE_TEXT = "The AI model could not be reached. Try again later, or use another profile.";
const SERVER_TROUBLE_TEXT = "Something went wrong on the server; an operator can find the details in its logs.";

const AUTH_RE = /\bHTTP[ /]?(?:1\.1 )?40[13]\b|\b40[13] (?:Unauthorized|Forbidden)\b|invalid_api_key|incorrect api key|invalid api key/i;
const RATE_RE = /\bHTTP[ /]?(?:1\.1 )?429\b|\b429 Too Many Requests\b|rate_limit_exceeded/i;
const UNREACHABLE_RE =
  /\[Errno -?\d+\]|Connect call failed|Connection refused|Name or service not known|getaddrinfo|name resolution|timed out|\bHTTP[ /]?(?:1\.1 )?5\d\d\b/i;

/** Text written by a program for its programmers (a Python exception, a socket error), not for people. */
export function isRawError(message: string | null | undefined): boolean {
  if (!message) return false;
  return (
    AUTH_RE.test(message) ||
    RATE_RE.test(message) ||
    UNREACHABLE_RE.test(message) ||
    /Traceback|server rejected WebSocket|\bHTTP \d{3}\b|WebSocket|websockets?\.|\b[A-Z][A-Za-z]*(?:Error|Exception)\b|[A-Za-z_]+\.[A-Za-z_]+\(|<[a-z_.]+ object/.test(
      message,
    )
  );
}

/** What a failure looks like to the model's caller: the key refused, too many requests, unreachable. */
export function modelFailureKind(
  reason: string | null | undefined,
  messages: readonly (string | null | undefined)[] = [],
): "auth" | "rate" | "unreachable" | null {
  if (reason === "model_auth_failed") return "auth";
  if (reason === "model_rate_limited") return "rate";
  const text = messages.filter(Boolean).join("\n");
  if (AUTH_RE.test(text)) return "auth";
  if (RATE_RE.test(text)) return "rate";
  if (reason === "model_unavailable" || UNREACHABLE_RE.test(text)) return "unreachable";
  return null;
}

/** An error event's message as a sentence for people: raw program text is replaced by what it means. */
export function plainError(message: string | null | undefined): string {
  const text = (message ?? "").trim();
  if (!text) return "Something went wrong.";
  if (!isRawError(text)) return text;
  switch (modelFailureKind(null, [text])) {
    case "auth":
      return MODEL_AUTH_TEXT;
    case "rate":
      return MODEL_RATE_TEXT;
    case "unreachable":
      return MODEL_UNREACHABLE_TEXT;
  }
  return SERVER_TROUBLE_TEXT;
}

/**
 * Why a session changed state (mostly: why it ended), for a person. `messages`: what the
 * server said along with it (the state's message, error events), which can tell a model
 * failure's cause (a refused key is not "try again later").
 */
export function reasonText(reason: string | null | undefined, messages: readonly (string | null | undefined)[] = []): string {
  if (reason?.startsWith("model_")) {
    const kind = modelFailureKind(reason, messages);
    if (kind === "auth") return MODEL_AUTH_TEXT;
    if (kind === "rate") return MODEL_RATE_TEXT;
  }
  switch (reason) {
    case "client_ended":
      return "You ended the session.";
    case "client_left":
      return "The connection to your browser was lost.";
    case "client_lost":
      return "The connection to your browser dropped; the call waits for it to come back.";
    case "client_reconnected":
      return "Your browser is connected again.";
    case "recovered":
      return "The call moved to another worker and goes on.";
    case "pool_fallback":
      return "Still waiting, now for a worker of another pool that has room.";
    case "idle_timeout":
      return "Ended after a long silence.";
    case "max_duration":
      return "Ended at the longest time a session may last.";
    case "connect_timeout":
      return "Your browser never connected its audio in time.";
    case "worker_lost":
      return "The worker running this session stopped unexpectedly.";
    case "worker_draining":
      return "The worker was taken out of service by an operator.";
    case "worker_shutdown":
      return "The worker was shut down.";
    case "no_capacity":
      return "No worker became free in time. Try again in a little while.";
    case "pipeline_error":
      return "Something went wrong inside the voice pipeline.";
    case "model_unavailable":
      return MODEL_UNREACHABLE_TEXT;
    case "model_auth_failed":
      return MODEL_AUTH_TEXT;
    case "model_rate_limited":
      return MODEL_RATE_TEXT;
    case "model_error":
      return "The AI model reported an error, so the session stopped.";
    case "model_disconnected":
      return "The AI model closed the connection.";
    case "model_protocol_error":
      return "The AI model sent something the server could not read.";
    case null:
    case undefined:
    case "":
      return "";
    default:
      return `Reason: ${reason.replace(/_/g, " ")}.`;
  }
}

/**
 * The session's final state as a problem to show, or null when it ended normally. `messages`:
 * what the server said about it (the final state's message, error events).
 */
export function endProblem(
  state: string | null,
  reason: string | null,
  messages: readonly (string | null | undefined)[] = [],
): Problem | null {
  if (state === "failed") {
    const model = reason?.startsWith("model_");
    const kind = model ? modelFailureKind(reason, messages) : null;
    return {
      title:
        kind === "auth"
          ? "The voice model refused the API key"
          : kind === "rate"
            ? "The voice model is busy"
            : model
              ? "Model unavailable"
              : "The session failed",
      detail: reasonText(reason, messages),
    };
  }
  if (state === "expired") return { title: "No capacity right now", detail: reasonText(reason) };
  return null;
}

export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s <= 0) return "0 s";
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s % 60);
  if (m < 60) return rest ? `${m} min ${rest} s` : `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function formatWait(s: number | null | undefined): string {
  if (s == null || !Number.isFinite(s)) return "";
  if (s < 1) return "under a second";
  return `about ${formatDuration(s)}`;
}
