import { describe, expect, it } from "vitest";
import type { SessionStatus } from "../lib/types";
import { newPlan, nextMediaStep, type MediaInput, type MediaKind, type MediaPlan } from "./reconnect";

type Seen = [status: SessionStatus, stateSeq: number, connecting?: boolean];

/** Run the step over what the page sees in turn; what it does at each: "", "connect", "hang up", or both. */
function run(seen: Seen[], { kind = "webrtc" as MediaKind, plan = newPlan() } = {}): string[] {
  let current: MediaPlan = plan;
  return seen.map(([status, stateSeq, connecting = false]) => {
    const input: MediaInput = { status, stateSeq, final: ["ended", "failed"].includes(status), kind, connecting };
    const step = nextMediaStep(current, input);
    current = step.plan;
    return [step.hangUp ? "hang up" : "", step.connect ? "connect" : ""].filter(Boolean).join(" + ");
  });
}

describe("when the media connects, hangs up and connects again", () => {
  it("connects once a worker has the call: SmallWebRTC from starting, Daily from ready", () => {
    expect(run([["queued", 1], ["starting", 3], ["ready", 4], ["connected", 5], ["connected", 5]])).toEqual([
      "",
      "connect",
      "",
      "",
      "",
    ]);
    expect(run([["queued", 1], ["starting", 3], ["ready", 4], ["connected", 5]], { kind: "daily" })).toEqual([
      "",
      "",
      "connect",
      "",
    ]);
  });

  it("hangs up and offers again at once when the worker lost the media, each time", () => {
    const seen: Seen[] = [
      ["ready", 4],
      ["connected", 5],
      ["reconnecting", 9],
      ["reconnecting", 9, true], // looked at again while the new offer is under way
      ["connected", 10],
      ["reconnecting", 14],
      ["connected", 15],
    ];
    expect(run(seen)).toEqual(["connect", "", "hang up + connect", "", "", "hang up + connect", ""]);
  });

  it("hangs up when the call moves, and connects once the next worker has it", () => {
    const seen: Seen[] = [["ready", 4], ["connected", 5], ["recovering", 9], ["starting", 10], ["ready", 11], ["connected", 12]];
    expect(run(seen)).toEqual(["connect", "", "hang up", "connect", "", ""]);
    expect(run(seen, { kind: "daily" })).toEqual(["connect", "", "hang up", "", "connect", ""]);
  });

  it("gives up a reconnect under way when the worker goes too, then connects to the next", () => {
    const seen: Seen[] = [
      ["connected", 5],
      ["reconnecting", 9],
      ["recovering", 10, true],
      ["ready", 12],
      ["connected", 13],
    ];
    expect(run(seen, { plan: { ...newPlan(), started: true } })).toEqual(["", "hang up + connect", "hang up", "connect", ""]);
  });

  it("after a reload: offers even while the call still counts as connected", () => {
    // The worker announces it lost the old page's media while our offer is under way: not our loss.
    const seen: Seen[] = [["connected", 5], ["reconnecting", 6, true], ["connected", 7]];
    expect(run(seen, { plan: newPlan(true) })).toEqual(["connect", "", ""]);
    // A page that did not re-attach does not offer into a connected call.
    expect(run([["connected", 5]])).toEqual([""]);
  });

  it("after a reload: connects at once while reconnecting, after the move while recovering", () => {
    expect(run([["reconnecting", 6], ["connected", 7]], { plan: newPlan(true) })).toEqual(["connect", ""]);
    expect(run([["recovering", 6], ["ready", 8]], { plan: newPlan(true), kind: "daily" })).toEqual(["", "connect"]);
  });

  it("does not wait for ever on an offer whose media came up while the call still waits", () => {
    // Connecting when reconnecting@6 came, so it was left to finish; its transport is up now,
    // and the call still waits for its client: hang up and offer again.
    const seen: Seen[] = [["connected", 5], ["reconnecting", 6, true], ["reconnecting", 6, false]];
    expect(run(seen, { plan: newPlan(true) })).toEqual(["connect", "", "hang up + connect"]);
  });

  it("does nothing once the call has ended", () => {
    expect(run([["reconnecting", 5], ["ended", 6]], { plan: { ...newPlan(), lostAt: "reconnecting@5" } })).toEqual([
      "connect",
      "",
    ]);
    expect(run([["ended", 6]], { plan: newPlan(true) })).toEqual([""]);
  });
});
