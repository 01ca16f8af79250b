import type { SessionOut } from "../lib/types";

/** A session as the API describes it, for tests; `fields` override the defaults. */
export function sessionOut(
  status: SessionOut["status"],
  stateSeq: number | null,
  id = "s1",
  fields: Partial<SessionOut> = {},
): SessionOut {
  return {
    session_id: id,
    conversation_id: "c1",
    status,
    reason: null,
    state_seq: stateSeq,
    pool: "server",
    transport: "webrtc",
    profile: "echo",
    worker_id: null,
    queue_position: null,
    created_at: "2026-01-01T00:00:00Z",
    events_url: `/api/sessions/${id}/events`,
    offer_url: `/api/sessions/${id}/offer`,
    ...fields,
  };
}
