import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { MemoryRouter } from "react-router";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ConversationSummary } from "../lib/types";
import { History } from "./History";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

const row = (id: string, extra: Partial<ConversationSummary> = {}): ConversationSummary => ({
  conversation_id: id,
  title: null,
  created_at: "2026-11-29T08:00:00Z",
  updated_at: "2026-11-29T08:05:00Z",
  session_count: 1,
  connected_sessions: 1,
  duration_s: 42,
  profile: "echo",
  live: false,
  match: null,
  ...extra,
});

const json = (body: unknown) => new Response(JSON.stringify(body), { headers: { "Content-Type": "application/json" } });

function renderHistory(rows: (url: string) => ConversationSummary[]) {
  const fetchMock = vi.fn<typeof fetch>(async (input) => json(rows(String(input))));
  vi.stubGlobal("fetch", fetchMock);
  render(
    <MemoryRouter initialEntries={["/history"]}>
      <History />
    </MemoryRouter>,
  );
  return fetchMock;
}

describe("History", () => {
  it("titles by first words or by what it was, marks live ones, folds attempts that never connected", async () => {
    renderHistory(() => [
      row("a", { title: "Find flights to Oslo", profile: "assistant", live: true }),
      row("b"),
      row("c", { connected_sessions: 0, duration_s: 0 }),
      row("d", { connected_sessions: 0, duration_s: 0, session_count: 2 }),
    ]);
    const list = await screen.findByTestId("conversations");
    const titles = within(list).getAllByRole("link").map((a) => a.textContent);
    expect(titles[0]).toBe("Find flights to Oslolive now");
    expect(titles[1]).toMatch(/^Echo test, /);
    expect(titles).toHaveLength(2);
    expect(within(list).getAllByTestId("live-now")).toHaveLength(1);
    const attempts = screen.getByTestId("attempts") as HTMLDetailsElement;
    expect(attempts.open).toBe(false);
    expect(within(attempts).getByText("2 attempts that never connected")).toBeTruthy();
    expect(list.textContent).toContain("42 s talked");
  });

  it("searches what was said on the server, and marks the words in the matching line", async () => {
    const fetchMock = renderHistory((url) =>
      url.includes("q=") ? [row("a", { title: "Trip", match: "Find flights to Oslo" })] : [row("a"), row("b")],
    );
    await screen.findByTestId("conversations");
    fireEvent.change(screen.getByTestId("history-search"), { target: { value: "oslo fli" } });
    fireEvent.click(screen.getByRole("button", { name: "Search" }));
    const match = await screen.findByTestId("match");
    expect(fetchMock).toHaveBeenLastCalledWith("/api/conversations?limit=100&q=oslo%20fli", expect.anything());
    expect([...match.querySelectorAll("mark")].map((m) => m.textContent)).toEqual(["fli", "Oslo"]);
    expect(screen.getByRole("status").textContent).toBe("1 conversation mentions “oslo fli”.");
    fireEvent.click(screen.getByRole("button", { name: "Show all" }));
    await waitFor(() => expect(screen.getAllByRole("link")).toHaveLength(2));
  });

  it("says when nothing matches", async () => {
    renderHistory((url) => (url.includes("q=") ? [] : [row("a")]));
    await screen.findByTestId("conversations");
    fireEvent.change(screen.getByTestId("history-search"), { target: { value: "zebra" } });
    fireEvent.click(screen.getByRole("button", { name: "Search" }));
    expect((await screen.findByTestId("no-matches")).textContent).toBe("Nothing you said or heard matches “zebra”.");
  });
});
