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

/** A tool's name in words, when its configuration gives it no title: send_to_nested → "Send to nested". */
export function toolLabel(name: string): string {
  const words = name.replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").trim().toLowerCase();
  return words ? words[0].toUpperCase() + words.slice(1) : name;
}

type Scalar = string | number | boolean;
const isScalar = (v: unknown): v is Scalar => ["string", "number", "boolean"].includes(typeof v);

/** Flat arguments as "field: value" lines (what people read); anything deeper as JSON. */
function Values({ value }: { value: unknown }) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.every(([, v]) => isScalar(v))) {
      return (
        <dl className="tool-values">
          {entries.map(([k, v]) => (
            <div key={k}>
              <dt>{toolLabel(k)}</dt>
              <dd>{String(v)}</dd>
            </div>
          ))}
        </dl>
      );
    }
  }
  if (typeof value === "string") return <p className="tool-text">{value}</p>;
  return <pre>{show(value)}</pre>;
}

/** A tool call: name, status and time on the summary line; arguments, progress and result inside. */
export function ToolCard({ item }: { item: ToolItem }) {
  const args = show(item.args);
  const result = show(item.result);
  const label = item.title || toolLabel(item.name);
  return (
    <details className={`tool tool-${item.status}`} data-testid="tool-card">
      <summary>
        <span className="tool-name" title={item.name}>
          {label}
        </span>
        <span className={`tag tag-${item.status}`}>{STATUS[item.status]}</span>
        {item.durationS !== undefined ? <span className="muted">{formatDuration(item.durationS)}</span> : null}
        {item.steps.length ? <span className="muted">{item.steps.length} steps</span> : null}
      </summary>
      <div className="tool-body">
        {args && args !== "{}" ? (
          <>
            <h4>Asked</h4>
            <Values value={item.args} />
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
            {result ? <Values value={item.result} /> : <p className="muted">(empty)</p>}
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
