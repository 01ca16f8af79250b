import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { AuthProvider } from "../lib/auth";
import type { PoolOut, WorkerOut } from "../lib/types";
import { Operators } from "./Operators";

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

const worker: WorkerOut = {
  id: "w-1", pool: "server", host: "box", version: "1.4.0", protocol: 2, compatible: true,
  capacity: 8, active: 3, draining: false,
  load: 0.4, heartbeat_age_s: 0.5, started_at: 0, stalled: false, poll_age_s: 0.1,
};
const pool = (extra: Partial<PoolOut> = {}): PoolOut =>
  ({ pool: "server", workers: 1, capacity: 8, active: 3, queued: 0, estimated_wait_s: 0, ...extra }) as PoolOut;

describe("Operators", () => {
  it("keeps the last known fleet when the server goes away, marked as out of date", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let up = true;
    vi.stubGlobal(
      "fetch",
      vi.fn<typeof fetch>(async (input) => {
        const url = String(input);
        if (url === "/api/me") return json({ id: "u", name: "root", role: "admin", csrf_token: "t" });
        if (!up) throw new TypeError("Failed to fetch");
        return json(url === "/api/workers" ? [worker] : [pool()]);
      }),
    );
    render(
      <AuthProvider>
        <Operators />
      </AuthProvider>,
    );
    expect((await screen.findByTestId("workers")).textContent).toContain("1.4.0"); // its version
    expect(screen.queryByTestId("stale")).toBeNull();

    up = false;
    await act(async () => {
      vi.advanceTimersByTime(3100);
    });
    await waitFor(() => expect(screen.getByTestId("stale")).toBeTruthy());
    expect(screen.getByText("Can't reach the server")).toBeTruthy();
    expect(screen.getByTestId("workers").closest("section")?.className).toContain("stale-data");
    expect(screen.getByTestId("workers").textContent).toContain("w-1"); // still shown

    up = true;
    await act(async () => {
      vi.advanceTimersByTime(3100);
    });
    await waitFor(() => expect(screen.queryByTestId("stale")).toBeNull());
  });

  it("says a pool without workers takes no sessions, rather than a wait", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn<typeof fetch>(async (input) => {
        const url = String(input);
        if (url === "/api/me") return json({ id: "u", name: "root", role: "admin", csrf_token: "t" });
        return json(url === "/api/workers" ? [] : [pool({ workers: 0, capacity: 0, active: 0, queued: 2, estimated_wait_s: 120 })]);
      }),
    );
    render(
      <AuthProvider>
        <Operators />
      </AuthProvider>,
    );
    const pools = await screen.findByTestId("pools");
    expect(pools.textContent).toContain("No worker takes sessions");
    expect(pools.textContent).not.toContain("2 min");
    expect(screen.getByText("No live workers.")).toBeTruthy();
  });
});
