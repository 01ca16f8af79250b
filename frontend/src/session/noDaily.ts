// Stands in for @daily-co/daily-js inside @pipecat-ai/small-webrtc-transport in the build
// (see vite.config.ts): the transport needs daily-js only for its default media manager,
// and we always pass it ours (mediaManager.ts).

function notBundled(): never {
  throw new Error(
    "daily-js is not bundled with SmallWebRTCTransport: give the transport a mediaManager (see mediaManager.ts)",
  );
}

export default { getCallInstance: notBundled, createCallObject: notBundled };
