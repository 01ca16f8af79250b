import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { SessionOut } from "../lib/types";
import { sessionOut } from "../testing/sessions";
import { LiveSessions } from "./LiveSessions";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

const live = (id: string, status: string): SessionOut =>
  sessionOut(status as SessionOut["status"], null, id, {
    conversation_id: `conv-${id}`,
    pool: "default",
    created_at: "2026-01-01T10:00:00Z",
  });

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

describe("LiveSessions, after starting was refused for too many sessions", () => {
  it("lists the user's live calls, and End ends one", async () => {
    let calls = [live("s1", "connected"), live("s2", "queued")];
    const fetchMock = vi.fn<typeof fetch>(async (input, init) => {
      const url = String(input);
      if (url === "/api/sessions?live=true") return json(calls);
      if (url === "/api/sessions/s1" && init?.method === "DELETE") {
        calls = calls.filter((s) => s.session_id !== "s1");
        return json({ ...live("s1", "ended") });
      }
      return json({ detail: { code: "not_found", message: "no" } }, 404);
    });
    vi.stubGlobal("fetch", fetchMock);
    render(<LiveSessions />);

    const message = await screen.findByTestId("live-sessions-message");
    expect(message.textContent).toBe("You have 2 calls going on; end one to start another.");
    expect(screen.getByTestId("live-session-s1").textContent).toContain("conv-s1");
    const ends = screen.getAllByRole("button", { name: "End" });
    expect(ends).toHaveLength(2);

    fireEvent.click(ends[0]);
    await waitFor(() =>
      expect(screen.getByTestId("live-sessions-message").textContent).toBe(
        "You have 1 call going on; end one to start another.",
      ),
    );
    expect(fetchMock).toHaveBeenCalledWith("/api/sessions/s1", expect.objectContaining({ method: "DELETE" }));
    expect(screen.queryByTestId("live-session-s1")).toBeNull();
    expect(screen.getByTestId("live-session-s2")).toBeTruthy();
  });

  it("says when none is left", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn<typeof fetch>(async () => json([])),
    );
    render(<LiveSessions />);
    expect((await screen.findByTestId("live-sessions-message")).textContent).toBe(
      "None of your calls is going on any more; press Start again.",
    );
  });
});
