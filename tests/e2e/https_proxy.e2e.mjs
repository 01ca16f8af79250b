// The web app over HTTPS through Caddy (deploy/Caddyfile), as a browser on another
// machine sees it: a secure context, so the microphone is given; an echo call over
// WebRTC; its events streamed through the proxy; a Secure session cookie.
//
// Run by tests/e2e/test_https_proxy.py, which starts the system and Caddy and passes:
//   SITE_URL      https://voicepool.test:PORT/ (the name is mapped to 127.0.0.1 here)
//   USER_TOKEN    a user who talks to the echo bot
//   FIXTURE_WAV   absolute path of the WAV Chromium's fake microphone plays (looped)
//   ARTIFACTS_DIR where the failure screenshot goes
//   CHROMIUM      the browser, default /usr/bin/chromium
//   HOME          a home whose NSS database (~/.pki/nssdb) trusts Caddy's internal
//                 CA, the way a user trusts it: no certificate error is ignored
// Exits non-zero on the first failed step, after a screenshot of the page.

import { mkdirSync } from "node:fs";
import path from "node:path";

import { ROOT, chromium, chromiumArgs, elapsed, env, note, observations, step, waitFor } from "./browser.mjs";
const SITE_URL = new URL(env("SITE_URL"));
const USER_TOKEN = env("USER_TOKEN");
const FIXTURE_WAV = path.resolve(env("FIXTURE_WAV"));
const ARTIFACTS = path.resolve(env("ARTIFACTS_DIR", path.join(ROOT, "tests", "artifacts")));
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const MIN_BOT_RMS = 0.01; // the fixture's speech is ~0.03-0.05 RMS; silence ~0

mkdirSync(ARTIFACTS, { recursive: true });
const problems = [];

const voiceState = (page) => page.evaluate(() => window.__voicepool?.state() ?? null);

// The site's name resolves to this machine, as a LAN name would to the server.
const args = chromiumArgs(FIXTURE_WAV, `--host-resolver-rules=MAP ${SITE_URL.hostname} 127.0.0.1`);

let browser;
let page;
let exitCode = 0;
try {
  browser = await step("launch Chromium", () =>
    chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 30000 }),
  );
  // No ignoreHTTPSErrors: the certificate must be trusted through the NSS database.
  const context = await browser.newContext({ permissions: ["microphone"] });
  context.setDefaultTimeout(10000);
  page = await context.newPage();
  page.on("console", (msg) => {
    // Before signing in, /api/me answers 401, which Chrome logs as an error.
    if (msg.type() === "error" && !/status of 401/.test(msg.text())) problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("requestfailed", (request) => {
    const failure = request.failure()?.errorText ?? "";
    if (!failure.includes("ERR_ABORTED")) problems.push(`request failed: ${request.url()} ${failure}`);
  });

  await step("the site opens over HTTPS with a trusted certificate, as a secure context", async () => {
    const response = await page.goto(SITE_URL.href);
    if (!response?.ok()) throw new Error(`GET / answered ${response?.status()}`);
    const security = await response.securityDetails();
    note("certificate", { issuer: security?.issuer, subject: security?.subjectName, protocol: security?.protocol });
    const secure = await page.evaluate(() => ({ isSecureContext: window.isSecureContext, protocol: location.protocol }));
    note("page", secure);
    if (secure.isSecureContext !== true || secure.protocol !== "https:") throw new Error("not a secure context");
  });

  await step("the microphone is given (getUserMedia)", async () => {
    const tracks = await page.evaluate(async () => {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const labels = stream.getAudioTracks().map((t) => t.label);
      for (const track of stream.getTracks()) track.stop();
      return labels;
    });
    note("audio tracks", tracks);
    if (tracks.length !== 1) throw new Error(`${tracks.length} audio tracks`);
  });

  await step("sign in: the session cookie is HttpOnly and Secure (the API saw https)", async () => {
    await page.getByLabel("Access token").fill(USER_TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByTestId("sign-out").waitFor();
    const cookie = (await context.cookies()).find((c) => c.name === "voicepool_session");
    note("session cookie", cookie && { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite });
    if (!cookie?.httpOnly || !cookie.secure) throw new Error("the session cookie is not HttpOnly and Secure");
  });

  await step("an echo call over WebRTC connects, and the echo comes back", async () => {
    await page.getByLabel("Profile").selectOption("echo");
    await page.getByLabel("Transport").selectOption("webrtc");
    await page.getByTestId("start").click();
    await waitFor(
      "connected",
      async () => {
        if (await page.getByTestId("problem").count()) {
          throw new Error(`the page shows a problem: ${await page.getByTestId("problem").first().innerText()}`);
        }
        return (await page.getByTestId("step-connected").getAttribute("data-reached")) === "true";
      },
      { timeout: 20000, interval: 50 },
    );
    await waitFor("the bot's ready message (RTVI)", async () => (await voiceState(page))?.botReady);
    const peak = await waitFor(
      `bot audio above RMS ${MIN_BOT_RMS}`,
      async () => {
        const v = await page.evaluate(() => window.__voicepool.remotePeakRms());
        return v > MIN_BOT_RMS ? v : null;
      },
      { timeout: 25000 },
    );
    note("peak RMS, bot", peak.toFixed(4));
  });

  await step("the call's events stream through the proxy (SSE) and show on the page", async () => {
    await waitFor(
      "'You spoke' and 'Bot replied' in the transcript",
      async () =>
        (await page.locator('[data-kind="user-turn"]', { hasText: "You spoke" }).count()) > 0 &&
        (await page.locator('[data-kind="bot-turn"]', { hasText: "Bot replied" }).count()) > 0,
      { timeout: 25000 },
    );
    const state = await voiceState(page);
    note("event stream", { status: state.streamStatus, events: state.events, lastSeq: state.lastSeq });
    if (state.streamStatus !== "open") throw new Error(`the event stream is ${state.streamStatus}`);
    if (state.events !== state.lastSeq) throw new Error(`lost events: ${state.events} of ${state.lastSeq}`);
  });

  await step("stop: the call ends (the end comes back as an event)", async () => {
    await page.getByTestId("stop").click();
    await waitFor("it to end", async () => (await voiceState(page)).status === "ended", { timeout: 10000 });
    const state = await voiceState(page);
    if (state.reason !== "client_ended") throw new Error(`reason ${state.reason}`);
  });

  await step("no console errors, page errors or failed requests", async () => {
    if (problems.length) throw new Error(problems.join("\n"));
  });
  console.log(`passed in ${elapsed()} s`);
  console.log(`OBSERVATIONS ${JSON.stringify(observations)}`);
} catch (error) {
  exitCode = 1;
  console.log(`FAILED at "${error.step ?? "?"}": ${error.stack ?? error}`);
  if (problems.length) console.log(`browser problems:\n  ${problems.join("\n  ")}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, "failure-https-proxy.png"), fullPage: true });
      console.log(`screenshot: ${path.join(ARTIFACTS, "failure-https-proxy.png")}`);
    } catch {
      // the page may be gone
    }
  }
} finally {
  await browser?.close().catch(() => undefined);
}
process.exit(exitCode);
