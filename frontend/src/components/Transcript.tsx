import { useConfig } from "../lib/config";
import type { TranscriptItem } from "../session/events";
import { formatDuration, isRawError, plainError, reasonText, STATE_LABELS } from "../session/messages";
import { ToolCard } from "./ToolCard";

interface Props {
  items: readonly TranscriptItem[];
  /** Whether user/assistant transcript lines exist (else turn lines stand in for them). */
  hasTranscript: boolean;
  /** "auto": show "You spoke 2.3 s" lines only when there is no transcript (the echo profile). */
  turns?: "auto" | "always" | "never";
  live?: boolean;
  emptyText?: string;
}

const clock = (ts: number) =>
  new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function turnText(item: Extract<TranscriptItem, { kind: "turn" }>): string {
  if (item.who === "user") {
    if (item.cutOff) return "You were speaking when the session ended";
    return item.durationS === null ? "You're speaking…" : `You spoke ${formatDuration(item.durationS)}`;
  }
  if (item.cutOff) return "Bot replied (cut off when the session ended)";
  return item.durationS === null ? "Bot is replying…" : `Bot replied (${formatDuration(item.durationS)})`;
}

export function Transcript({ items, hasTranscript, turns = "auto", live = false, emptyText }: Props) {
  const assistant = useConfig().config?.assistant_name || "Assistant";
  const showTurns = turns === "always" || (turns === "auto" && !hasTranscript);
  // Raw errors in plain words: the same words again (a retry failing the same way) once only.
  const said = new Set<string>();
  const shown = items.filter((item) => {
    if (item.kind === "turn") return showTurns;
    if (item.kind !== "error" || !isRawError(item.message)) return true;
    const plain = plainError(item.message);
    if (said.has(plain)) return false;
    said.add(plain);
    return true;
  });
  if (!shown.length) {
    return emptyText ? <p className="transcript-empty muted">{emptyText}</p> : null;
  }
  // What the server said about errors: tells a model failure's cause (a refused key).
  const errorTexts = items.flatMap((item) => (item.kind === "error" ? [item.message] : []));
  return (
    <ol className="transcript" aria-live={live ? "polite" : undefined} data-testid="transcript">
      {shown.map((item) => {
        const time = (
          <time className="when" dateTime={new Date(item.ts * 1000).toISOString()}>
            {clock(item.ts)}
          </time>
        );
        switch (item.kind) {
          case "user":
            return (
              <li key={item.key} className="line line-user" data-kind="user" data-typed={item.typed || undefined}>
                <span className="who">You</span>
                <p>
                  {item.text}
                  {item.typed ? <span className="tag">typed</span> : null}
                </p>
                {time}
              </li>
            );
          case "assistant":
            return (
              <li
                key={item.key}
                className={`line line-assistant${item.interrupted ? " line-interrupted" : ""}`}
                data-kind="assistant"
              >
                <span className="who">{assistant}</span>
                <p>
                  {item.text}
                  {item.interrupted ? <span className="tag tag-interrupted">interrupted</span> : null}
                </p>
                {time}
              </li>
            );
          case "turn":
            return (
              <li
                key={item.key}
                className={`line line-turn line-turn-${item.who}${item.durationS === null && !item.cutOff ? " line-ongoing" : ""}`}
                data-kind={`${item.who}-turn`}
              >
                <span className={`turn-mark turn-mark-${item.who}`} aria-hidden="true" />
                <span>{turnText(item)}</span>
                {time}
              </li>
            );
          case "tool":
            return (
              <li key={item.key} className="line line-tool" data-kind="tool">
                <ToolCard item={item} />
              </li>
            );
          case "status":
            return (
              <li key={item.key} className={`line line-status line-status-${item.state}`} data-kind="status">
                <span>
                  <strong>Session {STATE_LABELS[item.state]?.toLowerCase() ?? item.state}.</strong>{" "}
                  {reasonText(item.reason, [item.message, ...errorTexts])}
                  {/* The server's own words only when meant for people (raw errors are for operators' logs). */}
                  {item.message && !isRawError(item.message) ? ` (${item.message})` : ""}
                </span>
                {time}
              </li>
            );
          case "error":
            return (
              <li key={item.key} className="line line-error" data-kind="error">
                <span>
                  <strong>{item.fatal ? "Error (the session stops):" : "Error:"}</strong>{" "}
                  {/* Raw program text (a Python exception) is for the operators' logs, not for people. */}
                  {plainError(item.message)}
                </span>
                {time}
              </li>
            );
        }
      })}
    </ol>
  );
}
