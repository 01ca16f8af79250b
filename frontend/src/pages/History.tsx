import { useEffect, useState } from "react";
import { Link } from "react-router";
import { ProblemBox } from "../components/Problem";
import { api } from "../lib/api";
import type { ConversationSummary } from "../lib/types";
import { apiProblem, formatDuration, type Problem } from "../session/messages";

export const when = (iso: string) =>
  new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });

export function conversationTitle(c: Pick<ConversationSummary, "title" | "preview" | "created_at">): string {
  return c.title?.trim() || c.preview?.trim() || `Conversation of ${when(c.created_at)}`;
}

export function History() {
  const [rows, setRows] = useState<ConversationSummary[] | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);

  useEffect(() => {
    const abort = new AbortController();
    api
      .conversations(abort.signal)
      .then(setRows)
      .catch((error) => {
        if (!abort.signal.aborted) setProblem(apiProblem(error, "Could not load your conversations"));
      });
    return () => abort.abort();
  }, []);

  return (
    <main id="main" className="page history">
      <h1>History</h1>
      {problem ? <ProblemBox problem={problem} /> : null}
      {rows === null && !problem ? <p className="muted">Loading…</p> : null}
      {rows && !rows.length ? (
        <p className="muted">
          No conversations yet. <Link to="/">Start one</Link>.
        </p>
      ) : null}
      {rows && rows.length ? (
        <ul className="conversations" data-testid="conversations">
          {rows.map((c) => (
            <li key={c.conversation_id} className="card conversation-row" data-conversation-id={c.conversation_id}>
              <Link to={`/history/${c.conversation_id}`} className="conversation-link">
                {conversationTitle(c)}
              </Link>
              <span className="meta">
                <span>{when(c.updated_at)}</span>
                <span>{formatDuration(c.duration_s)} live</span>
                <span>
                  {c.session_count} {c.session_count === 1 ? "session" : "sessions"}
                </span>
              </span>
            </li>
          ))}
        </ul>
      ) : null}
    </main>
  );
}
