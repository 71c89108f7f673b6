// A signed URL opened by Chromium's EventSource, which cannot send an
// Authorization header: the signature in the query is the credential.
//
// The page (the server's own index page, http://127.0.0.1:PORT/) opens
//   1. `new EventSource(signedUrl)`: it must get one event per line the
//      test's curl sender sends with a token, then `event: end`;
//   2. `new EventSource(tamperedUrl)`: the server answers 401, so the
//      EventSource must fail for good (readyState CLOSED), not reconnect.
// Prints `opened` once both EventSources exist, then `result {...}` and
// `ok`; diagnostics go to stderr. Run by tests/operate_browser.rs.
//
// Usage: node tests/js/operate-eventsource.mjs BASE SIGNED_URL TAMPERED_URL LINES

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const LIMIT_MS = 40_000;
const [base, signedUrl, tamperedUrl, lineCount] = process.argv.slice(2);
if (!base || !signedUrl || !tamperedUrl || !lineCount) {
  console.error('usage: node operate-eventsource.mjs BASE SIGNED_URL TAMPERED_URL LINES');
  process.exit(2);
}

const log = (...parts) => process.stderr.write(`[${new Date().toISOString()}] ${parts.join(' ')}\n`);

const withTimeout = (promise, ms, what) => {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
};

const profile = mkdtempSync(join(tmpdir(), 'tubes-operate-chromium-'));
let context;
let code = 1;
try {
  context = await withTimeout(
    chromium.launchPersistentContext(profile, {
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
      timeout: 30_000,
    }),
    35_000,
    'launching Chromium',
  );
  const page = await context.newPage();
  page.on('console', (m) => log(`page console: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  await withTimeout(page.goto(`${base}/`), 15_000, 'opening the index page');
  await page.evaluate(
    ({ signedUrl, tamperedUrl, lineCount }) => {
      window.signed = new Promise((resolve, reject) => {
        const es = new EventSource(signedUrl);
        const messages = [];
        es.onmessage = (e) => messages.push(e.data);
        es.addEventListener('end', () => {
          es.close();
          resolve({ messages, ended: true });
        });
        es.addEventListener('abort', (e) => {
          es.close();
          reject(new Error(`event: abort ${e.data}`));
        });
        es.onerror = () => {
          // Before the end, any error is a failure (a 401 would be one).
          if (messages.length < lineCount) {
            es.close();
            reject(new Error(`EventSource error, readyState ${es.readyState}, after ${messages.length} events`));
          }
        };
      });
      window.tampered = new Promise((resolve) => {
        const es = new EventSource(tamperedUrl);
        es.onmessage = (e) => resolve({ unexpected: e.data, readyState: es.readyState });
        es.onerror = () => {
          const readyState = es.readyState;
          es.close();
          resolve({ readyState });
        };
      });
    },
    { signedUrl, tamperedUrl, lineCount: Number(lineCount) },
  );
  console.log('opened');
  const signed = await withTimeout(page.evaluate(() => window.signed), LIMIT_MS, 'the signed EventSource');
  const tampered = await withTimeout(page.evaluate(() => window.tampered), LIMIT_MS, 'the tampered EventSource');
  console.log(`result ${JSON.stringify({ signed, tampered })}`);
  console.log('ok');
  code = 0;
} catch (e) {
  log(`failed: ${e.stack || e.message}`);
} finally {
  if (context) {
    await withTimeout(context.close(), 15_000, 'closing Chromium').catch((e) => log(e.message));
  }
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
