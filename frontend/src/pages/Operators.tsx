import { useCallback, useEffect, useState } from "react";
import { ProblemBox } from "../components/Problem";
import { api } from "../lib/api";
import { useAuth } from "../lib/auth";
import { useConfig } from "../lib/config";
import type { PoolOut, WorkerOut } from "../lib/types";
import { apiProblem, formatDuration, formatWait, type Problem } from "../session/messages";

const REFRESH_MS = 3000;

export function Operators() {
  const { user } = useAuth();
  const { config } = useConfig();
  const [workers, setWorkers] = useState<WorkerOut[] | null>(null);
  const [pools, setPools] = useState<PoolOut[] | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [confirming, setConfirming] = useState<string | null>(null);
  const [draining, setDraining] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  /** When the tables last came from the server (ms); older than a refresh: out of date. */
  const [loadedAt, setLoadedAt] = useState<number | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const isAdmin = user?.role === "admin";

  const load = useCallback(async (signal?: AbortSignal) => {
    setNow(Date.now());
    try {
      const [w, p] = await Promise.all([api.workers(signal), api.pools(signal)]);
      setWorkers(w);
      setPools(p);
      setLoadedAt(Date.now());
      setProblem(null);
    } catch (error) {
      if (!signal?.aborted) setProblem(apiProblem(error, "Could not load the fleet"));
    }
  }, []);
  // Tables that could not be refreshed stay, marked as what they are: the last known state.
  const stale = problem !== null && loadedAt !== null;
  const staleness = stale ? (
    <p className="note stale-note" role="status" data-testid="stale">
      Showing the fleet as it was {formatDuration(Math.max(now - loadedAt, 0) / 1000)} ago, at{" "}
      {new Date(loadedAt).toLocaleTimeString()}: the server can't be reached, so these numbers may be out of date.
    </p>
  ) : null;

  useEffect(() => {
    if (!isAdmin) return;
    const abort = new AbortController();
    void load(abort.signal);
    const timer = window.setInterval(() => void load(abort.signal), REFRESH_MS);
    return () => {
      abort.abort();
      window.clearInterval(timer);
    };
  }, [isAdmin, load]);

  if (!isAdmin) {
    return (
      <main id="main" className="page operators">
        <h1>Operators</h1>
        <ProblemBox problem={{ title: "Operators only", detail: "This page needs an administrator's account." }} />
      </main>
    );
  }

  async function drain(id: string) {
    setConfirming(null);
    setDraining(id);
    try {
      await api.drain(id);
      setNotice(`Worker ${id} is draining: it takes no new sessions and exits when its calls end.`);
      await load();
    } catch (error) {
      setProblem(apiProblem(error, "Could not drain the worker"));
    } finally {
      setDraining(null);
    }
  }

  return (
    <main id="main" className="page operators">
      <h1>Operators</h1>
      {config?.grafana_url ? (
        <p>
          <a href={config.grafana_url} target="_blank" rel="noreferrer noopener" data-testid="grafana">
            Open the Grafana dashboard ↗
          </a>
        </p>
      ) : null}
      {problem ? <ProblemBox problem={problem} onDismiss={() => setProblem(null)} /> : null}
      {notice ? (
        <p className="note" role="status">
          {notice}
        </p>
      ) : null}

      {staleness}
      <section className={`card${stale ? " stale-data" : ""}`} aria-labelledby="pools-title">
        <h2 id="pools-title">Pools</h2>
        {pools === null ? <p className="muted">Loading…</p> : null}
        {pools && pools.length ? (
          <div className="table-wrap">
            <table data-testid="pools" className="stacked">
              <thead>
                <tr>
                  <th scope="col">Pool</th>
                  <th scope="col">Workers</th>
                  <th scope="col">Capacity</th>
                  <th scope="col">Active</th>
                  <th scope="col">Queued</th>
                  <th scope="col">Expected wait</th>
                </tr>
              </thead>
              <tbody>
                {pools.map((p) => (
                  <tr key={p.pool}>
                    <th scope="row">{p.pool}</th>
                    <td data-label="Workers">{p.workers}</td>
                    <td data-label="Capacity">{p.capacity}</td>
                    <td data-label="Active">{p.active}</td>
                    <td data-label="Queued">{p.queued}</td>
                    <td data-label="Expected wait">
                      {p.capacity === 0 ? (
                        // Admission refuses sessions here (no_workers): no wait to show.
                        <span className="tag tag-failed">No worker takes sessions</span>
                      ) : p.queued ? (
                        formatWait(p.estimated_wait_s) || "unknown"
                      ) : (
                        "none"
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </section>

      <section className={`card${stale ? " stale-data" : ""}`} aria-labelledby="workers-title">
        <h2 id="workers-title">Workers</h2>
        {workers === null ? <p className="muted">Loading…</p> : null}
        {workers && !workers.length ? <p className="muted">No live workers.</p> : null}
        {workers && workers.length ? (
          <div className="table-wrap">
            <table data-testid="workers" className="stacked">
              <thead>
                <tr>
                  <th scope="col">Worker</th>
                  <th scope="col">Pool</th>
                  <th scope="col">Host</th>
                  <th scope="col">Version</th>
                  <th scope="col">Sessions</th>
                  <th scope="col">State</th>
                  <th scope="col">Heartbeat</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {workers.map((w) => (
                  <tr key={w.id} data-worker-id={w.id}>
                    <th scope="row">
                      <code>{w.id}</code>
                    </th>
                    <td data-label="Pool">{w.pool}</td>
                    <td data-label="Host">{w.host}</td>
                    <td data-label="Version">{w.version || "unknown"}</td>
                    <td data-label="Sessions">
                      {w.active} / {w.capacity}
                    </td>
                    <td data-label="State">
                      {!w.compatible ? (
                        <span className="tag tag-failed" title="It speaks another API protocol: it serves no session of this API's.">
                          incompatible (protocol {w.protocol})
                        </span>
                      ) : w.draining ? (
                        <span className="tag tag-failed">draining</span>
                      ) : w.stalled ? (
                        <span className="tag tag-failed" title="Its heartbeat lives, but it has not polled its queue: its slots are not counted.">
                          stalled: not polled for {formatDuration(w.poll_age_s ?? 0)}
                        </span>
                      ) : (
                        <span className="tag tag-completed">taking sessions</span>
                      )}
                    </td>
                    <td data-label="Heartbeat" className={w.heartbeat_age_s > 3 ? "stale" : undefined}>
                      {formatDuration(w.heartbeat_age_s)} ago
                    </td>
                    <td data-label="Actions">
                      <div className="actions">
                      {w.draining ? null : confirming === w.id ? (
                        <>
                          <button type="button" className="button-danger" onClick={() => void drain(w.id)}>
                            Confirm drain
                          </button>
                          <button type="button" className="button-quiet" onClick={() => setConfirming(null)}>
                            Cancel
                          </button>
                        </>
                      ) : (
                        <button
                          type="button"
                          onClick={() => setConfirming(w.id)}
                          disabled={draining === w.id}
                          aria-label={`Drain worker ${w.id}`}
                        >
                          {draining === w.id ? "Draining…" : "Drain"}
                        </button>
                      )}
                      </div>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </section>
    </main>
  );
}
