// The text chat of the seed, in a real browser: page B receives with a
// streaming `fetch` on a fresh path while page A sends with a streaming
// upload (`ReadableStream` body, `duplex: 'half'`), one line about every
// second. Each line must reach page B before page A enqueues the next one;
// then page A closes its stream and page B's response ends cleanly.
//
// Usage: node tests/js/browser-chat.mjs https://localhost:PORT
// Prints `ok` on success; diagnostics go to stderr. Run by tests/browser.rs.

import { Inbox, baseUrl, launch, log, main, openPage, randomPath, withTimeout } from './browser-common.mjs';

const LINES = ['hello from A\n', 'second line: ünïcødé ✓\n', 'third line\n', 'bye\n'];
const SPACING_MS = 1000; // the chat's pace: the scenario, not a synchronisation
const LINE_LIMIT_MS = 10_000; // a line must reach B within this

await main(80_000, async () => {
  const base = baseUrl();
  const url = base + randomPath('browser-chat');
  const { context, close } = await launch();
  try {
    const aInbox = new Inbox('page A');
    const bInbox = new Inbox('page B');
    const a = await openPage(context, 'page A', base + '/', aInbox);
    const b = await openPage(context, 'page B', base + '/', bInbox);

    // Page B: the receiver, reading the body as it comes.
    await b.evaluate((url) => {
      window.receiving = (async () => {
        try {
          const res = await fetch(url);
          await tubesReport({
            type: 'headers',
            status: res.status,
            contentType: res.headers.get('content-type'),
          });
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          for (;;) {
            const { done, value } = await reader.read();
            const at = performance.timeOrigin + performance.now();
            if (done) {
              await tubesReport({ type: 'done', text: decoder.decode(), at });
              return;
            }
            await tubesReport({ type: 'chunk', text: decoder.decode(value, { stream: true }), at });
          }
        } catch (e) {
          await tubesReport({ type: 'error', message: `receiver: ${e}` });
        }
      })();
    }, url);

    // Page A: the sender; Node pushes each line through `pushLine`.
    await a.evaluate((url) => {
      const encoder = new TextEncoder();
      let controller;
      const body = new ReadableStream({
        start(c) {
          controller = c;
        },
      });
      window.pushLine = (line) => {
        controller.enqueue(encoder.encode(line));
        return performance.timeOrigin + performance.now();
      };
      window.finish = () => controller.close();
      window.sending = (async () => {
        try {
          const res = await fetch(url, {
            method: 'POST',
            body,
            duplex: 'half',
            headers: { 'Content-Type': 'text/plain; charset=utf-8' },
          });
          await tubesReport({ type: 'headers', status: res.status });
          await tubesReport({ type: 'log', text: await res.text() });
        } catch (e) {
          await tubesReport({ type: 'error', message: `sender: ${e}` });
        }
      })();
    }, url);

    // The transfer starts once both are there: B gets its response headers.
    const headers = await bInbox.next(20_000, 'response headers of the receiver');
    if (headers.type !== 'headers' || headers.status !== 200) {
      throw new Error(`receiver: expected 200 headers, got ${JSON.stringify(headers)}`);
    }
    if (headers.contentType !== 'text/plain; charset=utf-8') {
      throw new Error(`receiver: Content-Type ${headers.contentType}`);
    }

    let received = '';
    let expected = '';
    let lastReceivedAt = 0;
    for (const [k, line] of LINES.entries()) {
      if (k > 0) await new Promise((r) => setTimeout(r, SPACING_MS));
      const enqueuedAt = await a.evaluate((line) => window.pushLine(line), line);
      if (k > 0 && !(lastReceivedAt < enqueuedAt)) {
        throw new Error(`line ${k} received at ${lastReceivedAt}, not before line ${k + 1} was enqueued at ${enqueuedAt}`);
      }
      expected += line;
      while (received.length < expected.length) {
        const m = await bInbox.next(LINE_LIMIT_MS, `line ${k + 1} ${JSON.stringify(line)} at the receiver`);
        if (m.type !== 'chunk') {
          throw new Error(`receiver: expected line ${k + 1}, got ${JSON.stringify(m)} after ${JSON.stringify(received)}`);
        }
        received += m.text;
        lastReceivedAt = m.at;
      }
      if (received !== expected) {
        throw new Error(`receiver got ${JSON.stringify(received)}, expected ${JSON.stringify(expected)}`);
      }
      log(`line ${k + 1} reached page B ${(lastReceivedAt - enqueuedAt).toFixed(1)} ms after page A enqueued it`);
    }

    // A closes its stream: B's response ends cleanly, with nothing more.
    const finishedAt = Date.now();
    await a.evaluate(() => window.finish());
    const done = await bInbox.next(LINE_LIMIT_MS, 'end of the receiver response');
    if (done.type !== 'done' || done.text !== '') {
      throw new Error(`receiver: expected a clean end, got ${JSON.stringify(done)}`);
    }

    // The sender's response: 200 and the whole log.
    const aHeaders = await aInbox.next(LINE_LIMIT_MS, 'response headers of the sender');
    if (aHeaders.type !== 'headers' || aHeaders.status !== 200) {
      throw new Error(`sender: expected 200, got ${JSON.stringify(aHeaders)}`);
    }
    log(`the sender's response headers reached page A ${aHeaders.receivedAt - finishedAt} ms after it closed its stream`);
    const senderLog = await aInbox.next(LINE_LIMIT_MS, 'log of the sender');
    log('sender log:', JSON.stringify(senderLog.text));
    for (const want of [
      '[INFO] Start sending to 1 receiver(s)!\n',
      '[INFO] Sent successfully!\n',
      '[INFO] All receiver(s) was/were received successfully.\n',
    ]) {
      if (!senderLog.text.includes(want)) {
        throw new Error(`sender log lacks ${JSON.stringify(want)}: ${JSON.stringify(senderLog.text)}`);
      }
    }
    await withTimeout(Promise.all([a.close(), b.close()]), 10_000, 'closing the pages');
  } finally {
    await close();
  }
});
