// Shared by the web app's driver scripts (tests/js/app-*.mjs, run by
// tests/browser_app.rs): open the app in a page that fails the run on any
// page error or Content-Security-Policy violation, drive its forms as a
// person would, run real command-line clients (curl, tar, tubes) bounded
// in time, and save screenshots.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Inbox, log, withTimeout } from './browser-common.mjs';

/**
 * Chromium flags for the app's tests: several pages act at once, so none
 * may be throttled as a tab in the background (timers, animation frames).
 */
export const FOREGROUND_ARGS = [
  '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows',
  '--disable-renderer-backgrounding',
];

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 375, height: 740 };

/** The exact policy the app's page must carry. */
export const APP_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; " +
  "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; " +
  "require-trusted-types-for 'script'; trusted-types 'none'";

export function sha256(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Opens the app at `base + suffix` (e.g. `/#send`) in a new page of
 * `context`. Any page error, CSP violation or dialog (an `alert` would
 * mean received data ran as code) fails the run through the inbox.
 */
export async function openApp(context, name, base, suffix = '/', { viewport = DESKTOP, init } = {}) {
  const inbox = new Inbox(name);
  const real = await context.newPage();
  await real.setViewportSize(viewport);
  real.on('dialog', (d) => {
    inbox.push({ type: 'error', message: `a dialog opened: ${d.type()} ${d.message()}` });
    d.dismiss().catch(() => {});
  });
  real.on('console', (m) => {
    log(`${name} console.${m.type()}:`, m.text());
    if (/Content Security Policy|Trusted Type/i.test(m.text())) {
      inbox.push({ type: 'error', message: `CSP: ${m.text()}` });
    }
  });
  real.on('pageerror', (e) => inbox.push({ type: 'error', message: `page error: ${e.message}` }));
  real.on('crash', () => inbox.push({ type: 'error', message: 'page crashed' }));
  await real.exposeFunction('tubesReport', (message) => inbox.push(message));
  await real.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.tubesReport?.({ type: 'error', message: `CSP violation: ${e.violatedDirective} ${e.blockedURI}` });
    });
  });
  if (init) await real.addInitScript(...(Array.isArray(init) ? init : [init]));
  const response = await real.goto(base + suffix, { timeout: 20_000 });
  if (!response || response.status() !== 200) throw new Error(`${name}: GET ${suffix} gave ${response && response.status()}`);
  const csp = response.headers()['content-security-policy'];
  if (csp !== APP_CSP) throw new Error(`${name}: the app's CSP is ${JSON.stringify(csp)}`);
  await poll(real, () => document.documentElement.dataset.ready === 'true', null, 10_000, `${name}: the app starts`);
  failOnError(inbox);
  return { page: real, inbox };
}

/** Rejects with the first error any page reported. */
export function failOnError(inbox) {
  const bad = inbox.messages.find((m) => m.type === 'error');
  if (bad) throw new Error(`${inbox.name}: ${bad.message}`);
}

/**
 * Polls `fn(arg)` in the page every 100 ms until it returns a truthy value
 * (returned), for at most `ms`. (Playwright's own waitForFunction polls
 * with an eval that the app's CSP forbids.)
 */
export async function poll(page, fn, arg, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until the text of `selector` matches `pattern`; fails at once if
 * it shows an error instead. */
export async function waitForText(page, selector, pattern, ms, what) {
  const read = ({ selector }) => {
    const node = document.querySelector(selector);
    return node ? { text: node.textContent, error: node.classList.contains('error') } : { text: null, error: false };
  };
  const deadline = Date.now() + ms;
  for (;;) {
    const { text, error } = await page.evaluate(read, { selector });
    if (text !== null && pattern.test(text)) return text;
    if (error) throw new Error(`${what}: ${selector} shows an error: ${JSON.stringify(text)}`);
    if (Date.now() > deadline) {
      throw new Error(`${what}: ${selector} did not match ${pattern} within ${ms} ms (it says ${JSON.stringify(text)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Fills the send form and presses Send. `what`: `{ text }` or `{ files:
 * [paths] }`; `to`: `code` or `path` (with `path`, `protect`: none, words
 * or pass, `pass`, `n`).
 */
export async function sendFromApp(page, { text, files, to = 'code', path, protect = 'none', pass, n }) {
  // Playwright's checks before an action wait for animation frames, which
  // a page behind another one does not get.
  await page.bringToFront();
  await page.click('#nav-send');
  if (text !== undefined) {
    await page.check('input[name=what][value=text]');
    await page.fill('#send-text', text);
  } else {
    await page.check('input[name=what][value=files]');
    await page.setInputFiles('#file-input', files);
  }
  await page.check(`input[name=to][value=${to}]`);
  if (to === 'path') {
    await page.fill('#send-path', path);
    await page.selectOption('#send-protect', protect);
    if (protect === 'pass') await page.fill('#send-pass', pass);
    await page.fill('#send-n', String(n ?? 1));
  }
  await page.click('#send-button');
}

/** The code the send screen shows, once it shows one. */
export async function shownCode(page, ms = 10_000) {
  await poll(page, () => !document.querySelector('#send-code-line').hidden, null, ms, 'the code is shown');
  return (await page.locator('#send-code').textContent()).trim();
}

/** Fills the receive form and presses Receive. */
export async function receiveInApp(page, { target, secret = '', pass = '', n = 1 }) {
  await page.bringToFront();
  await page.click('#nav-receive');
  await page.fill('#recv-target', target);
  // The options of an earlier receive are cleared; the section is opened
  // only when they are needed.
  const options = !!(secret || pass || n !== 1);
  await page.evaluate((open) => {
    document.querySelector('#recv-more').open = open;
    for (const id of ['#recv-secret', '#recv-pass']) document.querySelector(id).value = '';
    document.querySelector('#recv-n').value = '1';
  }, options);
  if (options) {
    await page.fill('#recv-secret', secret);
    await page.fill('#recv-pass', pass);
    await page.fill('#recv-n', String(n));
  }
  await page.click('#recv-button');
}

/**
 * Waits for a received file to leave the page as a download (answering
 * the save-to-disk question with "download" when the browser asks it) and
 * returns its bytes' sha256 and suggested name.
 */
export async function receivedDownload(page, dir, ms) {
  const download = page.waitForEvent('download', { timeout: ms });
  const choice = page
    .waitForSelector('#recv-choice:not([hidden])', { timeout: ms })
    .then(() => page.click('#recv-memory'))
    .catch(() => {});
  const d = await download;
  await choice.catch(() => {});
  const file = join(dir, `download-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  await d.saveAs(file);
  const { readFileSync } = await import('node:fs');
  return { name: d.suggestedFilename(), sha256: sha256(readFileSync(file)), file };
}

/**
 * Runs a command with a time limit; resolves `{ code, stdout, stderr }`.
 * `onStdout`/`onStderr` see the output as it comes.
 */
export function run(cmd, args, { ms = 30_000, cwd, input, env, onOutput } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
      const out = [];
      const err = [];
      child.stdout.on('data', (d) => {
        out.push(d);
        onOutput?.(Buffer.concat(out).toString(), Buffer.concat(err).toString());
      });
      child.stderr.on('data', (d) => {
        err.push(d);
        onOutput?.(Buffer.concat(out).toString(), Buffer.concat(err).toString());
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() }));
      running.add(child);
      child.on('close', () => running.delete(child));
      if (input !== undefined) child.stdin.end(input);
      else child.stdin.end();
    }),
    ms,
    `${cmd} ${args.join(' ')}`,
  );
}

// Children still running when the script ends are killed.
const running = new Set();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/** Waits until `output()` (called on every new output) matches `pattern`. */
export function waitForOutput(register, pattern, ms, what) {
  return withTimeout(
    new Promise((resolve) => {
      register((stdout, stderr) => {
        const m = pattern.exec(stdout + stderr);
        if (m) resolve(m);
      });
    }),
    ms,
    what,
  );
}

/** The folder for screenshots: `--screenshots=DIR` on the command line,
 * else `TUBES_SCREENSHOTS`, else none. */
function screenshotDir() {
  const arg = process.argv.find((a) => a.startsWith('--screenshots='));
  return arg ? arg.slice('--screenshots='.length) : process.env.TUBES_SCREENSHOTS;
}

/** Saves full-page screenshots of `page` at desktop and phone widths,
 * when the run was given a folder for them. */
export async function screenshots(page, name, { dark = false } = {}) {
  const dir = screenshotDir();
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  const original = page.viewportSize();
  if (dark) {
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.setViewportSize(DESKTOP);
    await page.screenshot({ path: join(dir, `${name}-dark-desktop.png`), fullPage: true });
    await page.emulateMedia({ colorScheme: 'light' });
  }
  for (const [label, size] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(size);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(dir, `${name}-${label}.png`), fullPage: true });
    log(`screenshot ${join(dir, `${name}-${label}.png`)}`);
  }
  if (original) await page.setViewportSize(original);
}
