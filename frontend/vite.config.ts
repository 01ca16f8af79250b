/// <reference types="vitest/config" />
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig, type Plugin } from "vite";

// `npm run dev` serves the app with hot reload and forwards /api to the API
// (`make dev` runs it on 127.0.0.1:8000; override with VOICEPOOL_API_URL).
const api = process.env.VOICEPOOL_API_URL ?? "http://127.0.0.1:8000";

// @pipecat-ai/small-webrtc-transport imports daily-js (~260 kB) for its default media
// manager only (DailyMediaManager), and we always pass it our own (src/session/mediaManager.ts):
// the build gives it a stub instead, which says so if it is ever called. The Daily transport
// still gets the real daily-js. (Build only: the dev server pre-bundles dependencies apart.)
function noDailyInSmallWebRTC(): Plugin {
  const stub = fileURLToPath(new URL("./src/session/noDaily.ts", import.meta.url));
  return {
    name: "voicepool:no-daily-in-small-webrtc",
    apply: "build",
    enforce: "pre",
    resolveId(source, importer) {
      const fromSmallWebRTC = importer?.replaceAll("\\", "/").includes("/@pipecat-ai/small-webrtc-transport/");
      return source === "@daily-co/daily-js" && fromSmallWebRTC ? stub : null;
    },
  };
}

export default defineConfig({
  plugins: [react(), noDailyInSmallWebRTC()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The app ~340 kB; the Pipecat SDK, loaded with a call, ~200 kB; the Daily transport with
    // daily-js, loaded for a Daily call only, ~300 kB. Over 400 kB: the SDK (or daily-js) has
    // crept back into a chunk every page or every call loads.
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: { "/api": { target: api } },
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    restoreMocks: true,
  },
});
