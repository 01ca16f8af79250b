// When the web app connects the call's media, hangs up, and connects again.
//
// A step function over the session's state as the page shows it, so the rules can
// be tested without a browser; call.ts runs it on every state change
// and does what it says.
//
// - Connect once a worker has the call: `ready` (SmallWebRTC already at
//   `starting`: the API holds its offer until `ready`), or `reconnecting`.
// - `reconnecting` (the worker lost our media) and `recovering` (the call moves
//   to another worker): hang up the client we have (that also stops the Pipecat
//   transport's own retries, which would offer to a worker that is gone or race
//   our new offer), then connect again as above: at once while `reconnecting`,
//   once the next worker has the call (`starting`/`ready`) after `recovering`.
// - After a reload the page re-attaches to its call, which may still count as
//   `connected` (the worker has not noticed the old page's media go): it offers
//   anyway. A `reconnecting` while our own offer is under way (the worker
//   announcing it lost the old media) is not a loss of ours: the offer goes on,
//   and the step is taken again once the transport has connected or the offer
//   failed (call.ts runs it then): if the call still waits for its
//   client, this page hangs up and connects again rather than wait for ever.

import type { SessionStatus } from "../lib/types";
import { LOST_STATES } from "./events";

export type MediaKind = "webrtc" | "daily";

export interface MediaPlan {
  /** A connect() was started for the call as it is now (cleared when the media is lost). */
  started: boolean;
  /** The lost state (`status@stateSeq`) already acted on; null once connected again. */
  lostAt: string | null;
  /** This page attached to a call it did not start (after a reload) and has not connected yet. */
  reattached: boolean;
}

export interface MediaInput {
  status: SessionStatus | null;
  stateSeq: number | null;
  final: boolean;
  kind: MediaKind;
  /** A connect() is under way and its transport has not connected yet. */
  connecting: boolean;
}

export interface MediaStep {
  plan: MediaPlan;
  /** Disconnect the Pipecat client (before connecting again, if `connect`). */
  hangUp: boolean;
  /** Start connecting (a new SDP offer, or joining the room again). */
  connect: boolean;
}

export const newPlan = (reattached = false): MediaPlan => ({
  started: false,
  lostAt: null,
  reattached,
});

function mayConnect(status: SessionStatus, kind: MediaKind, reattached: boolean): boolean {
  return (
    status === "ready" ||
    status === "reconnecting" ||
    (kind === "webrtc" && status === "starting") ||
    (reattached && status === "connected")
  );
}

export function nextMediaStep(plan: MediaPlan, input: MediaInput): MediaStep {
  const { status } = input;
  if (input.final || status === null) return { plan, hangUp: false, connect: false };
  let next = plan;
  let hangUp = false;
  if (status === "connected") {
    if (next.lostAt !== null) next = { ...next, lostAt: null };
  } else if (LOST_STATES.has(status)) {
    const at = `${status}@${input.stateSeq ?? "?"}`;
    // Our own offer under way is what a reconnecting worker waits for: let it finish.
    const ours = status === "reconnecting" && next.started && input.connecting;
    if (next.lostAt !== at && !ours) {
      hangUp = next.started;
      next = { ...next, lostAt: at, started: false };
    }
  }
  if (next.started || !mayConnect(status, input.kind, next.reattached)) {
    return { plan: next, hangUp, connect: false };
  }
  return { plan: { ...next, started: true, reattached: false }, hangUp, connect: true };
}
