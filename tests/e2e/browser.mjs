// What the browser tests share: Playwright from the web app's packages, Debian's Chromium
// with a fake microphone, and steps that say what they did and how long it took.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
// playwright-core (and axe-core) are dev dependencies of the frontend: resolve them there.
export const frontendRequire = createRequire(path.join(ROOT, "frontend", "package.json"));
export const { chromium } = frontendRequire("playwright-core");

export const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`set ${name}`);
  return value;
};

const t0 = Date.now();
export const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
export const observations = {};

export function note(key, value) {
  observations[key] = value;
  console.log(`  · ${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`);
}

export async function step(name, fn) {
  const started = Date.now();
  try {
    const result = await fn();
    console.log(`✓ ${name} (${((Date.now() - started) / 1000).toFixed(1)} s, at ${elapsed()} s)`);
    return result;
  } catch (error) {
    console.log(`✗ ${name} (after ${((Date.now() - started) / 1000).toFixed(1)} s)`);
    throw Object.assign(error instanceof Error ? error : new Error(String(error)), { step: name });
  }
}

export async function waitFor(what, check, { timeout = 15000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Chromium's flags: headless on this closed network, the microphone granted and fed
 * `fixtureWav` (looped); `extra` after them. */
export const chromiumArgs = (fixtureWav, ...extra) => [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${fixtureWav}`,
  ...extra,
];
