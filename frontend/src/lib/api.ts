// The API client: same-origin fetch with the session cookie, the CSRF header on
// requests that change something, and the API's one error shape turned into ApiError.

import type {
  ConversationDetail,
  ConversationSummary,
  Me,
  PeerConnect,
  PoolOut,
  ServerConfig,
  SessionOut,
  WorkerOut,
} from "./types";

export class ApiError extends Error {
  constructor(
    /** HTTP status; 0 when the server could not be reached. */
    readonly status: number,
    /** The API's stable error code (`no_capacity`, `too_many_sessions`, …) or `network`. */
    readonly code: string,
    message: string,
    /** Seconds from a Retry-After header, if any. */
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

let csrfToken: string | null = null;
let onUnauthorized: (() => void) | null = null;

/** The CSRF token of the cookie session; kept in memory only (GET /api/me restores it). */
export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}

export function getCsrfToken(): string | null {
  return csrfToken;
}

/** Called when a request answers 401 (the sign-in expired or was ended elsewhere). */
export function setUnauthorizedHandler(handler: (() => void) | null): void {
  onUnauthorized = handler;
}

/** Headers that a state-changing request needs (also used for the SDK's offer/ICE requests). */
export function csrfHeaders(): Record<string, string> {
  return csrfToken ? { "X-CSRF-Token": csrfToken } : {};
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export async function errorFromResponse(response: Response): Promise<ApiError> {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    const detail = body?.detail;
    if (detail && typeof detail === "object" && !Array.isArray(detail)) {
      code = String(detail.code ?? code);
      message = String(detail.message ?? message);
    } else if (typeof detail === "string") {
      message = detail;
    }
  } catch {
    // not JSON: keep the status text
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, code, message, Number.isFinite(retry) && retry > 0 ? retry : null);
}

interface RequestOptions {
  method?: string;
  body?: unknown;
  signal?: AbortSignal;
  /** Don't call the 401 handler (sign-in and the initial /api/me). */
  quiet401?: boolean;
}

export async function request<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const method = options.method ?? "GET";
  const headers: Record<string, string> = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (UNSAFE.has(method)) Object.assign(headers, csrfHeaders());
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "same-origin",
      signal: options.signal,
    });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "The server could not be reached.");
  }
  if (!response.ok) {
    const error = await errorFromResponse(response);
    if (response.status === 401 && !options.quiet401) onUnauthorized?.();
    throw error;
  }
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

export interface StartSession {
  transport: string;
  profile: string;
  conversation_id?: string;
  pool?: string;
}

export const api = {
  login: (token: string) =>
    request<Me>("/api/auth/login", { method: "POST", body: { token }, quiet401: true }),
  logout: () => request<void>("/api/auth/logout", { method: "POST" }),
  me: () => request<Me>("/api/me", { quiet401: true }),
  config: () => request<ServerConfig>("/api/config"),
  createSession: (body: StartSession) =>
    request<SessionOut>("/api/sessions", { method: "POST", body }),
  session: (id: string) => request<SessionOut>(`/api/sessions/${encodeURIComponent(id)}`),
  /** A WebRTC session's offer URL and ICE servers (a TURN credential minted per call). */
  peerConnect: (id: string) =>
    request<PeerConnect>(`/api/sessions/${encodeURIComponent(id)}/connect`, { method: "POST" }),
  /** The caller's own live sessions, newest first (to find a call again after a reload). */
  liveSessions: (signal?: AbortSignal) => request<SessionOut[]>("/api/sessions?live=true", { signal }),
  endSession: (id: string) =>
    request<SessionOut>(`/api/sessions/${encodeURIComponent(id)}`, { method: "DELETE" }),
  /** The caller's conversations, newest first; with `q`, those whose transcript has its words. */
  conversations: (signal?: AbortSignal, q?: string) =>
    request<ConversationSummary[]>(`/api/conversations?limit=100${q ? `&q=${encodeURIComponent(q)}` : ""}`, { signal }),
  conversation: (id: string, signal?: AbortSignal) =>
    request<ConversationDetail>(`/api/conversations/${encodeURIComponent(id)}`, { signal }),
  /** The Markdown's times in the reader's own time zone, as the page shows them. */
  exportUrl: (id: string, format: "md" | "json") =>
    `/api/conversations/${encodeURIComponent(id)}/export?format=${format}&tz=${encodeURIComponent(
      Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC",
    )}`,
  workers: (signal?: AbortSignal) => request<WorkerOut[]>("/api/workers", { signal }),
  pools: (signal?: AbortSignal) => request<PoolOut[]>("/api/pools", { signal }),
  drain: (id: string) =>
    request<WorkerOut>(`/api/workers/${encodeURIComponent(id)}/drain`, { method: "POST" }),
};
