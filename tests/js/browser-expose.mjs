// A browser tab as a host behind NAT, in a real browser: two pages of one
// headless Chromium open the example page /-/examples/expose.html of the
// relay (over HTTPS/h2, so their WebSockets are RFC 8441 ones).
//
// 1. Page A registers a fresh name through the page's host form (a
//    WebSocket control connection to /-/expose); its status must say so.
// 2. Page B connects to that name through the client form (/-/connect/NAME;
//    page A opens /-/channel/ID) and sends a line; B must show A's echo and
//    A must show the line.
// 3. A sends a line to every client; B must show it.
// 4. B opens two more channels at once with tubesExpose.connect(); each
//    sends its own text and 64 KiB of bytes, and must get back exactly its
//    own echoes (channels are isolated), the bytes unchanged.
// 5. B closes everything; A's log must show each client leave.
//
// Usage: node tests/js/browser-expose.mjs https://localhost:PORT
// Prints `result {JSON}` and `ok`; diagnostics go to stderr. Run by
// tests/browser_expose.rs.

import { Inbox, baseUrl, launch, log, main, openPage, withTimeout } from './browser-common.mjs';

const STEP_MS = 10_000; // each step must happen within this
const SCRIPT_MS = 40_000; // the whole script, Chromium's start included

/**
 * Waits until the text of element `id` on `page` starts with `want.prefix`,
 * or contains `want.text` at least `want.times` times (once by default).
 * (A plain description, not a function: the page's policy forbids eval.)
 */
async function waitForText(page, id, want, what) {
  try {
    await page.waitForFunction(
      ([id, want]) => {
        const text = document.getElementById(id).textContent;
        if (want.prefix !== undefined) return text.startsWith(want.prefix);
        return text.split(want.text).length - 1 >= (want.times || 1);
      },
      [id, want],
      { timeout: STEP_MS },
    );
  } catch (e) {
    const text = await page.evaluate((id) => document.getElementById(id).textContent, id);
    throw new Error(`${what}: #${id} is ${JSON.stringify(text)} (${e.message.split('\n')[0]})`);
  }
}

const lines = (page, id) =>
  page.evaluate((id) => [...document.getElementById(id).querySelectorAll('li')].map((li) => li.textContent), id);

await main(SCRIPT_MS, async () => {
  const base = baseUrl();
  const { context, close } = await launch();
  try {
    const page = `${base}/-/examples/expose.html`;
    const a = await openPage(context, 'host page', page, new Inbox('host page'));
    const b = await openPage(context, 'client page', page, new Inbox('client page'));
    const name = `tab-${Buffer.from(crypto.getRandomValues(new Uint8Array(6))).toString('hex')}`;
    const secret = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('hex');

    // 1. Register through the host form.
    await a.fill('#host-name', name);
    await a.fill('#host-secret', secret);
    await a.click('#host-register');
    await waitForText(a, 'host-status', { prefix: 'Registered as ' }, 'registering');
    const status = await a.evaluate(() => document.getElementById('host-status').textContent);
    log(`host page: ${status}`);

    // 2. Connect through the client form and talk.
    await b.fill('#client-name', name);
    await b.click('#client-connect');
    await waitForText(b, 'client-status', { prefix: 'Connected to ' }, 'connecting');
    await b.fill('#client-say', 'hello from the client tab');
    await b.click('#client-say-form button');
    await waitForText(b, 'client-log', { text: 'host: echo: hello from the client tab' }, "the host's echo");
    await waitForText(a, 'host-log', { text: '"hello from the client tab"' }, 'the line at the host');

    // 3. The host writes to every client.
    await a.fill('#host-say', 'hello from the host tab');
    await a.click('#host-say-form button');
    await waitForText(b, 'client-log', { text: 'host: hello from the host tab' }, "the host's line");

    // 4. Two more channels at once, text and bytes, each with its own echoes.
    const channels = await withTimeout(
      b.evaluate(async ([name]) => {
        const talk = (tag) =>
          new Promise((resolve, reject) => {
            const socket = window.tubesExpose.connect(name);
            const bytes = new Uint8Array(65536).map((_, i) => (i * 7 + tag.length) % 256);
            const got = [];
            socket.onopen = () => {
              socket.send(`text of ${tag}`);
              socket.send(bytes);
            };
            socket.onmessage = (e) => {
              got.push(e.data);
              if (got.length === 2) {
                const [text, echoed] = got;
                const back = typeof echoed === 'string' ? null : new Uint8Array(echoed);
                resolve({
                  tag,
                  text,
                  bytes: back ? back.length : -1,
                  bytesEqual: !!back && back.length === bytes.length && back.every((v, i) => v === bytes[i]),
                  socket,
                });
              }
            };
            socket.onclose = (e) => reject(new Error(`channel ${tag} closed early: ${e.code}`));
          });
        const results = await Promise.all([talk('one'), talk('two-two')]);
        // Nothing more arrives on either (no cross-talk), then both close.
        await new Promise((r) => setTimeout(r, 200));
        const out = results.map(({ socket, ...rest }) => rest);
        for (const { socket } of results) {
          socket.onclose = null;
          socket.close(1000);
        }
        return out;
      }, [name]),
      STEP_MS,
      'two channels at once',
    );

    // 5. Everyone leaves; the host sees each client go.
    await b.click('#client-connect'); // reconnecting closes the form's channel first
    await waitForText(b, 'client-status', { prefix: 'Connected to ' }, 'connecting again');
    await b.close();
    await waitForText(a, 'host-log', { text: ' left', times: 4 }, 'every client leaving');

    const result = {
      name,
      status,
      hostLog: await lines(a, 'host-log'),
      channels,
    };
    process.stdout.write(`result ${JSON.stringify(result)}\n`);
    await withTimeout(a.close(), 10_000, 'closing the host page');
  } finally {
    await close();
  }
});
