// Live chat between two pages of the web app, in Chromium:
// - page A starts a chat, page B joins through the link A shows; lines go
//   both ways, each arriving before the next is sent and all in order;
//   B leaves and A is told;
// - again with page B on the fallback for browsers that cannot stream an
//   upload (`?upload=ws`: a WebSocket `?ws=send`), page A still streaming.
//
// Usage: node tests/js/app-chat.mjs https://localhost:PORT
// Prints `ok` on success. Run by tests/browser_app.rs.

import { baseUrl, launch, log, main } from './browser-common.mjs';
import { FOREGROUND_ARGS, failOnError, openApp, poll, screenshots, waitForText } from './app-common.mjs';

const STEP_MS = 15_000;

/** Types a line into a page's chat and waits until the other page shows it. */
async function say(from, to, line, count) {
  await from.page.bringToFront();
  await from.page.fill('#chat-line', line);
  await from.page.press('#chat-line', 'Enter');
  const lines = await poll(
    to.page,
    (n) => {
      const texts = [...document.querySelectorAll('#chat-log li.them .text')].map((e) => e.textContent);
      return texts.length >= n ? texts : null;
    },
    count,
    STEP_MS,
    `line ${count} (${JSON.stringify(line)}) at the other page`,
  );
  return lines;
}

async function conversation(a, b, label) {
  const fromA = ['hello B', 'second line: ünïcødé ✓', '<i>not markup</i>', 'a line with  two  spaces', 'bye'];
  const fromB = ['hi A', 'got them all', 'leaving'];
  let seen;
  for (const [k, line] of fromA.entries()) seen = await say(a, b, line, k + 1);
  if (JSON.stringify(seen) !== JSON.stringify(fromA)) throw new Error(`${label}: B shows ${JSON.stringify(seen)}`);
  for (const [k, line] of fromB.entries()) seen = await say(b, a, line, k + 1);
  if (JSON.stringify(seen) !== JSON.stringify(fromB)) throw new Error(`${label}: A shows ${JSON.stringify(seen)}`);
  const mine = await a.page.evaluate(() => [...document.querySelectorAll('#chat-log li.me .text')].map((e) => e.textContent));
  if (JSON.stringify(mine) !== JSON.stringify(fromA)) throw new Error(`${label}: A's own lines show as ${JSON.stringify(mine)}`);
  const markup = await b.page.evaluate(() => document.querySelectorAll('#chat-log .text *').length);
  if (markup !== 0) throw new Error(`${label}: a line became markup`);
  log(`${label}: ${fromA.length} lines A -> B and ${fromB.length} lines B -> A, in order`);
}

await main(90_000, async () => {
  const base = baseUrl();
  const { context, close } = await launch(FOREGROUND_ARGS);
  try {
    for (const [label, suffixB] of [
      ['streaming uploads both ways', '/'],
      ['page B on the WebSocket fallback', '/?upload=ws'],
    ]) {
      const a = await openApp(context, 'page A', base, '/#chat');
      await a.page.click('#chat-start');
      await waitForText(a.page, '#chat-message', /waiting for the other side/, STEP_MS, 'A waits');
      const name = await a.page.inputValue('#chat-name');
      const link = (await a.page.locator('#chat-commands code').first().textContent()).trim();
      if (link !== `${base}/#chat=${name}`) throw new Error(`A shows the link ${link}`);
      const b = await openApp(context, 'page B', base, `${suffixB}#chat=${name}`);
      await waitForText(b.page, '#chat-message', /connected/, STEP_MS, 'B connects');
      await waitForText(a.page, '#chat-message', /connected/, STEP_MS, 'A connects');
      const how = await b.page.locator('#chat-message').textContent();
      if (suffixB.includes('upload=ws') !== /WebSocket/.test(how)) throw new Error(`B sends through: ${how}`);
      await conversation(a, b, label);
      if (label.startsWith('streaming')) await screenshots(a.page, 'chat', { dark: true });
      await b.page.click('#chat-leave');
      await waitForText(a.page, '#chat-message', /the other side left/, STEP_MS, 'A is told B left');
      await waitForText(b.page, '#chat-message', /you left/, STEP_MS, 'B has left');
      failOnError(a.inbox);
      failOnError(b.inbox);
      await a.page.close();
      await b.page.close();
    }
  } finally {
    await close();
  }
});
