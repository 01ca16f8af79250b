/// <reference types="vitest/config" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// `npm run dev` serves the app with hot reload and forwards /api to the API
// (`make dev` runs it on 127.0.0.1:8000; override with VOICEPOOL_API_URL).
const api = process.env.VOICEPOOL_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The SDK bundles daily-js (used only by the Daily transport): one big chunk is expected.
    chunkSizeWarningLimit: 1500,
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
