// What the Talk page tells about a call going on, from its events: the assistant's state,
// how long the call has been connected, how fast it answers. Pure functions of the
// events (and the time), so they are tested without a call.

import type { VPEvent } from "../lib/types";

export type AgentState = "listening" | "thinking" | "speaking" | "muted";

export const AGENT_STATE_LABELS: Record<AgentState, string> = {
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  muted: "Muted: not listening",
};

/** After a turn this long with no answer begun, the assistant is not "thinking" any more. */
export const THINKING_AT_MOST_S = 15;

interface Speaking {
  userSpeaking: boolean;
  botSpeaking: boolean;
  micEnabled: boolean;
}

/**
 * The assistant's state: speaking while its audio plays; thinking from the end of the
 * caller's turn until its answer begins; listening otherwise (muted when the caller's
 * microphone is off, since then nothing reaches it).
 */
export function agentState(events: readonly VPEvent[], now: Speaking & { nowS: number }): AgentState {
  if (now.botSpeaking) return "speaking";
  if (!now.micEnabled) return "muted";
  if (now.userSpeaking) return "listening";
  let userStopped: number | null = null;
  let botStarted: number | null = null;
  for (const event of events) {
    if (event.type === "user.turn_stopped") userStopped = event.ts;
    else if (event.type === "bot.started_speaking") botStarted = event.ts;
  }
  const waiting = userStopped !== null && (botStarted === null || botStarted < userStopped);
  return waiting && now.nowS - (userStopped as number) <= THINKING_AT_MOST_S ? "thinking" : "listening";
}

/** Seconds connected: from the first `connected` to the end (or now). Null before. */
export function connectedSeconds(events: readonly VPEvent[], nowS: number, final: boolean): number | null {
  let from: number | null = null;
  let last = 0;
  for (const event of events) {
    last = Math.max(last, event.ts);
    if (from === null && event.type === "session.state" && event.data.state === "connected") from = event.ts;
  }
  if (from === null) return null;
  return Math.max((final ? last : nowS) - from, 0);
}

export interface ResponseTimes {
  last: number;
  median: number;
  count: number;
}

/**
 * How long the answers took: the model's own measure (`metrics.latency`, `user_bot`) when
 * the worker reports it; else from the end of each turn of the caller's to the start of
 * the answer that followed it (both times from the worker's clock).
 */
export function responseTimes(events: readonly VPEvent[]): ResponseTimes | null {
  const measured: number[] = [];
  const derived: number[] = [];
  let userStopped: number | null = null;
  for (const event of events) {
    if (event.type === "metrics.latency" && event.data.kind === "user_bot" && typeof event.data.seconds === "number") {
      measured.push(event.data.seconds);
    } else if (event.type === "user.turn_stopped") {
      userStopped = event.ts;
    } else if (event.type === "bot.started_speaking" && userStopped !== null) {
      derived.push(Math.max(event.ts - userStopped, 0));
      userStopped = null;
    }
  }
  const times = measured.length ? measured : derived;
  if (!times.length) return null;
  const sorted = [...times].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { last: times[times.length - 1], median, count: times.length };
}

/** A call's length as a clock: 0:07, 12:34, 1:02:03. */
export function clockTime(seconds: number): string {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Milliseconds, or seconds from one up: "640 ms", "1.2 s". */
export function shortDuration(seconds: number): string {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(1)} s`;
}
