// Server-Sent Events on a live text stream, in a real browser. The Rust test
// is the live sender (`PUT PATH?live`, text/plain) and writes numbered
// lines only when this script asks for them (`send N` on stdout, answered
// `sent N` on stdin), so every step waits for an event, never for time.
//
// 1. A page opens `new EventSource(PATH?live)` before any line exists and
//    must get lines 1..10, one event each: data = the line, id = the byte
//    offset just after it.
// 2. The page closes its EventSource. A raw `fetch` with `lastEventId=0`
//    shows the wire format: `retry: 2000`, then `id:` and `data:` of line 1.
// 3. Lines 11..15 are sent while the page has no EventSource open.
// 4. The page opens a new EventSource with `?lastEventId=<last id seen>`
//    (EventSource only sends `Last-Event-ID` on its own reconnects) and must
//    get exactly lines 11..15 (from the relay's window), then 16..25 live.
// 5. The test ends the upload: the page gets `event: end` and closes.
//
// Usage: node tests/js/browser-sse.mjs https://localhost:PORT PATH
// Prints protocol lines, `result {...}` (every event seen) and `ok`;
// diagnostics go to stderr. Run by tests/browser_live.rs.

import { Inbox, launch, log, main, openPage, withTimeout } from './browser-common.mjs';
import { StdinLines, args, result, say } from './browser-live-common.mjs';

const FIRST = 10; // lines over the first EventSource
const GAP = 5; // lines sent while disconnected
const TOTAL = 25;
const EVENT_LIMIT_MS = 10_000; // an event must reach the page within this

const utf8Length = (s) => Buffer.byteLength(s, 'utf8');

const stdin = new StdinLines();
await main(40_000, async () => {
  const { base, path } = args(['path']);
  const url = `${base}${path}?live`;
  const { context, close } = await launch();
  try {
    const inbox = new Inbox('page');
    const page = await openPage(context, 'page', base + '/', inbox);
    await page.evaluate(() => {
      window.openEvents = (url, connection) => {
        const es = new EventSource(url);
        window.events = es;
        es.onopen = () => tubesReport({ type: 'open', connection });
        es.onmessage = (e) => tubesReport({ type: 'event', connection, data: e.data, id: e.lastEventId });
        es.addEventListener('end', () => {
          es.close();
          tubesReport({ type: 'end', connection });
        });
        es.addEventListener('abort', (e) => tubesReport({ type: 'error', message: `event: abort ${e.data}` }));
        es.onerror = () =>
          tubesReport({ type: 'error', message: `EventSource ${connection} error, readyState ${es.readyState}` });
      };
      window.closeEvents = () => window.events.close();
      // The raw stream as a fetch sees it, up to the first event.
      window.rawFirstEvent = async (url) => {
        const res = await fetch(url, { headers: { Accept: 'text/event-stream' } });
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let text = '';
        while (!/\n\n[^]*\n\n/.test(text)) {
          const { done, value } = await reader.read();
          if (done) break;
          text += decoder.decode(value, { stream: true });
        }
        await reader.cancel();
        return { status: res.status, contentType: res.headers.get('content-type'), text };
      };
    });

    const events = [];
    let lastId = 0;
    // Waits for the event of line `seq` on `connection` and checks it.
    const expectEvent = async (seq, connection) => {
      const m = await inbox.next(EVENT_LIMIT_MS, `event ${seq} on EventSource ${connection}`);
      if (m.type !== 'event' || m.connection !== connection) {
        throw new Error(`expected event ${seq} on EventSource ${connection}, got ${JSON.stringify(m)}`);
      }
      const got = Number(m.data.split(' ')[0]);
      if (got !== seq) {
        throw new Error(`expected line ${seq}, got ${JSON.stringify(m.data)} (after ${events.map((e) => e.seq).join(',')})`);
      }
      const id = Number(m.id);
      // The id is the offset just after the line: after the previous one
      // plus this line and its "\n".
      if (!(Number.isSafeInteger(id) && id === lastId + utf8Length(m.data) + 1)) {
        throw new Error(`line ${seq}: id ${JSON.stringify(m.id)}, expected ${lastId} + ${utf8Length(m.data)} + 1`);
      }
      lastId = id;
      events.push({ connection, seq, id, data: m.data });
    };
    const send = async (n) => {
      say(`send ${n}`);
      await stdin.expect(`sent ${n}`, 10_000);
    };

    // 1. Before any line exists: the stream starts at offset 0.
    await page.evaluate(([url]) => window.openEvents(url, 1), [url]);
    const open1 = await inbox.next(EVENT_LIMIT_MS, 'EventSource 1 open');
    if (open1.type !== 'open') throw new Error(`expected open, got ${JSON.stringify(open1)}`);
    for (let seq = 1; seq <= FIRST; seq++) {
      await send(seq);
      await expectEvent(seq, 1);
    }

    // 2. A forced disconnect, and the wire format seen by fetch.
    await page.evaluate(() => window.closeEvents());
    const raw = await withTimeout(
      page.evaluate(([u]) => window.rawFirstEvent(u), [`${url}&lastEventId=0`]),
      EVENT_LIMIT_MS,
      'the raw event stream',
    );
    const first = events[0];
    const wantRaw = `retry: 2000\n\nid: ${first.id}\ndata: ${first.data}\n\n`;
    if (raw.status !== 200 || raw.contentType !== 'text/event-stream' || !raw.text.startsWith(wantRaw)) {
      throw new Error(`raw stream from offset 0: ${JSON.stringify(raw)}, expected it to start ${JSON.stringify(wantRaw)}`);
    }

    // 3. Lines the page is not connected for.
    await send(FIRST + GAP);

    // 4. Resume where the page left off.
    const resumedFrom = lastId;
    log(`reconnecting with lastEventId=${resumedFrom} after line ${FIRST}`);
    await page.evaluate(([url]) => window.openEvents(url, 2), [`${url}&lastEventId=${resumedFrom}`]);
    const open2 = await inbox.next(EVENT_LIMIT_MS, 'EventSource 2 open');
    if (open2.type !== 'open' || open2.connection !== 2) throw new Error(`expected open, got ${JSON.stringify(open2)}`);
    for (let seq = FIRST + 1; seq <= FIRST + GAP; seq++) await expectEvent(seq, 2);
    for (let seq = FIRST + GAP + 1; seq <= TOTAL; seq++) {
      await send(seq);
      await expectEvent(seq, 2);
    }

    // 5. The end of the stream.
    say('end');
    await stdin.expect('ended', 10_000);
    const end = await inbox.next(EVENT_LIMIT_MS, 'event: end');
    if (end.type !== 'end' || end.connection !== 2) throw new Error(`expected event: end, got ${JSON.stringify(end)}`);
    log(`${events.length} events, last id ${lastId}`);
    result({ events, resumedFrom, raw: raw.text });
    await withTimeout(page.close(), 10_000, 'closing the page');
  } finally {
    stdin.close();
    await close();
  }
});
