// Everything that needs the Pipecat SDK, loaded when a call first needs a client (call.ts),
// so pages without a call never load it. The Daily transport (with daily-js) is loaded
// only for a Daily session.

import { LogLevel, PipecatClient, type RTVIEventCallbacks, type Transport } from "@pipecat-ai/client-js";
import { PipecatClientAudio, PipecatClientProvider } from "@pipecat-ai/client-react";
import { SmallWebRTCTransport } from "@pipecat-ai/small-webrtc-transport";
import { audioTransceiver, type CallClient } from "./call";
import { BrowserMediaManager } from "./mediaManager";
import type { MediaKind } from "./reconnect";

export async function createCallClient(kind: MediaKind, callbacks: RTVIEventCallbacks): Promise<CallClient> {
  if (kind === "daily") {
    const { DailyTransport } = await import("@pipecat-ai/daily-transport");
    return { kind, client: pipecatClient(new DailyTransport(), callbacks), media: null };
  }
  // Our media manager: the transport's default one drives the mic through daily-js
  // (see mediaManager.ts). A microphone switched mid-call goes onto the call's connection.
  const media = new BrowserMediaManager(async (track) => {
    await audioTransceiver(transport)?.sender.replaceTrack(track);
  });
  const transport = new SmallWebRTCTransport({ mediaManager: media });
  return { kind, client: pipecatClient(transport, callbacks), media };
}

function pipecatClient(transport: Transport, callbacks: RTVIEventCallbacks): PipecatClient {
  const client = new PipecatClient({ transport, enableMic: true, enableCam: false, callbacks });
  client.setLogLevel(LogLevel.WARN);
  return client;
}

/** The bot's sound: the SDK's `<audio>` element (autoplay), following the client's bot track. */
export function CallAudio({ client }: { client: PipecatClient }) {
  return (
    <PipecatClientProvider client={client}>
      <PipecatClientAudio />
    </PipecatClientProvider>
  );
}
