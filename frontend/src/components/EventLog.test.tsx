import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import type { VPEvent } from "../lib/types";
import { EVENT_LOG_ROWS, EventLog, summarize } from "./EventLog";

afterEach(cleanup);

const ev = (seq: number, type: string, data: Record<string, unknown> = {}): VPEvent => ({
  session_id: "s1",
  seq,
  ts: 1_700_000_000 + seq / 10,
  type,
  data,
});

describe("EventLog", () => {
  it("lists the events with their data, and filters by type or text", () => {
    render(
      <EventLog
        events={[
          ev(1, "session.state", { state: "queued", reason: "created" }),
          ev(2, "user.turn_started", { turn: 1 }),
          ev(3, "error", { message: "model unreachable", fatal: false }),
        ]}
      />,
    );
    expect(screen.getByTestId("event-log").querySelectorAll("li")).toHaveLength(0); // folded: not drawn
    const details = screen.getByTestId("event-log") as HTMLDetailsElement;
    details.open = true;
    fireEvent(details, new Event("toggle"));
    const rows = () => [...screen.getByTestId("event-log").querySelectorAll("li")].map((li) => li.getAttribute("data-type"));
    expect(rows()).toEqual(["session.state", "user.turn_started", "error"]);
    expect(screen.getByTestId("event-log").textContent).toContain("state=queued reason=created");
    fireEvent.change(screen.getByTestId("event-log-filter"), { target: { value: "TURN" } });
    expect(rows()).toEqual(["user.turn_started"]);
    fireEvent.change(screen.getByTestId("event-log-filter"), { target: { value: "unreachable" } });
    expect(rows()).toEqual(["error"]);
    fireEvent.change(screen.getByTestId("event-log-filter"), { target: { value: "nothing like it" } });
    expect(screen.getByText("No event matches.")).toBeTruthy();
  });

  it("keeps the latest rows of a long call, and cuts long values", () => {
    const many = Array.from({ length: EVENT_LOG_ROWS + 50 }, (_, i) => ev(i + 1, "bot.started_speaking"));
    render(<EventLog events={many} />);
    const details = screen.getByTestId("event-log") as HTMLDetailsElement;
    details.open = true;
    fireEvent(details, new Event("toggle"));
    const items = screen.getByTestId("event-log").querySelectorAll("li");
    expect(items).toHaveLength(EVENT_LOG_ROWS);
    expect(items[0].textContent).toContain("#51");
    expect(summarize({ text: "x".repeat(200) })).toHaveLength("text=".length + 80);
  });
});
