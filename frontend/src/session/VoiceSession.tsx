// The app's one voice call, for React: the CallMachine (call.ts) read with
// useSyncExternalStore, for the whole signed-in app (a call goes on while you look at
// History), and the bot's sound played by the Pipecat SDK once the call has a client.

import {
  createContext,
  lazy,
  Suspense,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import { CallMachine, type CallSnapshot } from "./call";

export { WEB_APP_TRANSPORTS, type Devices, type Phase, type StartOptions } from "./call";

type Verb =
  | "start"
  | "stop"
  | "clear"
  | "setMicEnabled"
  | "selectMic"
  | "selectSpeaker"
  | "sendText"
  | "connectionStats"
  | "resumePlayback"
  | "dismissProblem"
  | "reconnectEvents"
  | "localLevel"
  | "remoteLevel";

export type VoiceSessionApi = Omit<CallSnapshot, "client"> & { [V in Verb]: CallMachine[V] };

const VoiceSessionContext = createContext<VoiceSessionApi | null>(null);

// Comes with the SDK (pipecat.tsx), which the call's client has loaded by the time it renders.
const CallAudio = lazy(() => import("./pipecat").then((sdk) => ({ default: sdk.CallAudio })));

export function VoiceSessionProvider({ children }: { children: ReactNode }) {
  const audioBox = useRef<HTMLDivElement | null>(null);
  const [call] = useState(() => new CallMachine({ audioElement: () => audioBox.current?.querySelector("audio") ?? null }));
  const snapshot = useSyncExternalStore(call.subscribe, call.getSnapshot);

  useEffect(() => call.connectPage(), [call]);
  useEffect(() => {
    window.__voicepool = call.debugHandle();
  }, [call]);

  const value = useMemo(
    (): VoiceSessionApi => ({
      ...snapshot,
      start: call.start,
      stop: call.stop,
      clear: call.clear,
      setMicEnabled: call.setMicEnabled,
      selectMic: call.selectMic,
      selectSpeaker: call.selectSpeaker,
      sendText: call.sendText,
      connectionStats: call.connectionStats,
      resumePlayback: call.resumePlayback,
      dismissProblem: call.dismissProblem,
      reconnectEvents: call.reconnectEvents,
      localLevel: call.localLevel,
      remoteLevel: call.remoteLevel,
    }),
    [call, snapshot],
  );

  return (
    <>
      <VoiceSessionContext.Provider value={value}>{children}</VoiceSessionContext.Provider>
      <div ref={audioBox}>
        {snapshot.client ? (
          <Suspense fallback={null}>
            <CallAudio client={snapshot.client} />
          </Suspense>
        ) : null}
      </div>
    </>
  );
}

export function useVoiceSession(): VoiceSessionApi {
  const value = useContext(VoiceSessionContext);
  if (!value) throw new Error("useVoiceSession outside VoiceSessionProvider");
  return value;
}
