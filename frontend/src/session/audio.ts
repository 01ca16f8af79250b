// Audio levels measured in the page with WebAudio: the microphone's and the bot's.

let context: AudioContext | null = null;

/** The page's one AudioContext. Call it first from a click so the browser lets it run. */
export function audioContext(): AudioContext | null {
  if (typeof window === "undefined" || typeof window.AudioContext === "undefined") return null;
  if (!context || context.state === "closed") context = new AudioContext();
  if (context.state === "suspended") void context.resume().catch(() => undefined);
  return context;
}

export interface LevelMonitor {
  readonly track: MediaStreamTrack;
  /** Root mean square of the last ~40 ms, 0..1 (full scale). */
  rms(): number;
  /** The loudest rms() seen since the monitor started (sampled every 50 ms). */
  peak(): number;
  stop(): void;
}

/** Measure a track's level with an AnalyserNode (nothing is played through WebAudio). */
export function monitorTrack(track: MediaStreamTrack): LevelMonitor | null {
  const ctx = audioContext();
  if (!ctx) return null;
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  analyser.smoothingTimeConstant = 0;
  source.connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  let peak = 0;
  const rms = () => {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (let i = 0; i < buffer.length; i++) sum += buffer[i] * buffer[i];
    return Math.sqrt(sum / buffer.length);
  };
  const timer = window.setInterval(() => {
    peak = Math.max(peak, rms());
  }, 50);
  return {
    track,
    rms,
    peak: () => peak,
    stop() {
      window.clearInterval(timer);
      try {
        source.disconnect();
        analyser.disconnect();
      } catch {
        // already disconnected
      }
    },
  };
}

/** rms (0..1) to a meter position (0..1) on a dB scale from -60 dBFS. */
export function meterLevel(rms: number): number {
  if (rms <= 0) return 0;
  const db = 20 * Math.log10(rms);
  return Math.min(1, Math.max(0, (db + 60) / 60));
}

/**
 * Whether the browser lets the call's sound play without a click: the bot's `<audio>`
 * element (autoplay) and the level meters' AudioContext. After a reload the page has
 * had no click yet, and a browser may keep both paused until it gets one.
 */
export async function playbackAllowed(element: HTMLAudioElement | null): Promise<boolean> {
  const ctx = audioContext(); // asks the context to resume, if it is suspended
  const running =
    !ctx || ctx.state !== "suspended"
      ? Promise.resolve(true)
      : Promise.race([
          ctx.resume().then(
            () => true,
            () => false,
          ),
          // A browser that waits for a click never settles resume(): give up waiting.
          new Promise<boolean>((resolve) => window.setTimeout(() => resolve(ctx.state !== "suspended"), 500)),
        ]);
  let playing = true;
  if (element?.srcObject && element.paused) {
    try {
      await element.play();
    } catch (error) {
      playing = (error as { name?: string } | null)?.name !== "NotAllowedError";
    }
  }
  return playing && (await running);
}
