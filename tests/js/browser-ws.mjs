// WebSocket on a relay path, in a real browser.
//
// PART `pair` (`wss://HOST/PATH?ws=pair`): pages A and B each open a socket; a
// greeting each way shows both are joined (a message sent before the
// partner is there is dropped, by design). Then, at the same time, each
// sends 100 numbered text messages and one binary message; each must get
// the other's 100 in order, as text, then the binary one, as binary, byte
// for byte. A closes with 1000; B's socket must be closed.
//
// PART `transfer` (`?ws=send` / `?ws=receive`): A's sending
// socket gets the relay's log as text, sends text and binary messages and
// closes with 1000 before any receiver exists; B's receiving socket then
// gets exactly those bytes as binary messages, then is closed.
//
// Every close event (code, reason, wasClean) goes into the result, for the
// Rust test to judge; the script itself checks the messages.
//
// Usage: node tests/js/browser-ws.mjs https://localhost:PORT PATH PART
// Prints `result {...}` and `ok`; diagnostics go to stderr. Run by
// tests/browser_live.rs.

import { Inbox, launch, log, main, openPage, withTimeout } from './browser-common.mjs';
import { args, result } from './browser-live-common.mjs';

const COUNT = 100;
const LIMIT_MS = 10_000;

const pattern = (n, mul) => Array.from({ length: n }, (_, i) => (i * mul + 11) % 256);

/** The next message from a socket of a page, which must be of `type`. */
async function expectFrom(inbox, socket, type, what) {
  const m = await inbox.next(LIMIT_MS, what);
  if (m.socket !== socket || m.type !== type) {
    throw new Error(`${inbox.name}: expected ${type} on ${socket} (${what}), got ${JSON.stringify(m)}`);
  }
  return m;
}

await main(40_000, async () => {
  const { base, path, part } = args(['path', 'part']);
  if (part !== 'pair' && part !== 'transfer') throw new Error(`PART is pair or transfer, not ${part}`);
  const wss = base.replace(/^https:/, 'wss:');
  const { context, close } = await launch();
  try {
    const aInbox = new Inbox('page A');
    const bInbox = new Inbox('page B');
    const a = await openPage(context, 'page A', base + '/', aInbox);
    const b = await openPage(context, 'page B', base + '/', bInbox);
    for (const page of [a, b]) {
      await page.evaluate(() => {
        window.sockets = {};
        window.openSocket = (name, url) => {
          const ws = new WebSocket(url);
          ws.binaryType = 'arraybuffer';
          window.sockets[name] = ws;
          ws.onopen = () => tubesReport({ type: 'open', socket: name });
          ws.onmessage = (e) =>
            typeof e.data === 'string'
              ? tubesReport({ type: 'text', socket: name, text: e.data })
              : tubesReport({ type: 'binary', socket: name, bytes: Array.from(new Uint8Array(e.data)) });
          ws.onclose = (e) =>
            tubesReport({ type: 'close', socket: name, code: e.code, reason: e.reason, wasClean: e.wasClean });
          ws.onerror = () => tubesReport({ type: 'socket error', socket: name });
        };
        window.sendText = (name, text) => window.sockets[name].send(text);
        window.sendBytes = (name, bytes) => window.sockets[name].send(new Uint8Array(bytes));
        window.closeSocket = (name, code, reason) => window.sockets[name].close(code, reason);
        // `count` numbered texts, then the bytes, all at once.
        window.burst = (name, prefix, count, bytes) => {
          const ws = window.sockets[name];
          for (let i = 0; i < count; i++) ws.send(`${prefix} ${i}`);
          ws.send(new Uint8Array(bytes));
        };
      });
    }

    if (part === 'pair') result(await pair(a, aInbox, b, bInbox, `${wss}${path}?ws=pair`));
    else result(await transfer(a, aInbox, b, bInbox, `${wss}${path}`));
    await withTimeout(Promise.all([a.close(), b.close()]), 10_000, 'closing the pages');
  } finally {
    await close();
  }
});

/** Two `?ws=pair` sockets: greetings, both bursts at once, A leaves. */
async function pair(a, aInbox, b, bInbox, pairUrl) {
  // Both open, then a greeting each way.
  await a.evaluate(([u]) => window.openSocket('pair', u), [pairUrl]);
  await expectFrom(aInbox, 'pair', 'open', 'A open');
  await b.evaluate(([u]) => window.openSocket('pair', u), [pairUrl]);
  await expectFrom(bInbox, 'pair', 'open', 'B open');
  await b.evaluate(() => window.sendText('pair', 'hello from B'));
  const helloB = await expectFrom(aInbox, 'pair', 'text', 'the greeting from B');
  await a.evaluate(() => window.sendText('pair', 'hello from A'));
  const helloA = await expectFrom(bInbox, 'pair', 'text', 'the greeting from A');
  if (helloB.text !== 'hello from B' || helloA.text !== 'hello from A') {
    throw new Error(`greetings: ${JSON.stringify([helloB, helloA])}`);
  }

  // Full duplex: both bursts at once.
  const bytesA = pattern(1024, 1);
  const bytesB = pattern(3000, 7);
  const started = Date.now();
  await Promise.all([
    a.evaluate(([n, bytes]) => window.burst('pair', 'A', n, bytes), [COUNT, bytesA]),
    b.evaluate(([n, bytes]) => window.burst('pair', 'B', n, bytes), [COUNT, bytesB]),
  ]);
  const receive = async (inbox, from, bytes) => {
    for (let i = 0; i < COUNT; i++) {
      const m = await expectFrom(inbox, 'pair', 'text', `message ${i} from ${from}`);
      if (m.text !== `${from} ${i}`) throw new Error(`${inbox.name}: message ${i} is ${JSON.stringify(m.text)}`);
    }
    const m = await expectFrom(inbox, 'pair', 'binary', `the binary message from ${from}`);
    if (m.bytes.length !== bytes.length || m.bytes.some((x, i) => x !== bytes[i])) {
      throw new Error(`${inbox.name}: the binary message from ${from} differs (${m.bytes.length} bytes)`);
    }
  };
  await Promise.all([receive(bInbox, 'A', bytesA), receive(aInbox, 'B', bytesB)]);
  log(`${COUNT} texts and a binary message each way in ${Date.now() - started} ms`);

  // A leaves: B's socket is closed (the test judges the codes).
  await a.evaluate(() => window.closeSocket('pair', 1000, 'bye'));
  const bClose = await expectFrom(bInbox, 'pair', 'close', 'B closed after A left');
  const aClose = await expectFrom(aInbox, 'pair', 'close', "A's own close");
  log(`pair closes: A ${JSON.stringify(aClose)}, B ${JSON.stringify(bClose)}`);
  return { aClose, bClose };
}

/** A `?ws=send` socket (first, and done before) a `?ws=receive` one. */
async function transfer(a, aInbox, b, bInbox, url) {
  // The sender first, its body complete before the receiver comes.
  await a.evaluate(([u]) => window.openSocket('send', u), [`${url}?ws=send`]);
  await expectFrom(aInbox, 'send', 'open', 'the sending socket open');
  const firstLog = await expectFrom(aInbox, 'send', 'text', "the sender's first log line");
  if (!firstLog.text.startsWith('[INFO] ')) throw new Error(`sender log: ${JSON.stringify(firstLog.text)}`);
  const pieces = [
    { text: 'first line ✓\n' },
    { bytes: pattern(700, 3) },
    { text: 'last line\n' },
  ];
  for (const p of pieces) {
    if (p.text !== undefined) await a.evaluate(([t]) => window.sendText('send', t), [p.text]);
    else await a.evaluate(([bytes]) => window.sendBytes('send', bytes), [p.bytes]);
  }
  await a.evaluate(() => window.closeSocket('send', 1000, 'done'));
  const expected = Buffer.concat(pieces.map((p) => (p.text !== undefined ? Buffer.from(p.text) : Buffer.from(p.bytes))));

  await b.evaluate(([u]) => window.openSocket('receive', u), [`${url}?ws=receive`]);
  await expectFrom(bInbox, 'receive', 'open', 'the receiving socket open');
  const got = [];
  let receiveClose;
  for (;;) {
    const m = await bInbox.next(LIMIT_MS, 'the transfer at the receiving socket');
    if (m.socket === 'receive' && m.type === 'binary') got.push(Buffer.from(m.bytes));
    else if (m.socket === 'receive' && m.type === 'socket error') log('the receiving socket reported an error');
    else if (m.socket === 'receive' && m.type === 'close') {
      receiveClose = m;
      break;
    } else throw new Error(`receiving socket: ${JSON.stringify(m)}`);
  }
  const received = Buffer.concat(got);
  if (!received.equals(expected)) {
    throw new Error(`the receiving socket got ${received.length} bytes, expected ${expected.length}: ${JSON.stringify(received.toString('latin1').slice(0, 80))}`);
  }
  const sendClose = await aInbox.nextOfType('close', LIMIT_MS, "the sending socket's close");
  log(`transfer closes: sending ${JSON.stringify(sendClose)}, receiving ${JSON.stringify(receiveClose)}`);

  return { bytes: received.length, messages: got.length, receiveClose, sendClose, firstLog: firstLog.text };
}
