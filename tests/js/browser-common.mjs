// Shared by the browser driver scripts (tests/js/browser-*.mjs) that
// tests/browser.rs runs: launches Debian's Chromium through playwright-core,
// headless, with a fresh profile, and gives bounded waits on what the pages
// report back to Node.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

/** Writes a diagnostic line to stderr (the Rust test prints it on failure). */
export function log(...parts) {
  process.stderr.write(`[${new Date().toISOString()}] ${parts.join(' ')}\n`);
}

/** Rejects with a message naming `what` if `promise` takes more than `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The base URL from the command line, e.g. `https://localhost:41515`. */
export function baseUrl() {
  const base = process.argv[2];
  if (!base || !/^https:\/\//.test(base)) {
    throw new Error(`usage: node ${process.argv[1]} https://localhost:PORT`);
  }
  return base.replace(/\/+$/, '');
}

/** A fresh random channel path. */
export function randomPath(prefix) {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `/${prefix}-${Buffer.from(bytes).toString('hex')}`;
}

// Every inbox, so that an error any page reports fails every pending wait.
const inboxes = new Set();
let failure = null;

/**
 * Messages a page sends to Node (through an exposed function), kept in
 * order; `next` waits, bounded, for the next unread one. A message of type
 * `error` from any page fails every wait, at once.
 */
export class Inbox {
  constructor(name) {
    this.name = name;
    this.messages = [];
    this.waiters = [];
    this.read = 0;
    inboxes.add(this);
  }

  push(message) {
    message.receivedAt = Date.now();
    if (message.type === 'error' && !failure) {
      failure = new Error(`${this.name}: ${message.message}`);
    }
    this.messages.push(message);
    for (const inbox of inboxes) for (const w of [...inbox.waiters]) w();
  }

  /** Waits for the next unread message. */
  next(ms, what) {
    let check;
    const arrived = new Promise((resolve, reject) => {
      check = () => {
        if (failure) return reject(failure);
        if (this.read >= this.messages.length) return;
        resolve(this.messages[this.read++]);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
    return withTimeout(arrived, ms, `${this.name}: ${what}`).finally(() => {
      this.waiters = this.waiters.filter((w) => w !== check);
    });
  }

  /** Waits for the next unread message of the given type, skipping others. */
  async nextOfType(type, ms, what) {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = await this.next(Math.max(1, deadline - Date.now()), what);
      if (m.type === type) return m;
    }
  }
}

/**
 * Launches headless Chromium with a fresh profile in a temp dir. Returns the
 * browser context and a `close` that also removes the profile. `extraArgs`
 * go to Chromium as well.
 */
export async function launch(extraArgs = []) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'tubes-chromium-'));
  // playwright-core refuses `--user-data-dir` in `args`: the persistent
  // context passes it to Chromium itself.
  const context = await withTimeout(
    chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--ignore-certificate-errors',
        ...extraArgs,
      ],
      ignoreHTTPSErrors: true,
      timeout: 30_000,
      // Stopping early closes the browser through `stopEarly` below.
      handleSIGINT: false,
      handleSIGTERM: false,
    }),
    40_000,
    'launching Chromium',
  );
  let closing = null;
  const close = () => {
    closing ??= (async () => {
      try {
        await withTimeout(context.close(), 15_000, 'closing Chromium');
      } finally {
        closers.delete(close);
        try {
          rmSync(userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
        } catch (e) {
          log(`could not remove ${userDataDir}: ${e.message}`);
        }
      }
    })();
    return closing;
  };
  closers.add(close);
  return { context, close };
}

/**
 * Opens a page on `url`, forwarding its console and errors to stderr, with
 * `report(message)` exposed to it as `window.tubesReport`, feeding `inbox`.
 */
export async function openPage(context, name, url, inbox) {
  const page = await context.newPage();
  page.on('console', (m) => log(`${name} console.${m.type()}:`, m.text()));
  page.on('pageerror', (e) => {
    log(`${name} page error:`, e.message);
    inbox.push({ type: 'error', message: `page error: ${e.message}` });
  });
  page.on('crash', () => inbox.push({ type: 'error', message: 'page crashed' }));
  await page.exposeFunction('tubesReport', (message) => inbox.push(message));
  const response = await page.goto(url, { timeout: 20_000 });
  if (!response || response.status() !== 200) {
    throw new Error(`${name}: GET ${url} gave ${response && response.status()}`);
  }
  // Browsers only stream a request body over HTTP/2 (or 3): make sure the
  // page itself came over one of them (h3 only if the server advertises it).
  const protocol = await page.evaluate(
    () => performance.getEntriesByType('navigation')[0]?.nextHopProtocol,
  );
  if (protocol !== 'h2' && protocol !== 'h3') {
    throw new Error(`${name}: page loaded over ${protocol}, expected h2 (or h3)`);
  }
  return page;
}

// Browsers to close if the script stops early.
const closers = new Set();
let stopping = false;

/** Closes every browser (bounded), then exits 1. */
async function stopEarly(reason) {
  if (stopping) return;
  stopping = true;
  log(`FAILED: ${reason}`);
  setTimeout(() => process.exit(1), 20_000).unref();
  for (const close of [...closers]) {
    try {
      await close();
    } catch (e) {
      log(`while stopping: ${e.message}`);
    }
  }
  process.exit(1);
}

process.on('SIGTERM', () => stopEarly('stopped by SIGTERM'));
process.on('SIGINT', () => stopEarly('stopped by SIGINT'));

/**
 * Runs `body`, then prints `ok` on success; on failure prints the error to
 * stderr and exits 1. The whole run is bounded by `ms`.
 */
export async function main(ms, body) {
  const watchdog = setTimeout(() => stopEarly(`the script took more than ${ms} ms`), ms);
  let failed = false;
  try {
    await body();
  } catch (e) {
    failed = true;
    log('FAILED:', e && e.stack ? e.stack : String(e));
  }
  clearTimeout(watchdog);
  if (stopping) return;
  if (failed) process.exit(1);
  process.stdout.write('ok\n');
}
