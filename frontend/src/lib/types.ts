// Shapes of the API's JSON (see api/schemas.py and api/routes/*.py).

export type Role = "admin" | "user" | string;

export interface Me {
  id: string;
  name: string;
  role: Role;
  csrf_token: string | null;
}

export interface ServerConfig {
  profiles: string[];
  /** Profiles this deployment could offer but does not, with what the server lacks for them. */
  unavailable_profiles?: { name: string; needs: string }[];
  default_profile: string;
  transports: string[];
  pools: string[];
  default_pool: string;
  ice_servers: string[];
  grafana_url: string | null;
  /** What the assistant calls itself: its lines' label. */
  assistant_name?: string;
  /** Per profile: what the app calls it, and a line on what it does. */
  profile_info?: Record<string, { label: string; description: string }>;
}

export type SessionStatus =
  | "queued"
  | "starting"
  | "ready"
  | "connected"
  /** The client's media went away without an end: the call waits for it to connect again. */
  | "reconnecting"
  /** Its worker is gone (or draining): the call moves to another one, then is `ready` again. */
  | "recovering"
  | "ended"
  | "failed"
  | "expired"
  | "cancelled";

export const FINAL_STATES: ReadonlySet<string> = new Set(["ended", "failed", "expired", "cancelled"]);

export interface SessionOut {
  session_id: string;
  conversation_id: string;
  status: SessionStatus;
  reason: string | null;
  /** `seq` of the state event behind `status` (null if unknown): merge with events by it. */
  state_seq?: number | null;
  pool: string;
  transport: string;
  profile: string;
  worker_id: string | null;
  queue_position: number | null;
  created_at: string;
  events_url: string;
  offer_url: string;
  /** POST here for connection parameters (websocket: a single-use token); null for webrtc. */
  connect_url?: string | null;
  /** Daily only, for the owner while the room can be joined (a read never mints a token). */
  connect?: { room_url?: string; token?: string } | null;
}

/** One event, as sent over SSE (`data:`) and stored (`/api/conversations/{id}`). */
export interface VPEvent {
  session_id: string;
  conversation_id?: string;
  seq: number;
  ts: number;
  type: string;
  data: Record<string, unknown>;
}

export interface ConversationSummary {
  conversation_id: string;
  /** Its first words (null until someone spoke). */
  title: string | null;
  created_at: string;
  updated_at: string;
  session_count: number;
  /** Sessions a client connected to (0: attempts that never got going). */
  connected_sessions?: number;
  /** Talk time: connected, summed over its sessions. */
  duration_s: number;
  /** The profile of its latest session. */
  profile?: string | null;
  /** One of its sessions is live now. */
  live?: boolean;
  /** With a search: its latest line that matched. */
  match?: string | null;
}

export interface SessionBrief {
  session_id: string;
  state: string;
  reason: string | null;
  profile: string;
  transport: string;
  created_at: string;
  ended_at: string | null;
}

export interface ConversationDetail extends ConversationSummary {
  sessions: SessionBrief[];
  events: VPEvent[];
}

export interface WorkerOut {
  id: string;
  pool: string;
  host: string;
  version: string;
  capacity: number;
  active: number;
  draining: boolean;
  load: number;
  heartbeat_age_s: number;
  started_at: number;
  /** Its heartbeat lives but its queue poll loop has not run for a few seconds. */
  stalled: boolean;
  poll_age_s: number | null;
}

export interface PoolOut {
  pool: string;
  workers: number;
  capacity: number;
  active: number;
  queued: number;
  estimated_wait_s: number | null;
}
