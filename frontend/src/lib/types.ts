// Shapes of the API's JSON: generated from its OpenAPI schema (api.gen.ts, `make
// frontend-types`; a test fails when it is out of date), not copied by hand. Only the live
// events (SSE, not in the schema) are described here.

import type { components } from "./api.gen";

type Schemas = components["schemas"];

export type Role = "admin" | "user" | string;
export type Me = Schemas["Me"];
export type ServerConfig = Schemas["ServerConfig"];
/** A session's state, from shared/lifecycle.py's SessionState by way of the schema. */
export type SessionStatus = Schemas["SessionState"];
export type SessionOut = Schemas["SessionOut"];
export type ConversationSummary = Schemas["ConversationSummary"];
export type SessionBrief = Schemas["SessionBrief"];
export type ConversationDetail = Omit<Schemas["ConversationDetail"], "events"> & { events: VPEvent[] };
export type WorkerOut = Schemas["WorkerOut"];
export type PoolOut = Schemas["PoolOut"];
export type IceServer = Schemas["IceServer"];
export type PeerConnect = Schemas["PeerConnect"];

export const FINAL_STATES: ReadonlySet<string> = new Set(["ended", "failed", "expired", "cancelled"]);

/** One event, as sent over SSE (`data:`) and stored (`/api/conversations/{id}`). */
export interface VPEvent {
  session_id: string;
  conversation_id?: string;
  seq: number;
  ts: number;
  type: string;
  data: Record<string, unknown>;
}
