// End to end: the built web app in headless Chromium against a running voicepool.
//
// Run by tests/e2e/test_web_app.py, which starts the system and passes:
//   BASE_URL      the API (which serves frontend/dist at /)
//   USER_TOKEN    a user who talks to the echo bot
//   OTHER_TOKEN   another user, who must not see the first one's conversation
//   ADMIN_TOKEN   (optional) an administrator, for the Operators page
//   ASSISTANT     (optional) "1" when the `assistant` profile runs against the model
//                 double (harness/doubles/openai_realtime.py) with the send_to_nested tool
//   SCENARIO      "main" (default): everything above; "model-down": the `assistant`
//                 profile's model is unreachable, and a session with it must fail and
//                 say so in plain words; "reload": an echo call survives a reload of
//                 the page (the same session goes on, its transcript kept)
//   FIXTURE_WAV   absolute path of the WAV Chromium's fake microphone plays (looped)
//   ARTIFACTS_DIR where screenshots go
//   GRAFANA_URL   (optional) the server's VOICEPOOL_GRAFANA_URL: Operators must link to it
//   CHROMIUM      (optional) the browser, default /usr/bin/chromium
// Exits non-zero on the first failed step, after a screenshot of the page.

import { mkdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";

import {
  ROOT,
  chromium,
  chromiumArgs,
  elapsed,
  env,
  frontendRequire,
  note,
  observations,
  step,
  waitFor,
} from "./browser.mjs";
const API_URL = new URL(env("BASE_URL"));
const USER_TOKEN = env("USER_TOKEN");
const OTHER_TOKEN = env("OTHER_TOKEN");
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || "";
const FIXTURE_WAV = path.resolve(env("FIXTURE_WAV"));
const ARTIFACTS = path.resolve(env("ARTIFACTS_DIR", path.join(ROOT, "tests", "artifacts")));
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const SCENARIO = env("SCENARIO", "main");
const ASSISTANT = process.env.ASSISTANT === "1";

// The fixture's speech is ~0.03-0.05 RMS (full scale 1.0); silence is ~0.
const MIN_BOT_RMS = 0.01;

mkdirSync(ARTIFACTS, { recursive: true });

// The browser reaches the API through this TCP relay, so a step can cut every
// connection at once, as a network blip would (the WebRTC media, browser ↔
// worker, does not pass through it).
async function startRelay(target) {
  const sockets = new Set();
  const server = net.createServer((downstream) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const [a, b] of [
      [downstream, upstream],
      [upstream, downstream],
    ]) {
      sockets.add(a);
      a.on("error", () => b.destroy());
      a.on("close", () => {
        sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      const n = sockets.size;
      for (const socket of sockets) socket.destroy();
      return n;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
const relay = await startRelay(API_URL);
const BASE_URL = relay.url;
const problems = []; // console errors, page errors, failed requests

// Chrome logs every 4xx answer as a console error ("Failed to load resource"). These
// are expected: /api/me before signing in (401), and the other user's look at the
// conversation (404). Anything else is a problem.
const EXPECTED_HTTP_ERRORS = [
  { status: 401, path: /^\/api\/me$/ },
  { status: 404, path: /^\/api\/conversations\/[0-9a-f]+$/, label: "other" },
];
// Added for one step at a time (e.g. an offer refused because the session failed meanwhile).
let expectedForStep = [];

// While a step cuts the connections on purpose, the event stream's request fails: expected.
let blipping = false;
const isBlipFailure = (url, text) =>
  blipping && /\/api\/sessions\/[0-9a-f]+\/events/.test(url) && /ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_RESET|EMPTY_RESPONSE)/.test(text);

function watch(page, label) {
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    if (isBlipFailure(msg.location().url ?? "", msg.text())) return;
    const http = /status of (\d+)/.exec(msg.text());
    if (http && msg.text().startsWith("Failed to load resource")) {
      const where = new URL(msg.location().url || BASE_URL);
      const expected = [...EXPECTED_HTTP_ERRORS, ...expectedForStep].some(
        (e) => e.status === Number(http[1]) && e.path.test(where.pathname) && (!e.label || e.label === label),
      );
      if (expected) return;
      problems.push(`[${label}] console error: ${msg.text()} (${where.pathname})`);
      return;
    }
    problems.push(`[${label}] console error: ${msg.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`[${label}] page error: ${error.message}`));
  page.on("requestfailed", (request) => {
    const failure = request.failure()?.errorText ?? "";
    // Requests we cut ourselves (EventSource closed, downloads aborted) are not problems.
    if (failure.includes("ERR_ABORTED") || isBlipFailure(request.url(), failure)) return;
    problems.push(`[${label}] request failed: ${request.method()} ${request.url()} ${failure}`);
  });
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true });

// axe-core, run in the page through the DevTools protocol (page.evaluate is not held to the
// page's CSP, which rightly refuses injected scripts). Every page and state the steps
// visit is checked against WCAG 2.1 AA; a violation fails the step.
const AXE_SOURCE = readFileSync(frontendRequire.resolve("axe-core/axe.min.js"), "utf8");
const a11yChecked = [];
async function a11y(page, what) {
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, {
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
      resultTypes: ["violations"],
    });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`);
  });
  if (violations.length) throw new Error(`axe-core, ${what}:\n  ${violations.join("\n  ")}`);
  a11yChecked.push(what);
}
const voiceState = (page) => page.evaluate(() => window.__voicepool?.state() ?? null);

async function signIn(page, token, label) {
  await page.goto(`${BASE_URL}/`);
  await page.getByLabel("Access token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("sign-out").waitFor({ timeout: 10000 });
  note(`${label} signed in as`, (await page.getByTestId("user-name").innerText()).trim());
}

const args = chromiumArgs(FIXTURE_WAV);

let browser;
let current; // the page a failure screenshot is taken of
let exitCode = 0;
try {
  // launch() starts Chromium with a fresh --user-data-dir of its own (removed on close);
  // each user below gets a fresh context (own cookies) in it.
  browser = await step("launch Chromium", () =>
    chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 30000 }),
  );
  note("browser", `${CHROMIUM} ${browser.version()}`);

  if (SCENARIO === "model-down") await modelDown(browser);
  else if (SCENARIO === "no-workers") await noWorkers(browser);
  else if (SCENARIO === "reload") await reload(browser);
  else await main(browser);

  await step("no console errors, page errors or failed requests", async () => {
    if (problems.length) throw new Error(problems.join("\n"));
  });
  note("axe-core: pages and states with no violation", a11yChecked);
  console.log(`passed in ${elapsed()} s`);
  console.log(`OBSERVATIONS ${JSON.stringify(observations)}`);
} catch (error) {
  exitCode = 1;
  console.log(`FAILED at "${error.step ?? "?"}": ${error.stack ?? error}`);
  if (problems.length) console.log(`browser problems:\n  ${problems.join("\n  ")}`);
  if (current) {
    try {
      console.log(`state: ${JSON.stringify(await voiceState(current))}`);
      await shot(current, `failure-${SCENARIO}.png`);
      console.log(`screenshot: ${path.join(ARTIFACTS, `failure-${SCENARIO}.png`)}`);
    } catch {
      // the page may be gone
    }
  }
} finally {
  await browser?.close().catch(() => undefined);
  relay.cut();
  await relay.close();
}
process.exit(exitCode);

async function main(browser) {
  // --- the first user: sign in, talk to the echo bot, stop ----------------------------------
  const context = await browser.newContext({
    baseURL: BASE_URL,
    permissions: ["microphone"],
    viewport: { width: 1100, height: 900 },
  });
  context.setDefaultTimeout(10000);
  const page = (current = await context.newPage());
  watch(page, "user");

  await step("sign-in page", async () => {
    await page.goto(`${BASE_URL}/`);
    await page.getByRole("heading", { name: "Sign in to voicepool" }).waitFor();
    await shot(page, "01-sign-in.png");
    await a11y(page, "01-sign-in");
  });

  await step("sign in with a token", async () => {
    await signIn(page, USER_TOKEN, "user");
    if (await page.getByRole("link", { name: "Operators" }).count()) {
      throw new Error("a regular user sees the Operators link");
    }
  });

  await step("keyboard reaches Start", async () => {
    await page.getByTestId("start").waitFor();
    await page.locator("body").focus();
    for (let i = 0; i < 20; i++) {
      await page.keyboard.press("Tab");
      if (await page.evaluate(() => document.activeElement?.getAttribute("data-testid") === "start")) return;
    }
    throw new Error("Tab never reached the Start button");
  });

  let conversationId;
  let sessionId;
  await step("start an echo session over SmallWebRTC, through connected", async () => {
    await page.getByLabel("Profile").selectOption("echo");
    await page.getByLabel("Transport").selectOption("webrtc");
    const clicked = Date.now();
    await page.getByTestId("start").click();
    const seen = {};
    await waitFor(
      "the states queued → starting → ready → connected",
      async () => {
        for (const state of ["queued", "starting", "ready", "connected"]) {
          if (!seen[state] && (await page.getByTestId(`step-${state}`).getAttribute("data-reached")) === "true") {
            seen[state] = Date.now() - clicked;
          }
        }
        const problem = await page.getByTestId("problem").count();
        if (problem) throw new Error(`the page shows a problem: ${await page.getByTestId("problem").first().innerText()}`);
        return seen.connected !== undefined && Object.keys(seen).length === 4;
      },
      { timeout: 20000, interval: 50 },
    );
    note("ms from Start to each state (as shown)", seen);
    await waitFor("the bot's ready message (RTVI)", async () => (await voiceState(page))?.botReady, { timeout: 10000 });
    const state = await voiceState(page);
    conversationId = state.conversationId;
    sessionId = state.sessionId;
    note("session", { sessionId, conversationId, transport: state.transport });
  });

  await step("the user's turn and the bot's reply show up, with speaking lights", async () => {
    let userLight = false;
    let botLight = false;
    await waitFor(
      "a finished user turn and a bot reply in the transcript",
      async () => {
        userLight ||= (await page.getByTestId("user-level").getAttribute("data-speaking")) === "true";
        botLight ||= (await page.getByTestId("bot-level").getAttribute("data-speaking")) === "true";
        const spoke = await page.locator('[data-kind="user-turn"]', { hasText: "You spoke" }).count();
        const replied = await page.locator('[data-kind="bot-turn"]', { hasText: "Bot replied" }).count();
        return spoke > 0 && replied > 0 && userLight && botLight;
      },
      { timeout: 25000, interval: 50 },
    );
    note("first user turn", await page.locator('[data-kind="user-turn"]').first().innerText());
    note("first bot turn", await page.locator('[data-kind="bot-turn"]').first().innerText());
  });

  await step("the bot's remote audio is not silent (WebAudio AnalyserNode in the page)", async () => {
    const levels = await waitFor(
      `bot audio above RMS ${MIN_BOT_RMS}`,
      async () => {
        const v = await page.evaluate(() => ({
          remotePeak: window.__voicepool.remotePeakRms(),
          localPeak: window.__voicepool.localPeakRms(),
        }));
        return v.remotePeak > MIN_BOT_RMS ? v : null;
      },
      { timeout: 10000 },
    );
    note("peak RMS, bot (remote track)", levels.remotePeak.toFixed(4));
    note("peak RMS, microphone (fake capture)", levels.localPeak.toFixed(4));
    if (levels.localPeak <= MIN_BOT_RMS) throw new Error("the microphone's level stayed near silence");
    await shot(page, "02-talk-connected.png");
    await a11y(page, "02-talk-connected");
  });

  await step("the event stream resumes after a network blip (EventSource's Last-Event-ID)", async () => {
    const before = await voiceState(page);
    blipping = true;
    const cut = relay.cut();
    const blipped = Date.now();
    await waitFor("the page to notice", async () => (await voiceState(page)).streamStatus === "reconnecting", { timeout: 5000, interval: 20 });
    await waitFor("the stream to reopen", async () => (await voiceState(page)).streamStatus === "open", { timeout: 10000, interval: 50 });
    const reopenedMs = Date.now() - blipped;
    blipping = false;
    // The fixture loops, so more turns follow: wait for events from after the blip.
    await waitFor("events after the blip", async () => (await voiceState(page)).lastSeq > before.lastSeq, { timeout: 15000 });
    const after = await voiceState(page);
    if (after.events !== after.lastSeq) throw new Error(`lost events: ${after.events} of ${after.lastSeq}`);
    note("network blip", { connectionsCut: cut, reopenedMs, lastSeqBefore: before.lastSeq, lastSeqAfter: after.lastSeq, duplicatesDropped: after.duplicates });
  });

  await step("the event stream resumes after the browser gave up (?after=<last id>)", async () => {
    const before = await voiceState(page);
    await page.evaluate(() => window.__voicepool.interruptEvents());
    await waitFor("the stream to reopen", async () => (await voiceState(page)).streamStatus === "open", { timeout: 10000, interval: 50 });
    await waitFor("events after the reopen", async () => (await voiceState(page)).lastSeq > before.lastSeq, { timeout: 15000 });
    const after = await voiceState(page);
    if (after.events !== after.lastSeq) throw new Error(`lost events: ${after.events} of ${after.lastSeq}`);
    note("manual resume", { lastSeqBefore: before.lastSeq, lastSeqAfter: after.lastSeq, duplicatesDropped: after.duplicates });
  });

  let liveTurns;
  await step("the call at a glance: the bot's state, the call's time, its response time", async () => {
    const info = page.getByTestId("call-info");
    await info.waitFor();
    const first = await page.getByTestId("call-time").innerText();
    await waitFor("the call time to move", async () => (await page.getByTestId("call-time").innerText()) !== first, { timeout: 3000 });
    await waitFor("a response time (turn end to reply start)", async () => (await page.getByTestId("response-time").innerText()) !== "—");
    const states = new Set();
    await waitFor(
      "the bot seen speaking and listening",
      async () => {
        states.add(await page.getByTestId("agent-state").getAttribute("data-state"));
        return states.has("speaking") && states.has("listening");
      },
      { timeout: 15000, interval: 50 },
    );
    const quality = page.getByTestId("connection-quality");
    await quality.waitFor({ timeout: 5000 });
    // Which label depends on how busy this machine is (jitter): that there is a reading is the test.
    const reading = await quality.innerText();
    if (!["good", "fair", "poor"].includes(await quality.getAttribute("data-quality")) || !/\d+ ms round trip/.test(reading)) {
      throw new Error(`connection quality: ${reading}`);
    }
    note("call at a glance", { states: [...states], text: (await info.innerText()).replace(/\s+/g, " ") });
  });

  await step("keyboard: M mutes and unmutes; push to talk holds the mic open only while Space is down", async () => {
    await page.locator("body").press("m");
    await waitFor("the mic to show muted", async () => (await page.getByTestId("mute").getAttribute("aria-pressed")) === "true");
    await page.getByTestId("agent-state").filter({ hasText: "Muted" }).waitFor();
    await page.locator("body").press("m");
    await waitFor("unmuted", async () => (await page.getByTestId("mute").getAttribute("aria-pressed")) === "false");
    await page.getByTestId("push-to-talk").check();
    const hold = page.getByTestId("hold-to-talk");
    await waitFor("the mic off until held", async () => (await hold.getAttribute("aria-pressed")) === "false");
    const track = () => page.evaluate(() => window.__voicepool.localTrackEnabled());
    await waitFor("the mic track off", async () => (await track()) === false);
    await page.locator("body").focus();
    await page.keyboard.down(" ");
    await waitFor("the mic track on while Space is held", async () => (await track()) === true);
    await page.keyboard.up(" ");
    await waitFor("the mic track off again", async () => (await track()) === false);
    await page.getByTestId("push-to-talk").uncheck();
    await waitFor("the mic back on", async () => (await track()) === true);
    await shot(page, "13-talk-controls.png");
    await a11y(page, "13-talk-controls");
  });

  await step("switch the microphone mid-call: the new one is sent, the echo still comes back", async () => {
    const picker = page.getByTestId("mic-picker");
    await picker.waitFor();
    const options = await picker.locator("option").evaluateAll((os) => os.map((o) => ({ value: o.value, label: o.textContent })));
    note("microphones", options.map((o) => o.label));
    const before = await page.evaluate(() => window.__voicepool.sentAudioTrack());
    const other = options.find((o) => o.value && o.value !== "default" && o.label !== before?.label) ?? options[options.length - 1];
    await picker.selectOption(other.value);
    const after = await waitFor("another track sent", async () => {
      const now = await page.evaluate(() => window.__voicepool.sentAudioTrack());
      return now && now.id !== before?.id ? now : null;
    });
    note("sent microphone", { before: before?.label, after: after.label });
    const turns = await page.locator('[data-kind="bot-turn"]').count();
    await waitFor("a bot reply to the new microphone", async () => (await page.locator('[data-kind="bot-turn"]').count()) > turns, { timeout: 15000 });
    // Back to the default microphone (the fixture's words) for the calls after this one:
    // the page keeps the choice.
    await picker.selectOption(before ? options.find((o) => o.label === before.label).value : options[0].value);
    await waitFor("the default microphone sent again", async () => {
      const now = await page.evaluate(() => window.__voicepool.sentAudioTrack());
      return now && now.id !== after.id;
    });
  });

  await step("mute, then stop", async () => {
    await page.getByTestId("mute").click();
    await waitFor("the mic to show muted", async () => (await page.getByTestId("mute").getAttribute("aria-pressed")) === "true");
    await page.getByTestId("mute").click();
    const clicked = Date.now();
    await page.getByTestId("stop").click();
    await waitFor(
      "the session to end",
      async () => (await page.getByTestId("session-status").getAttribute("data-status")) === "ended",
      { timeout: 10000 },
    );
    note("ms from Stop to ended", Date.now() - clicked);
    // "Ending the session…" until Stop's own request returns, which may be after the event.
    const status = await waitFor("the end in words", async () => {
      const text = await page.getByTestId("session-status").innerText();
      return text.includes("Ending the session") ? null : text;
    });
    if (!status.includes("You ended the session")) throw new Error(`unexpected end: ${status}`);
    const state = await voiceState(page);
    if (state.reason !== "client_ended") throw new Error(`reason ${state.reason}`);
    await waitFor("the transport to disconnect", async () => (await voiceState(page)).transport === "disconnected", { timeout: 5000 });
    liveTurns = {
      user: await page.locator('[data-kind="user-turn"]').count(),
      bot: await page.locator('[data-kind="bot-turn"]').count(),
      events: state.events,
      lastSeq: state.lastSeq,
    };
    if (state.events !== state.lastSeq) throw new Error(`events ${state.events} but last seq ${state.lastSeq}: a gap`);
    note("turn lines on the Talk page", liveTurns);
  });

  await step("the event log lists the call's events, filtered by type", async () => {
    const log = page.getByTestId("event-log");
    await log.locator("summary").click();
    await page.getByTestId("event-log-filter").fill("session.state");
    // The answer to Stop may come before the stream's own final event, which the page
    // still waits for: the log ends with it once it is there.
    await waitFor("the end in the event log", async () => (await log.locator("li").last().innerText()).includes("state=ended"), { timeout: 5000 });
    const states = await log.locator("li").evaluateAll((lis) => lis.map((li) => li.getAttribute("data-type")));
    if (!states.length || states.some((t) => t !== "session.state")) throw new Error(`filtered rows: ${states}`);
    note("event log rows (session.state)", states.length);
    await a11y(page, "event log open");
  });

  await step("History lists the conversation", async () => {
    await page.getByRole("link", { name: "History", exact: true }).click();
    const row = page.locator(`[data-conversation-id="${conversationId}"]`);
    await row.waitFor({ timeout: 10000 });
    note("History row", (await row.innerText()).replace(/\s+/g, " "));
    const title = await row.getByRole("link").innerText();
    if (!title.startsWith("Echo test, ")) throw new Error(`the echo call's title: ${title}`);
    await shot(page, "03-history.png");
    await a11y(page, "03-history");
    await row.getByRole("link").click();
  });

  await step("the conversation shows the same turns, and exports", async () => {
    await page.getByTestId("conversation-session").first().waitFor();
    // The persister stores asynchronously: reload until every event is in.
    const stored = await waitFor(
      "all events stored",
      async () => {
        const users = await page.locator('[data-kind="user-turn"]').count();
        const bots = await page.locator('[data-kind="bot-turn"]').count();
        if (users === liveTurns.user && bots === liveTurns.bot && (await page.locator('[data-kind="status"]').count()) === 1) {
          return { users, bots };
        }
        await page.reload();
        await page.getByTestId("conversation-session").first().waitFor();
        return null;
      },
      { timeout: 10000, interval: 300 },
    );
    note("turn lines in History", stored);
    await page.locator('[data-kind="user-turn"]', { hasText: "You spoke" }).first().waitFor();
    await page.locator('[data-kind="bot-turn"]', { hasText: "Bot replied" }).first().waitFor();
    const md = await page.request.get(await page.getByTestId("export-md").getAttribute("href"));
    const text = await md.text();
    if (!md.ok() || !text.includes("User spoke for") || !text.includes("Bot spoke for")) {
      throw new Error(`Markdown export: ${md.status()} ${text.slice(0, 200)}`);
    }
    const json = await page.request.get(await page.getByTestId("export-json").getAttribute("href"));
    if (!json.ok() || (await json.json()).conversation_id !== conversationId) throw new Error("JSON export");
    await shot(page, "04-conversation.png");
    await a11y(page, "04-conversation");
  });

  await step("continue the conversation from History", async () => {
    await page.getByTestId("continue").click();
    await page.getByText("Continuing conversation").waitFor();
    await page.getByTestId("start").click();
    await waitFor("the new session to connect", async () => (await voiceState(page))?.status === "connected", { timeout: 20000 });
    await page.getByText("Earlier in this conversation").waitFor();
    const state = await voiceState(page);
    if (state.conversationId !== conversationId) throw new Error(`new conversation ${state.conversationId}`);
    if (state.sessionId === sessionId) throw new Error("same session");
    await page.getByTestId("stop").click();
    await waitFor("it to end", async () => (await voiceState(page)).status === "ended", { timeout: 10000 });
    const detail = await (await page.request.get(`${BASE_URL}/api/conversations/${conversationId}`)).json();
    note("sessions in the conversation", detail.sessions.length);
    if (detail.sessions.length !== 2) throw new Error(`${detail.sessions.length} sessions`);
  });

  if (ASSISTANT) {
    await step("the assistant: transcript lines and a tool call card", async () => {
      await page.getByRole("link", { name: "Talk", exact: true }).click();
      await page.getByLabel("Profile").selectOption("assistant");
      await page.getByTestId("start").click();
      await waitFor("the session to connect", async () => (await voiceState(page))?.status === "connected", { timeout: 20000 });
      const asked = page.locator('[data-kind="user"]', { hasText: "find flights to Oslo" }).first();
      await asked.waitFor({ timeout: 20000 });
      // The fake microphone loops: mute it so the answer is not interrupted by the next round.
      await page.getByTestId("mute").click();
      const card = page.getByTestId("tool-card").first();
      await card.locator(".tag-completed").waitFor({ timeout: 20000 });
      await card.locator("summary").click();
      for (const text of ["Planning", "Searching", "find flights to Oslo"]) {
        await card.getByText(text).first().waitFor();
      }
      note("tool card", (await card.innerText()).replace(/\s+/g, " "));
      const answer = page.locator('[data-kind="assistant"]', { hasText: "The team found three flights." });
      await answer.first().waitFor({ timeout: 40000 }); // a cold machine's first model turn is slow
      note(
        "transcript lines",
        await page.locator("[data-testid=transcript] > li").evaluateAll((lis) =>
          lis.map((li) => `${li.getAttribute("data-kind")}: ${li.innerText.replace(/\s+/g, " ").slice(0, 60)}`),
        ),
      );
      const kinds = await page.locator("[data-testid=transcript] > li").evaluateAll((lis) => lis.map((li) => li.getAttribute("data-kind")));
      if (!(kinds.indexOf("user") >= 0 && kinds.indexOf("user") < kinds.indexOf("tool"))) {
        throw new Error(`the words that asked for the tool are not above its card: ${kinds}`);
      }
      await answer.first().locator(".who", { hasText: "Archie" }).waitFor(); // its configured name
      if ((await card.innerText()).includes("send_to_nested")) throw new Error("the card shows the tool's raw name");
      const peak = await page.evaluate(() => window.__voicepool.remotePeakRms());
      note("peak RMS, assistant audio", peak.toFixed(4));
      if (peak <= MIN_BOT_RMS) throw new Error("the assistant's audio was silent");
      // Typing instead of speaking: the words go to the model as the user's, and it answers.
      await page.getByTestId("type-to-text").fill("book a table for two");
      await page.getByTestId("type-to-send").click();
      await page.locator('[data-kind="user"][data-typed]', { hasText: "book a table for two" }).waitFor({ timeout: 10000 });
      await page.locator('[data-kind="assistant"]', { hasText: "You wrote: book a table for two" }).waitFor({ timeout: 20000 });
      await shot(page, "05-talk-assistant.png");
      await a11y(page, "05-talk-assistant");
      await page.getByTestId("stop").click();
      await waitFor("it to end", async () => (await voiceState(page)).status === "ended", { timeout: 10000 });
    });

    await step("History finds the conversation by what was said (server-side full-text search)", async () => {
      await page.getByRole("link", { name: "History", exact: true }).click();
      const assistantId = (await voiceState(page)).conversationId;
      await page.getByTestId("history-search").fill("oslo FLIGHT");
      await page.getByRole("button", { name: "Search" }).click();
      // The persister stores asynchronously: the conversation may be found by its title
      // before the line that says "Oslo" is stored. Search again until that line is in.
      const hit = page.locator(`[data-conversation-id="${assistantId}"]`);
      const marked = async () =>
        (await hit.count()) ? await hit.getByTestId("match").locator("mark").allInnerTexts() : [];
      await waitFor(
        "the conversation found by its line",
        async () => {
          if ((await marked()).some((m) => m.toLowerCase() === "oslo")) return true;
          await page.getByRole("button", { name: "Search" }).click();
          return false;
        },
        { timeout: 10000, interval: 500 },
      );
      const marks = await marked();
      note("search hit", { title: await hit.getByRole("link").innerText(), marks });
      if (await page.locator(`[data-conversation-id="${conversationId}"]`).count()) {
        throw new Error("the echo conversation (no words) matched");
      }
      await shot(page, "12-history-search.png");
      await a11y(page, "12-history-search");
    });
  }

  await step("phone-sized Talk page", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole("link", { name: "Talk", exact: true }).click();
    await page.getByTestId("continue").waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`the page is ${overflow}px wider than the phone's screen`);
    await shot(page, "06-talk-phone.png");
    await a11y(page, "06-talk-phone");
  });

  await step("sign out", async () => {
    await page.getByTestId("sign-out").click();
    await page.getByRole("heading", { name: "Sign in to voicepool" }).waitFor();
    const me = await page.request.get(`${BASE_URL}/api/me`);
    if (me.status() !== 401) throw new Error(`/api/me after sign-out: ${me.status()}`);
  });
  await context.close();

  // --- another user, in a fresh context, must not see it ---------------------------------
  await step("another user sees neither the conversation nor its page", async () => {
    const other = await browser.newContext({ baseURL: BASE_URL, viewport: { width: 1100, height: 800 } });
    const otherPage = (current = await other.newPage());
    watch(otherPage, "other");
    await signIn(otherPage, OTHER_TOKEN, "other user");
    await otherPage.getByRole("link", { name: "History", exact: true }).click();
    await otherPage.getByText("No conversations yet").waitFor({ timeout: 10000 });
    if (await otherPage.locator(`[data-conversation-id="${conversationId}"]`).count()) {
      throw new Error("the other user's History lists the conversation");
    }
    await otherPage.goto(`${BASE_URL}/history/${conversationId}`);
    await otherPage.getByTestId("not-found").waitFor({ timeout: 10000 });
    const api = await otherPage.request.get(`${BASE_URL}/api/conversations/${conversationId}`);
    if (api.status() !== 404) throw new Error(`API answered ${api.status()} to the other user`);
    await shot(otherPage, "07-other-user-not-found.png");
    await a11y(otherPage, "07-other-user-not-found");
    await other.close();
  });

  // --- an administrator: Operators --------------------------------------------------------
  if (ADMIN_TOKEN) {
    await step("operators see workers and pools, and can drain a worker", async () => {
      const { admin, adminPage } = await operatorsPage(browser);
      const rows = adminPage.locator("[data-worker-id]");
      await waitFor("two workers", async () => (await rows.count()) === 2, { timeout: 10000 });
      await adminPage.getByTestId("pools").waitFor();
      if (process.env.GRAFANA_URL) {
        const href = await adminPage.getByTestId("grafana").getAttribute("href");
        if (href !== process.env.GRAFANA_URL) throw new Error(`Grafana link ${href}`);
      }
      note("pools", (await adminPage.getByTestId("pools").locator("tbody").innerText()).replace(/\s+/g, " "));
      await shot(adminPage, "08-operators.png");
      await a11y(adminPage, "08-operators");
      // At phone width every row is a block: its Drain button on screen, not scrolled away.
      await adminPage.setViewportSize({ width: 390, height: 844 });
      const drainButton = rows.first().getByRole("button", { name: /Drain worker/ });
      const box = await drainButton.boundingBox();
      if (!box || box.x < 0 || box.x + box.width > 390) throw new Error(`Drain at phone width: ${JSON.stringify(box)}`);
      await shot(adminPage, "14-operators-phone.png");
      await a11y(adminPage, "14-operators-phone");
      await adminPage.setViewportSize({ width: 1100, height: 800 });
      const first = rows.first();
      const workerId = await first.getAttribute("data-worker-id");
      await first.getByRole("button", { name: /Drain worker/ }).click();
      await first.getByRole("button", { name: "Confirm drain" }).click();
      await adminPage.getByText(`Worker ${workerId} is draining`).waitFor({ timeout: 10000 });
      note("drained", workerId);
      await admin.close();
    });
  }

}

/** A fresh user context with the microphone granted, signed in (a step of its own). */
async function signedInUser(browser) {
  const context = await browser.newContext({ baseURL: BASE_URL, permissions: ["microphone"], viewport: { width: 1100, height: 900 } });
  context.setDefaultTimeout(10000);
  const page = (current = await context.newPage());
  watch(page, "user");
  await step("sign in", () => signIn(page, USER_TOKEN, "user"));
  return { context, page };
}

/** A fresh administrator's context, signed in, on the Operators page. */
async function operatorsPage(browser) {
  const admin = await browser.newContext({ baseURL: BASE_URL, viewport: { width: 1100, height: 800 } });
  const adminPage = (current = await admin.newPage());
  watch(adminPage, "admin");
  await signIn(adminPage, ADMIN_TOKEN, "admin");
  await adminPage.getByRole("link", { name: "Operators" }).click();
  return { admin, adminPage };
}

async function modelDown(browser) {
  const { context, page } = await signedInUser(browser);
  await step("an unreachable model: the session fails, in plain words", async () => {
    // The session may fail while the browser offers: that offer (or an ICE PATCH) gets
    // 409 session_ended.
    expectedForStep = [{ status: 409, path: /^\/api\/sessions\/[0-9a-f]+\/offer$/ }];
    await page.getByLabel("Profile").selectOption("assistant");
    const clicked = Date.now();
    await page.getByTestId("start").click();
    await waitFor(
      "the session to fail",
      async () => (await page.getByTestId("session-status").getAttribute("data-status")) === "failed",
      { timeout: 20000 },
    );
    note("ms from Start to failed", Date.now() - clicked);
    const problem = page.getByTestId("problem").filter({ hasText: "Model unavailable" });
    await problem.waitFor({ timeout: 5000 });
    note("shown", (await problem.innerText()).replace(/\s+/g, " "));
    note("reason", (await voiceState(page)).reason);
    await shot(page, "09-model-unavailable.png");
    await a11y(page, "09-model-unavailable");
  });
  await context.close();
}

async function noWorkers(browser) {
  const { context, page } = await signedInUser(browser);
  await step("no worker running: Start says so at once, not a wait in line", async () => {
    expectedForStep = [{ status: 503, path: /^\/api\/sessions$/ }];
    await page.getByLabel("Profile").selectOption("echo");
    await page.getByTestId("start").click();
    const problem = page.getByTestId("problem").filter({ hasText: "No voice workers are running" });
    await problem.waitFor({ timeout: 5000 });
    note("shown", (await problem.innerText()).replace(/\s+/g, " "));
    const state = await voiceState(page);
    if (state.sessionId || state.status) throw new Error(`a session was left: ${JSON.stringify(state)}`);
    await shot(page, "11-no-workers.png");
    await a11y(page, "11-no-workers");
  });
  await context.close();
  if (!ADMIN_TOKEN) return;
  await step("Operators: the pool shows that no worker takes sessions", async () => {
    const { admin, adminPage } = await operatorsPage(browser);
    await adminPage.getByTestId("pools").getByText("No worker takes sessions").waitFor();
    await adminPage.getByText("No live workers.").waitFor();
    await admin.close();
  });
}

async function reload(browser) {
  const context = await browser.newContext({ baseURL: BASE_URL, permissions: ["microphone"], viewport: { width: 1100, height: 900 } });
  context.setDefaultTimeout(10000);
  const page = (current = await context.newPage());
  watch(page, "user");
  const turnLines = () => page.locator('[data-kind="user-turn"], [data-kind="bot-turn"]').count();
  await step("sign in", () => signIn(page, USER_TOKEN, "user"));

  let before;
  await step("an echo call over SmallWebRTC, with turns in its transcript", async () => {
    await page.getByLabel("Profile").selectOption("echo");
    await page.getByLabel("Transport").selectOption("webrtc");
    await page.getByTestId("start").click();
    await waitFor("connected", async () => (await voiceState(page))?.status === "connected", { timeout: 20000 });
    await waitFor(
      "a user turn and a bot reply",
      async () =>
        (await page.locator('[data-kind="user-turn"]', { hasText: "You spoke" }).count()) > 0 &&
        (await page.locator('[data-kind="bot-turn"]', { hasText: "Bot replied" }).count()) > 0,
      { timeout: 25000, interval: 100 },
    );
    before = { ...(await voiceState(page)), turnLines: await turnLines() };
    const remembered = await page.evaluate(() => sessionStorage.getItem("voicepool.call"));
    if (!remembered?.includes(before.sessionId)) throw new Error(`the tab does not remember its call: ${remembered}`);
    note("before the reload", { sessionId: before.sessionId, lastSeq: before.lastSeq, turnLines: before.turnLines });
  });

  await step("reload the page mid-call: the same session connects again, its transcript kept", async () => {
    const reloaded = Date.now();
    await page.reload();
    await waitFor("the page to attach to its call", async () => (await voiceState(page))?.sessionId === before.sessionId, {
      timeout: 15000,
    });
    await waitFor(
      "connected again (client_reconnected)",
      async () => {
        const state = await voiceState(page);
        const problem = await page.getByTestId("problem").count();
        if (problem) throw new Error(`the page shows a problem: ${await page.getByTestId("problem").first().innerText()}`);
        if (state.status === "ended" || state.status === "failed") throw new Error(`the call ended: ${state.status}/${state.reason}`);
        return state.status === "connected" && state.reason === "client_reconnected";
      },
      { timeout: 30000, interval: 50 },
    );
    note("ms from reload to connected again", Date.now() - reloaded);
    const state = await voiceState(page);
    if (state.events !== state.lastSeq) throw new Error(`events ${state.events} but last seq ${state.lastSeq}: a gap`);
    if (state.lastSeq <= before.lastSeq) throw new Error(`no events after the reload (last seq ${state.lastSeq})`);
    const lines = await turnLines();
    if (lines < before.turnLines) throw new Error(`${lines} turn lines after the reload, ${before.turnLines} before`);
    if ((await page.getByTestId("step-reconnecting").getAttribute("data-reached")) !== "true") {
      throw new Error("the reconnecting step is not shown");
    }
    note("after the reload", { lastSeq: state.lastSeq, turnLines: lines, playbackBlocked: state.playbackBlocked });
    await shot(page, "10-talk-after-reload.png");
    await a11y(page, "10-talk-after-reload");
  });

  await step("the bot is heard again (Resume call if the browser held the sound back)", async () => {
    if ((await voiceState(page)).playbackBlocked) {
      await page.getByTestId("resume-call").click();
      await waitFor("the sound to play", async () => !(await voiceState(page)).playbackBlocked, { timeout: 5000 });
      note("resumed the sound with a click", true);
    }
    await waitFor("bot audio after the reload", async () => (await page.evaluate(() => window.__voicepool.remotePeakRms())) > MIN_BOT_RMS, {
      timeout: 25000,
    });
    await waitFor("a bot reply after the reload", async () => (await turnLines()) > before.turnLines, { timeout: 25000 });
  });

  // VOICEPOOL_MAX_SESSIONS_PER_USER=1 for this scenario (test_web_app.py).
  await step("at the session cap, another tab says so and lists the live call, with End", async () => {
    expectedForStep = [{ status: 429, path: /^\/api\/sessions$/ }];
    const other = await context.newPage();
    watch(other, "user, second tab");
    await other.goto(`${BASE_URL}/`);
    await other.getByLabel("Profile").selectOption("echo");
    await other.getByLabel("Transport").selectOption("webrtc");
    await other.getByTestId("start").click();
    const problem = other.getByTestId("problem").filter({ hasText: "Too many sessions" });
    await problem.waitFor({ timeout: 10000 });
    const listed = other.getByTestId(`live-session-${before.sessionId}`);
    await listed.getByRole("button", { name: "End" }).waitFor({ timeout: 10000 });
    note("shown", (await other.getByTestId("live-sessions").innerText()).replace(/\s+/g, " "));
    await shot(other, "15-talk-session-cap.png");
    await a11y(other, "15-talk-session-cap");
    await other.close();
    expectedForStep = [];
  });

  await step("stop: the call ends, and the tab forgets it", async () => {
    await page.getByTestId("stop").click();
    await waitFor("it to end", async () => (await voiceState(page)).status === "ended", { timeout: 10000 });
    const state = await voiceState(page);
    if (state.reason !== "client_ended") throw new Error(`reason ${state.reason}`);
    if (await page.evaluate(() => sessionStorage.getItem("voicepool.call"))) throw new Error("the tab still remembers the call");
  });

  await step("the ended call's slot comes back: a new call starts", async () => {
    await page.getByTestId("start").click();
    await waitFor("connected", async () => (await voiceState(page))?.status === "connected", { timeout: 20000 });
    await page.getByTestId("stop").click();
    await waitFor("it to end", async () => (await voiceState(page)).status === "ended", { timeout: 10000 });
  });
  await context.close();
}
