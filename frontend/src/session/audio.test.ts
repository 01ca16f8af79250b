import { describe, expect, it, vi } from "vitest";
import { playbackAllowed } from "./audio";

/** The bot's <audio> element as the browser leaves it: paused, with the call's stream. */
function pausedAudio(play: () => Promise<void>): HTMLAudioElement {
  const element = document.createElement("audio");
  Object.defineProperty(element, "srcObject", { value: {}, configurable: true });
  Object.defineProperty(element, "paused", { value: true, configurable: true });
  element.play = vi.fn(play);
  return element;
}

describe("whether the call's sound may play without a click", () => {
  it("no, when the browser refuses to play it (autoplay after a reload)", async () => {
    const refused = pausedAudio(() => Promise.reject(new DOMException("needs a gesture", "NotAllowedError")));
    expect(await playbackAllowed(refused)).toBe(false);
  });

  it("yes, when it plays, or has nothing to play yet", async () => {
    const element = pausedAudio(() => Promise.resolve());
    expect(await playbackAllowed(element)).toBe(true);
    expect(element.play).toHaveBeenCalledTimes(1);
    expect(await playbackAllowed(document.createElement("audio"))).toBe(true);
    expect(await playbackAllowed(null)).toBe(true);
  });

  it("yes for other failures (those are not for a click to fix)", async () => {
    const aborted = pausedAudio(() => Promise.reject(new DOMException("new source", "AbortError")));
    expect(await playbackAllowed(aborted)).toBe(true);
  });
});
