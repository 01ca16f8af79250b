import { useCallback, useEffect, useState } from "react";
import { api } from "../lib/api";
import type { SessionOut } from "../lib/types";
import { apiProblem, STATE_LABELS, type Problem } from "../session/messages";

const calls = (n: number) => (n === 1 ? "1 call" : `${n} calls`);

/** The user's live sessions, each with an End button: shown when starting another was
 * refused because they have as many as they may have at once. */
export function LiveSessions() {
  const [sessions, setSessions] = useState<SessionOut[] | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [ending, setEnding] = useState<ReadonlySet<string>>(new Set());

  const load = useCallback((signal?: AbortSignal) => {
    api
      .liveSessions(signal)
      .then((found) => {
        setSessions(found);
        setProblem(null);
      })
      .catch((error: unknown) => {
        if (error instanceof DOMException && error.name === "AbortError") return;
        setProblem(apiProblem(error, "Your calls could not be listed"));
      });
  }, []);

  useEffect(() => {
    const abort = new AbortController();
    load(abort.signal);
    return () => abort.abort();
  }, [load]);

  const end = async (id: string) => {
    setEnding((s) => new Set(s).add(id));
    try {
      await api.endSession(id);
      setSessions((s) => s?.filter((x) => x.session_id !== id) ?? null);
    } catch (error) {
      setProblem(apiProblem(error, "The call could not be ended"));
    } finally {
      setEnding((s) => {
        const next = new Set(s);
        next.delete(id);
        return next;
      });
      load();
    }
  };

  return (
    <section className="card" aria-label="Your calls" data-testid="live-sessions">
      {sessions === null ? (
        problem ? null : <p className="note">Looking for your calls…</p>
      ) : sessions.length ? (
        <>
          <p data-testid="live-sessions-message">
            You have {calls(sessions.length)} going on; end one to start another.
          </p>
          <ul className="live-sessions">
            {sessions.map((s) => (
              <li key={s.session_id} data-testid={`live-session-${s.session_id}`}>
                <span>
                  {STATE_LABELS[s.status] ?? s.status} · {s.profile} · started {new Date(s.created_at).toLocaleTimeString()}{" "}
                  · conversation <code>{s.conversation_id.slice(0, 8)}</code>
                </span>{" "}
                <button
                  type="button"
                  className="button-danger"
                  onClick={() => void end(s.session_id)}
                  disabled={ending.has(s.session_id)}
                >
                  {ending.has(s.session_id) ? "Ending…" : "End"}
                </button>
              </li>
            ))}
          </ul>
        </>
      ) : (
        <p data-testid="live-sessions-message">None of your calls is going on any more; press Start again.</p>
      )}
      {problem ? (
        <p className="note" role="alert">
          <strong>{problem.title}</strong>
          {problem.detail ? ` — ${problem.detail}` : ""}
        </p>
      ) : null}
    </section>
  );
}
