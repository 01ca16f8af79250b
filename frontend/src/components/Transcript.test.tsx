import { cleanup, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigContext } from "../lib/config";
import type { ServerConfig, VPEvent } from "../lib/types";
import { foldEvents } from "../session/events";
import { Transcript } from "./Transcript";

afterEach(cleanup);

const ev = (seq: number, type: string, data: Record<string, unknown> = {}): VPEvent => ({
  session_id: "s1",
  seq,
  ts: 1_700_000_000 + seq,
  type,
  data,
});

function renderEvents(events: VPEvent[], turns?: "auto" | "always" | "never") {
  const view = foldEvents(events);
  return render(<Transcript items={view.items} hasTranscript={view.hasTranscript} turns={turns} />);
}

const lines = () => screen.getAllByRole("listitem").map((li) => li.getAttribute("data-kind"));

describe("Transcript", () => {
  it("shows the echo profile's turns in words", () => {
    renderEvents([
      ev(1, "session.state", { state: "connected" }),
      ev(2, "user.turn_started", { turn: 1 }),
      ev(3, "user.turn_stopped", { turn: 1, duration_s: 2.3 }),
      ev(4, "bot.started_speaking", { turn: 1 }),
    ]);
    expect(screen.getByText("You spoke 2.3 s")).toBeTruthy();
    expect(screen.getByText("Bot is replying…")).toBeTruthy();
    expect(lines()).toEqual(["user-turn", "bot-turn"]);
  });

  it("shows user and assistant lines, an interrupted one marked, and hides turns then", () => {
    renderEvents([
      ev(1, "user.turn_started", { turn: 1 }),
      ev(2, "user.turn_stopped", { turn: 1, duration_s: 1.2 }),
      ev(3, "user.transcript", { text: "Tell me a story" }),
      ev(4, "assistant.transcript", { text: "Once upon a", interrupted: true }),
      ev(5, "assistant.transcript", { text: "Sure, what about?", interrupted: false }),
    ]);
    expect(lines()).toEqual(["user", "assistant", "assistant"]);
    const [, cut, whole] = screen.getAllByRole("listitem");
    expect(within(cut).getByText("interrupted")).toBeTruthy();
    expect(cut.className).toContain("line-interrupted");
    expect(within(whole).queryByText("interrupted")).toBeNull();
    expect(screen.getByText("Tell me a story")).toBeTruthy();
  });

  it("shows turns next to a transcript when asked", () => {
    renderEvents(
      [ev(1, "user.turn_stopped", { turn: 1, duration_s: 1.2 }), ev(2, "user.transcript", { text: "hi" })],
      "always",
    );
    expect(lines()).toEqual(["user-turn", "user"]);
  });

  it("renders a tool call as an expandable card with progress and result", () => {
    const call = { name: "send_to_nested", call_id: "c-1" };
    renderEvents([
      ev(1, "tool.started", { ...call, arguments: { text: "book a table" } }),
      ev(2, "tool.progress", { ...call, step: 1, text: "calling the restaurant", kind: "status" }),
      ev(3, "tool.completed", { ...call, result: "booked for 8 pm", duration_s: 12.5 }),
    ]);
    const card = screen.getByTestId("tool-card") as HTMLDetailsElement;
    expect(card.open).toBe(false);
    expect(within(card).getByText("Send to nested")).toBeTruthy(); // the name in words
    expect(within(card).getByText("done")).toBeTruthy();
    fireEvent.click(within(card).getByText("Send to nested"));
    expect(card.open).toBe(true);
    expect(within(card).getByText("calling the restaurant")).toBeTruthy();
    expect(within(card).getByText("booked for 8 pm")).toBeTruthy();
    // Arguments as "field: value", not JSON.
    expect(within(card).getByText("Text")).toBeTruthy();
    expect(within(card).getByText("book a table")).toBeTruthy();
    expect(card.textContent).not.toContain("{");
  });

  it("labels a tool by its configured title, and deeper values as JSON", () => {
    const call = { name: "lookup", call_id: "c-2" };
    renderEvents([
      ev(1, "tool.started", { ...call, title: "Looking up the order", arguments: { ids: [1, 2] } }),
      ev(2, "tool.completed", { ...call, result: { found: 2 } }),
    ]);
    const card = screen.getByTestId("tool-card");
    expect(within(card).getByText("Looking up the order")).toBeTruthy();
    expect(card.textContent).toContain('"ids"');
    expect(within(card).getByText("Found")).toBeTruthy(); // a flat result: field and value
  });

  it("labels the assistant's lines with its configured name", () => {
    render(
      <ConfigContext.Provider value={{ config: { assistant_name: "Archie" } as ServerConfig, problem: null }}>
        <Transcript items={foldEvents([ev(1, "assistant.transcript", { text: "Hi!" })]).items} hasTranscript />
      </ConfigContext.Provider>,
    );
    expect(screen.getByText("Archie")).toBeTruthy();
  });

  it("says why a session failed, in plain words", () => {
    renderEvents([
      ev(1, "session.state", { state: "connected" }),
      ev(2, "session.state", { state: "failed", reason: "model_unavailable" }),
    ]);
    expect(screen.getByText(/Session failed\./)).toBeTruthy();
    expect(screen.getByText(/The AI model could not be reached/)).toBeTruthy();
  });

  it("shows a refused key in plain words, never the raw errors", () => {
    renderEvents([
      ev(1, "session.state", { state: "connected" }),
      ev(2, "error", { message: "server rejected WebSocket connection: HTTP 401", fatal: false }),
      ev(3, "error", { message: "server rejected WebSocket connection: HTTP 401", fatal: false }),
      ev(4, "session.state", {
        state: "failed",
        reason: "model_unavailable",
        message: "server rejected WebSocket connection: HTTP 401",
      }),
    ]);
    const text = screen.getByTestId("transcript").textContent ?? "";
    expect(text).not.toMatch(/HTTP 401|Errno|Connect call failed|rejected WebSocket/);
    expect(text).toContain("The voice model refused this server's API key; an operator must fix OPENAI_API_KEY.");
    expect(text).not.toContain("Try again later");
    expect(lines()).toEqual(["error", "status"]); // the same failure twice: said once
    cleanup();

    renderEvents([ev(1, "error", { message: "[Errno 111] Connect call failed ('127.0.0.1', 8765)", fatal: true })]);
    const down = screen.getByTestId("transcript").textContent ?? "";
    expect(down).not.toMatch(/Errno|Connect call failed/);
    expect(down).toContain("The AI model could not be reached.");
  });

  it("shows the empty text when nothing was said", () => {
    renderEvents([ev(1, "session.state", { state: "connected" })]);
    expect(screen.queryByTestId("transcript")).toBeNull();
    cleanup();
    render(<Transcript items={[]} hasTranscript={false} emptyText="Nothing said yet." />);
    expect(screen.getByText("Nothing said yet.")).toBeTruthy();
  });
});
