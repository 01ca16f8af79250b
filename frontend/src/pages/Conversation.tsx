import { useEffect, useMemo, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { ProblemBox } from "../components/Problem";
import { Transcript } from "../components/Transcript";
import { api, ApiError } from "../lib/api";
import type { ConversationDetail } from "../lib/types";
import { conversationViews } from "../session/events";
import { apiProblem, formatDuration, reasonText, STATE_LABELS, type Problem } from "../session/messages";
import { useVoiceSession } from "../session/VoiceSession";
import { conversationTitle, when } from "./History";

export function Conversation() {
  const { id = "" } = useParams();
  const navigate = useNavigate();
  const voice = useVoiceSession();
  const [detail, setDetail] = useState<ConversationDetail | null>(null);
  const [missing, setMissing] = useState(false);
  const [problem, setProblem] = useState<Problem | null>(null);

  useEffect(() => {
    const abort = new AbortController();
    setDetail(null);
    setMissing(false);
    setProblem(null);
    api
      .conversation(id, abort.signal)
      .then(setDetail)
      .catch((error) => {
        if (abort.signal.aborted) return;
        if (error instanceof ApiError && (error.status === 404 || error.status === 422)) setMissing(true);
        else setProblem(apiProblem(error, "Could not load the conversation"));
      });
    return () => abort.abort();
  }, [id]);

  const sessions = useMemo(() => {
    if (!detail) return [];
    const views = conversationViews(
      detail.sessions.map((s) => s.session_id),
      detail.events,
    );
    return detail.sessions.map((s, i) => ({ brief: s, number: i + 1, view: views[i].view }));
  }, [detail]);

  if (missing) {
    return (
      <main id="main" className="page conversation">
        <h1 data-testid="not-found">Conversation not found</h1>
        <p>It doesn't exist, or it belongs to someone else.</p>
        <p>
          <Link to="/history">Back to History</Link>
        </p>
      </main>
    );
  }

  const live = voice.phase === "live" || voice.phase === "stopping" || voice.phase === "mic" || voice.phase === "creating";
  return (
    <main id="main" className="page conversation">
      <p className="crumbs">
        <Link to="/history">← History</Link>
      </p>
      {problem ? <ProblemBox problem={problem} /> : null}
      {!detail && !problem ? <p className="muted">Loading…</p> : null}
      {detail ? (
        <>
          <h1 data-testid="conversation-title">{conversationTitle(detail)}</h1>
          <p className="meta">
            <span>Started {when(detail.created_at)}</span>
            <span>{formatDuration(detail.duration_s)} live</span>
            <span>
              {detail.session_count} {detail.session_count === 1 ? "session" : "sessions"}
            </span>
          </p>
          <div className="buttons">
            <button
              type="button"
              className="button-primary"
              disabled={live}
              title={live ? "End the current call first" : undefined}
              onClick={() => navigate(`/?conversation=${encodeURIComponent(detail.conversation_id)}`)}
              data-testid="continue"
            >
              Continue this conversation
            </button>
            <a href={api.exportUrl(detail.conversation_id, "md")} download data-testid="export-md">
              Export Markdown
            </a>
            <a href={api.exportUrl(detail.conversation_id, "json")} download data-testid="export-json">
              Export JSON
            </a>
          </div>
          {sessions.map(({ brief, number, view }) => (
            <section key={brief.session_id} className="card session" data-testid="conversation-session">
              <h2>
                Session {number} <span className="muted">· {brief.profile}</span>
              </h2>
              <p className="meta">
                <span>{when(brief.created_at)}</span>
                <span>
                  {STATE_LABELS[brief.state] ?? brief.state}
                  {brief.reason
                    ? ` — ${reasonText(
                        brief.reason,
                        view.items.flatMap((item) =>
                          item.kind === "error" || item.kind === "status" ? [item.message ?? null] : [],
                        ),
                      )}`
                    : ""}
                </span>
              </p>
              <Transcript
                items={view.items}
                hasTranscript={view.hasTranscript}
                emptyText="Nothing was said in this session."
              />
            </section>
          ))}
        </>
      ) : null}
    </main>
  );
}
