import type { TranscriptItem } from "../session/events";
import { formatDuration } from "../session/messages";

type ToolItem = Extract<TranscriptItem, { kind: "tool" }>;

function show(value: unknown): string {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

const STATUS = { running: "running…", completed: "done", failed: "failed" } as const;

/** A tool call: name, status and time on the summary line; arguments, progress and result inside. */
export function ToolCard({ item }: { item: ToolItem }) {
  const args = show(item.args);
  const result = show(item.result);
  return (
    <details className={`tool tool-${item.status}`} data-testid="tool-card">
      <summary>
        <span className="tool-name">{item.name}</span>
        <span className={`tag tag-${item.status}`}>{STATUS[item.status]}</span>
        {item.durationS !== undefined ? <span className="muted">{formatDuration(item.durationS)}</span> : null}
        {item.steps.length ? <span className="muted">{item.steps.length} steps</span> : null}
      </summary>
      <div className="tool-body">
        {args && args !== "{}" ? (
          <>
            <h4>Asked</h4>
            <pre>{args}</pre>
          </>
        ) : null}
        {item.steps.length ? (
          <>
            <h4>Progress</h4>
            <ol className="tool-steps">
              {item.steps.map((step, i) => (
                <li key={`${step.step}-${i}`}>
                  {step.kind && !["text", "progress"].includes(step.kind) ? <span className="tag">{step.kind}</span> : null}{" "}
                  {step.text}
                </li>
              ))}
            </ol>
          </>
        ) : null}
        {item.status === "completed" ? (
          <>
            <h4>Result</h4>
            <pre>{result || "(empty)"}</pre>
          </>
        ) : null}
        {item.status === "failed" ? (
          <>
            <h4>Error</h4>
            <p className="tool-error">{item.error}</p>
          </>
        ) : null}
      </div>
    </details>
  );
}
