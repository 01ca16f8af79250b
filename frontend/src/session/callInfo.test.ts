import { describe, expect, it } from "vitest";
import type { VPEvent } from "../lib/types";
import { agentState, clockTime, connectedSeconds, responseTimes, shortDuration } from "./callInfo";

const T = 1_700_000_000;
const ev = (at: number, type: string, data: Record<string, unknown> = {}): VPEvent => ({
  session_id: "s1",
  seq: Math.round(at * 10),
  ts: T + at,
  type,
  data,
});
const idle = { userSpeaking: false, botSpeaking: false, micEnabled: true };

describe("the assistant's state", () => {
  it("listens, thinks after the caller's turn, speaks, and listens again", () => {
    const turn = [ev(1, "user.turn_started"), ev(3, "user.turn_stopped")];
    expect(agentState([], { ...idle, nowS: T })).toBe("listening");
    expect(agentState(turn.slice(0, 1), { ...idle, userSpeaking: true, nowS: T + 2 })).toBe("listening");
    expect(agentState(turn, { ...idle, nowS: T + 3.5 })).toBe("thinking");
    const answered = [...turn, ev(4, "bot.started_speaking")];
    expect(agentState(answered, { ...idle, botSpeaking: true, nowS: T + 4.5 })).toBe("speaking");
    expect(agentState([...answered, ev(6, "bot.stopped_speaking")], { ...idle, nowS: T + 7 })).toBe("listening");
  });

  it("stops thinking after a while with no answer, and says when muted", () => {
    const turn = [ev(3, "user.turn_stopped")];
    expect(agentState(turn, { ...idle, nowS: T + 30 })).toBe("listening");
    expect(agentState(turn, { ...idle, micEnabled: false, nowS: T + 4 })).toBe("muted");
  });
});

describe("call time and response times", () => {
  it("counts connected time from the first connect, to the end once final", () => {
    const events = [
      ev(0, "session.state", { state: "ready" }),
      ev(2, "session.state", { state: "connected" }),
      ev(5, "session.state", { state: "reconnecting" }),
      ev(6, "session.state", { state: "connected" }),
      ev(9, "session.state", { state: "ended" }),
    ];
    expect(connectedSeconds(events.slice(0, 1), T + 5, false)).toBeNull();
    expect(connectedSeconds(events.slice(0, 3), T + 8, false)).toBe(6);
    expect(connectedSeconds(events, T + 100, true)).toBe(7);
  });

  it("takes the model's measure when there is one, else turn end to answer start", () => {
    const turns = [
      ev(1, "user.turn_stopped"),
      ev(1.4, "bot.started_speaking"),
      ev(5, "user.turn_stopped"),
      ev(6, "bot.started_speaking"),
      ev(7, "bot.started_speaking"), // no turn before it: not an answer
    ];
    const derived = responseTimes(turns);
    expect(derived?.count).toBe(2);
    expect(derived?.last).toBeCloseTo(1.0);
    expect(derived?.median).toBeCloseTo(0.7);
    const measured = responseTimes([...turns, ev(8, "metrics.latency", { kind: "user_bot", seconds: 0.8 })]);
    expect(measured).toEqual({ last: 0.8, median: 0.8, count: 1 });
    expect(responseTimes([ev(1, "metrics.latency", { kind: "model_ttfb", seconds: 0.2 })])).toBeNull();
  });

  it("formats a clock and short durations", () => {
    expect([clockTime(7.9), clockTime(754), clockTime(3723)]).toEqual(["0:07", "12:34", "1:02:03"]);
    expect([shortDuration(0.64), shortDuration(1.25)]).toEqual(["640 ms", "1.3 s"]);
  });
});
