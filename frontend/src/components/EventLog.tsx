import { useMemo, useState } from "react";
import type { VPEvent } from "../lib/types";

/** Rows shown at most (the latest): a long call has thousands of events. */
export const EVENT_LOG_ROWS = 300;

const clock = (ts: number) =>
  new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) +
  `.${String(Math.floor((ts % 1) * 1000)).padStart(3, "0")}`;

/** One event's data in a line: `key=value` pairs, long values cut. */
export function summarize(data: Record<string, unknown>): string {
  return Object.entries(data)
    .map(([key, value]) => {
      const text = typeof value === "string" ? value : JSON.stringify(value);
      return `${key}=${text && text.length > 80 ? `${text.slice(0, 79)}…` : text}`;
    })
    .join(" ");
}

/** Every event of the call as the server sent it, raw, for the curious (the page says the
 * same in plain words): folded away, and drawn only while open (a long call has many). */
export function EventLog({ events }: { events: readonly VPEvent[] }) {
  const [open, setOpen] = useState(false);
  const [filter, setFilter] = useState("");
  const shown = useMemo(() => {
    if (!open) return [];
    const needle = filter.trim().toLowerCase();
    const matching = needle
      ? events.filter((e) => e.type.toLowerCase().includes(needle) || summarize(e.data).toLowerCase().includes(needle))
      : events;
    return matching.slice(-EVENT_LOG_ROWS);
  }, [events, filter, open]);
  return (
    <details
      className="card event-log"
      data-testid="event-log"
      onToggle={(e) => setOpen((e.currentTarget as HTMLDetailsElement).open)}
    >
      <summary>
        Event log <span className="muted">({events.length} events)</span>
      </summary>
      {open ? (
        <>
      <label className="event-log-filter">
        Filter
        <input
          type="search"
          value={filter}
          onChange={(e) => setFilter(e.target.value)}
          placeholder="e.g. session.state, tool, error"
          data-testid="event-log-filter"
        />
      </label>
      {shown.length ? (
        <ol className="event-log-rows" aria-label="Events, oldest first">
          {shown.map((e) => (
            <li key={`${e.session_id}:${e.seq}`} data-type={e.type}>
              <time dateTime={new Date(e.ts * 1000).toISOString()}>{clock(e.ts)}</time>{" "}
              <span className="muted">#{e.seq}</span> <code>{e.type}</code> <span>{summarize(e.data)}</span>
            </li>
          ))}
        </ol>
      ) : (
        <p className="muted">{events.length ? "No event matches." : "No events yet."}</p>
      )}
        </>
      ) : null}
    </details>
  );
}
