import { useEffect, useState, type FormEvent } from "react";
import { Link, useSearchParams } from "react-router";
import { InlineForm } from "../components/InlineForm";
import { ProblemBox } from "../components/Problem";
import { api } from "../lib/api";
import type { ConversationSummary } from "../lib/types";
import { apiProblem, formatDuration, type Problem } from "../session/messages";

export const when = (iso: string) =>
  new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });

const PROFILE_NAMES: Record<string, string> = { echo: "Echo test", assistant: "Assistant" };

/** Its first words; a conversation nobody spoke in is named by what it was and when. */
export function conversationTitle(c: Pick<ConversationSummary, "title" | "profile" | "created_at">): string {
  const title = c.title?.trim();
  if (title) return title;
  const what = (c.profile && PROFILE_NAMES[c.profile]) || "Conversation";
  return `${what}, ${when(c.created_at)}`;
}

/** Attempts that never connected (expired, failed, abandoned) fold away below the rest. */
export const neverConnected = (c: ConversationSummary) => !c.live && c.connected_sessions === 0;

/** The search's words marked in a matching line (case-insensitive, a word's start). */
function Marked({ text, query }: { text: string; query: string }) {
  const words = query.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? [];
  if (!words.length) return <>{text}</>;
  const pattern = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "giu");
  return (
    <>
      {text.split(pattern).map((part, i) => (i % 2 ? <mark key={i}>{part}</mark> : part))}
    </>
  );
}

function Row({ c, query }: { c: ConversationSummary; query: string }) {
  return (
    <li className="card conversation-row" data-conversation-id={c.conversation_id}>
      <Link to={`/history/${c.conversation_id}`} className="conversation-link">
        {conversationTitle(c)}
        {c.live ? <span className="tag tag-running" data-testid="live-now">live now</span> : null}
      </Link>
      {c.match ? (
        <q className="conversation-match" data-testid="match">
          <Marked text={c.match} query={query} />
        </q>
      ) : null}
      <span className="meta">
        <span>{when(c.updated_at)}</span>
        <span>{formatDuration(c.duration_s)} talked</span>
        <span>
          {c.session_count} {c.session_count === 1 ? "session" : "sessions"}
        </span>
      </span>
    </li>
  );
}

export function History() {
  const [params, setParams] = useSearchParams();
  const query = params.get("q") ?? "";
  const [draft, setDraft] = useState(query);
  const [rows, setRows] = useState<ConversationSummary[] | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);

  useEffect(() => {
    const abort = new AbortController();
    setRows(null);
    setProblem(null);
    api
      .conversations(abort.signal, query || undefined)
      .then(setRows)
      .catch((error) => {
        if (!abort.signal.aborted) setProblem(apiProblem(error, "Could not load your conversations"));
      });
    return () => abort.abort();
  }, [query]);

  const search = (event: FormEvent) => {
    event.preventDefault();
    const q = draft.trim();
    setParams(q ? { q } : {});
  };
  const talked = rows?.filter((c) => !neverConnected(c)) ?? [];
  const attempts = rows?.filter(neverConnected) ?? [];

  return (
    <main id="main" className="page history">
      <h1>History</h1>
      <InlineForm
        id="history-q"
        label="Search what was said"
        type="search"
        value={draft}
        onChange={setDraft}
        onSubmit={search}
        placeholder="Words from a conversation"
        className="history-search"
        role="search"
        inputTestId="history-search"
      >
          <button type="submit" className="button-quiet">
            Search
          </button>
          {query ? (
            <button
              type="button"
              className="button-link"
              onClick={() => {
                setDraft("");
                setParams({});
              }}
            >
              Show all
            </button>
          ) : null}
      </InlineForm>
      {problem ? <ProblemBox problem={problem} /> : null}
      {rows === null && !problem ? <p className="muted">Loading…</p> : null}
      {rows && !rows.length ? (
        query ? (
          <p className="muted" data-testid="no-matches">
            Nothing you said or heard matches “{query}”.
          </p>
        ) : (
          <p className="muted">
            No conversations yet. <Link to="/">Start one</Link>.
          </p>
        )
      ) : null}
      {rows && query && rows.length ? (
        <p className="muted" role="status">
          {rows.length} {rows.length === 1 ? "conversation mentions" : "conversations mention"} “{query}”.
        </p>
      ) : null}
      {talked.length ? (
        <ul className="conversations" data-testid="conversations">
          {talked.map((c) => (
            <Row key={c.conversation_id} c={c} query={query} />
          ))}
        </ul>
      ) : null}
      {attempts.length ? (
        <details className="attempts" data-testid="attempts">
          <summary>
            {attempts.length} {attempts.length === 1 ? "attempt" : "attempts"} that never connected
          </summary>
          <ul className="conversations">
            {attempts.map((c) => (
              <Row key={c.conversation_id} c={c} query={query} />
            ))}
          </ul>
        </details>
      ) : null}
    </main>
  );
}
