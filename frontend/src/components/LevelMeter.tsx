import { useEffect, useRef } from "react";
import { meterLevel } from "../session/audio";

interface Props {
  label: string;
  /** rms, 0..1 */
  level: () => number;
  speaking: boolean;
  active: boolean;
  muted?: boolean;
  testId?: string;
}

/** A live level bar (updated every animation frame, without re-rendering) and a speaking light. */
export function LevelMeter({ label, level, speaking, active, muted, testId }: Props) {
  const fill = useRef<HTMLSpanElement>(null);

  useEffect(() => {
    if (!active) {
      if (fill.current) fill.current.style.transform = "scaleX(0)";
      return;
    }
    let frame = 0;
    const tick = () => {
      if (fill.current) fill.current.style.transform = `scaleX(${meterLevel(level()).toFixed(3)})`;
      frame = requestAnimationFrame(tick);
    };
    frame = requestAnimationFrame(tick);
    return () => cancelAnimationFrame(frame);
  }, [active, level]);

  const state = muted ? "muted" : speaking ? "speaking" : active ? "listening" : "idle";
  const words = { muted: "muted", speaking: "speaking", listening: "quiet", idle: "—" }[state];
  return (
    <div className={`level level-${state}`} data-testid={testId} data-speaking={speaking ? "true" : "false"}>
      <span className="level-label">
        <span className="level-light" aria-hidden="true" />
        {label}
        <span className="level-state">{words}</span>
      </span>
      <span className="level-bar" aria-hidden="true">
        <span className="level-fill" ref={fill} />
      </span>
    </div>
  );
}
