import { useEffect, useRef, useState } from "react";
import type { VPEvent } from "../lib/types";
import {
  AGENT_STATE_LABELS,
  agentState,
  clockTime,
  connectedSeconds,
  responseTimes,
  shortDuration,
} from "../session/callInfo";
import { type ConnectionQuality, type LossCounters, qualityLabel, readQuality } from "../session/connectionQuality";

/** How often the connection's statistics are read. */
const STATS_EVERY_MS = 2000;

interface Props {
  events: readonly VPEvent[];
  /** Who answers: the assistant's configured name, or "Bot". */
  who: string;
  userSpeaking: boolean;
  botSpeaking: boolean;
  micEnabled: boolean;
  /** The call is going on (its state and clock move). */
  live: boolean;
  final: boolean;
  /** The connection's WebRTC statistics, where the call has a connection of its own. */
  stats?: () => Promise<RTCStatsReport | null>;
}

function useConnectionQuality(live: boolean, stats?: () => Promise<RTCStatsReport | null>): ConnectionQuality | null {
  const [quality, setQuality] = useState<ConnectionQuality | null>(null);
  const counters = useRef<LossCounters | null>(null);
  useEffect(() => {
    if (!live || !stats) return;
    let gone = false;
    const read = async () => {
      const report = await stats().catch(() => null);
      if (gone || !report) return;
      const [now, next] = readQuality(report.values() as Iterable<Record<string, unknown> & { type: string; id: string }>, counters.current);
      counters.current = next;
      setQuality(now);
    };
    void read();
    const timer = window.setInterval(() => void read(), STATS_EVERY_MS);
    return () => {
      gone = true;
      window.clearInterval(timer);
      counters.current = null;
    };
  }, [live, stats]);
  return live ? quality : null;
}

/** The call at a glance: the assistant's state, the call's time, how fast it answers. */
export function CallInfo({ events, who, userSpeaking, botSpeaking, micEnabled, live, final, stats }: Props) {
  const quality = useConnectionQuality(live && !final, stats);
  const [nowMs, setNowMs] = useState(() => Date.now());
  useEffect(() => {
    if (!live) return;
    const timer = window.setInterval(() => setNowMs(Date.now()), 500);
    return () => window.clearInterval(timer);
  }, [live]);
  const nowS = Math.max(nowMs / 1000, events.length ? events[events.length - 1].ts : 0);
  const seconds = connectedSeconds(events, nowS, final);
  if (seconds === null) return null;
  const state = live && !final ? agentState(events, { userSpeaking, botSpeaking, micEnabled, nowS }) : null;
  const times = responseTimes(events);
  return (
    <dl className="call-info" data-testid="call-info">
      {state ? (
        <div>
          <dt>{who}</dt>
          <dd className={`agent-state agent-${state}`} data-testid="agent-state" data-state={state}>
            {AGENT_STATE_LABELS[state]}
          </dd>
        </div>
      ) : null}
      <div>
        <dt>Call time</dt>
        <dd data-testid="call-time">{clockTime(seconds)}</dd>
      </div>
      {quality && qualityLabel(quality) ? (
        <div>
          <dt>Connection</dt>
          <dd className={`quality quality-${qualityLabel(quality)}`} data-testid="connection-quality" data-quality={qualityLabel(quality)}>
            {qualityLabel(quality)}
            <span className="muted quality-numbers">
              {[
                quality.rttS !== null ? `${Math.round(quality.rttS * 1000)} ms round trip` : null,
                quality.loss !== null ? `${(quality.loss * 100).toFixed(1)}% lost` : null,
                quality.jitterS !== null ? `${Math.round(quality.jitterS * 1000)} ms jitter` : null,
              ]
                .filter(Boolean)
                .join(" · ")}
            </span>
          </dd>
        </div>
      ) : null}
      <div>
        <dt>Response time</dt>
        <dd data-testid="response-time">
          {times
            ? `${shortDuration(times.last)}${times.count > 1 ? ` (median ${shortDuration(times.median)} of ${times.count})` : ""}`
            : "—"}
        </dd>
      </div>
    </dl>
  );
}
