import { describe, expect, it } from "vitest";
import { qualityLabel, readQuality } from "./connectionQuality";

const stats = (received: number, lost: number, rtt = 0.012, jitter = 0.003) => [
  { type: "candidate-pair", id: "p0", state: "failed", nominated: false, currentRoundTripTime: 9 },
  { type: "candidate-pair", id: "p1", state: "succeeded", nominated: true, currentRoundTripTime: rtt },
  { type: "inbound-rtp", id: "a", kind: "audio", packetsReceived: received, packetsLost: lost, jitter },
  { type: "inbound-rtp", id: "v", kind: "video", packetsReceived: 5, packetsLost: 5, jitter: 1 },
];

describe("connection quality", () => {
  it("reads RTT of the active pair, audio jitter, and loss over the interval", () => {
    const [first, counters] = readQuality(stats(1000, 10), null);
    expect(first).toEqual({ rttS: 0.012, loss: null, jitterS: 0.003 });
    const [second] = readQuality(stats(1090, 20), counters);
    expect(second.loss).toBeCloseTo(10 / 100);
    expect(qualityLabel(second)).toBe("poor");
    expect(qualityLabel(first)).toBe("good");
    expect(qualityLabel(readQuality(stats(10, 0, 0.2), null)[0])).toBe("fair");
    expect(qualityLabel({ rttS: null, loss: null, jitterS: null })).toBeNull();
  });
});
