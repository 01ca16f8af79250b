// The call's connection quality from WebRTC statistics: round-trip time, packet loss and
// jitter of the audio coming in, as browsers report them (RTCPeerConnection.getStats).

export interface ConnectionQuality {
  /** Round-trip time of the connection's active candidate pair, seconds. */
  rttS: number | null;
  /** Share of incoming audio packets lost since the last reading (0..1). */
  loss: number | null;
  /** Jitter of the incoming audio, seconds. */
  jitterS: number | null;
}

export interface LossCounters {
  received: number;
  lost: number;
}

type Stat = Record<string, unknown> & { type: string; id: string };

const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** One reading, and the counters to compare the next one with (loss is over the interval). */
export function readQuality(stats: Iterable<Stat>, previous: LossCounters | null): [ConnectionQuality, LossCounters | null] {
  let rttS: number | null = null;
  let jitterS: number | null = null;
  let counters: LossCounters | null = null;
  for (const s of stats) {
    if (s.type === "candidate-pair" && (s.nominated || s.selected) && s.state === "succeeded") {
      rttS = num(s.currentRoundTripTime) ?? rttS;
    } else if (s.type === "inbound-rtp" && s.kind === "audio") {
      jitterS = num(s.jitter);
      const received = num(s.packetsReceived);
      const lost = num(s.packetsLost);
      if (received !== null && lost !== null) counters = { received, lost };
    }
  }
  let loss: number | null = null;
  if (counters && previous) {
    const got = counters.received - previous.received;
    const missed = Math.max(counters.lost - previous.lost, 0);
    loss = got + missed > 0 ? missed / (got + missed) : 0;
  }
  return [{ rttS, loss, jitterS }, counters];
}

/** In words people can read at a glance: good, fair or poor, by the worst of the three. */
export function qualityLabel(q: ConnectionQuality): "good" | "fair" | "poor" | null {
  if (q.rttS === null && q.loss === null && q.jitterS === null) return null;
  const rtt = q.rttS ?? 0;
  const loss = q.loss ?? 0;
  const jitter = q.jitterS ?? 0;
  if (rtt > 0.4 || loss > 0.05 || jitter > 0.05) return "poor";
  if (rtt > 0.15 || loss > 0.01 || jitter > 0.02) return "fair";
  return "good";
}
