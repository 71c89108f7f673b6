// WebRTC signaled only through a Tubes room, in a real browser. Two pages
// of one headless Chromium open RTCPeerConnections with no STUN or TURN
// server (host candidates only) and exchange offer, answer and ICE
// candidates through the room on a fresh path, each over one of the room's
// transports:
//
// - page A is a WebSocket member (`wss://HOST/PATH?ws=room`);
// - page B is an SSE member (`new EventSource(PATH?room)`, whose first event
//   `joined` carries its member id) and posts with
//   `fetch(PATH?room&from=ID, {method: 'POST'})`.
//
// Every step waits for an event:
// 1. A joins (its socket opens), then B joins (its `joined` event).
// 2. B posts `ready`; A gets it (as a text message) and creates a data
//    channel and an offer, which it sends; B answers; both send their ICE
//    candidates as they are gathered, then `done` when gathering ends.
// 3. When the data channel opens, A sends "hello over webrtc"; B, on
//    receiving it, replies "hello back over webrtc".
// 4. Each page reports what it received (data channel and room) to Node.
//
// Chromium flags: none beyond browser-common.mjs's. Without camera or
// microphone permission Chromium hides host addresses behind mDNS names
// (`<uuid>.local`); both pages live in one browser, which answers for its
// own names by multicast on the machine's interface, so ICE still pairs
// host candidates (the selected pair is logged). Where multicast DNS does
// not work, the connection never opens: the failure log says so, and
// `--disable-features=WebRtcHideLocalIpsWithMdns` is the flag to add.
//
// Usage: node tests/js/browser-rtc.mjs https://localhost:PORT
// Prints `result {JSON}` (what each page received) and `ok`; diagnostics go
// to stderr. Run by tests/browser_rtc.rs.

import { Inbox, baseUrl, launch, log, main, openPage, randomPath, withTimeout } from './browser-common.mjs';

const HELLO = 'hello over webrtc';
const REPLY = 'hello back over webrtc';
const JOIN_LIMIT_MS = 5_000; // a member must be in the room within this
const CONNECT_LIMIT_MS = 15_000; // from B's `ready` to the open data channel
const MESSAGE_LIMIT_MS = 5_000; // each later step must happen within this
const SCRIPT_LIMIT_MS = 35_000; // the whole script, Chromium's start included

/**
 * Waits, bounded, until `inbox` has had a message of `type`, whenever it
 * came (the order of events on two pages is not fixed); fails at once on an
 * error reported by either page.
 */
function seen(inbox, type, ms, what) {
  let check;
  const arrived = new Promise((resolve, reject) => {
    check = () => {
      for (const i of inboxes) {
        const error = i.messages.find((m) => m.type === 'error');
        if (error) return reject(new Error(`${i.name}: ${error.message}`));
      }
      const m = inbox.messages.find((m) => m.type === type);
      if (m) resolve(m);
    };
    // Every inbox wakes every waiter on each message.
    inbox.waiters.push(check);
    check();
  });
  return withTimeout(arrived, ms, `${inbox.name}: ${what}`).finally(() => {
    inbox.waiters = inbox.waiters.filter((w) => w !== check);
  });
}
const inboxes = new Set();

// Runs in both pages: the peer connection and its handling of signaling
// messages, whatever carries them. `send(object)` posts one message to the
// room; incoming messages go through `window.signal(text)`, one at a time
// and in order (each one's async work ends before the next starts, so a
// candidate is never added before the description it belongs to).
function setUpPeer({ role, hello, reply }) {
  const report = (m) => tubesReport({ ...m, role }).catch(() => {});
  const fail = (what, e) => report({ type: 'error', message: `${what}: ${e && e.stack ? e.stack : e}` });
  // No ICE servers: only host candidates, which on one machine suffice.
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.pc = pc;
  window.received = { channel: [], signals: [], candidatesSent: [], candidatesReceived: [] };

  pc.onicecandidate = (e) => {
    if (e.candidate) {
      window.received.candidatesSent.push(e.candidate.candidate);
      window.send({ type: 'candidate', candidate: e.candidate.toJSON() });
    } else {
      window.send({ type: 'done' });
    }
  };
  pc.onconnectionstatechange = () => {
    report({ type: 'state', state: pc.connectionState });
    if (pc.connectionState === 'failed') fail('peer connection', 'connectionState failed');
  };

  const useChannel = (channel) => {
    window.channel = channel;
    channel.onopen = () => {
      report({ type: 'channel-open', label: channel.label });
      if (hello) channel.send(hello);
    };
    channel.onmessage = (e) => {
      window.received.channel.push(e.data);
      report({ type: 'channel-message', data: e.data });
      if (reply) channel.send(reply);
    };
    channel.onerror = (e) => fail('data channel', e.error);
  };
  pc.ondatachannel = (e) => useChannel(e.channel);

  const handle = async (text) => {
    const m = JSON.parse(text);
    window.received.signals.push(m.type);
    switch (m.type) {
      case 'ready': {
        // The other member is in the room: start.
        useChannel(pc.createDataChannel('chat'));
        await pc.setLocalDescription(await pc.createOffer());
        window.send({ type: 'offer', description: pc.localDescription.toJSON() });
        break;
      }
      case 'offer': {
        await pc.setRemoteDescription(m.description);
        await pc.setLocalDescription(await pc.createAnswer());
        window.send({ type: 'answer', description: pc.localDescription.toJSON() });
        break;
      }
      case 'answer':
        await pc.setRemoteDescription(m.description);
        break;
      case 'candidate':
        window.received.candidatesReceived.push(m.candidate.candidate);
        await pc.addIceCandidate(m.candidate);
        break;
      case 'done':
        // The other side has sent all its candidates.
        report({ type: 'candidates-done' });
        break;
      default:
        throw new Error(`unexpected signaling message ${text}`);
    }
  };
  let queue = Promise.resolve();
  window.signal = (text) => {
    queue = queue.then(() => handle(text)).catch((e) => fail(`signaling message ${text.slice(0, 200)}`, e));
  };
}

await main(SCRIPT_LIMIT_MS, async () => {
  const base = baseUrl();
  const path = randomPath('browser-rtc');
  const { context, close } = await launch();
  try {
    const aInbox = new Inbox('page A');
    const bInbox = new Inbox('page B');
    inboxes.add(aInbox).add(bInbox);
    const a = await openPage(context, 'page A', base + '/', aInbox);
    const b = await openPage(context, 'page B', base + '/', bInbox);
    await a.evaluate(setUpPeer, { role: 'A', hello: HELLO, reply: null });
    await b.evaluate(setUpPeer, { role: 'B', hello: null, reply: REPLY });

    // 1a. A joins over a WebSocket; its messages go out in order on it.
    await a.evaluate((path) => {
      const ws = new WebSocket(`wss://${location.host}${path}?ws=room`);
      window.ws = ws;
      window.send = (m) => ws.send(JSON.stringify(m));
      ws.onopen = () => tubesReport({ type: 'joined', transport: 'websocket' });
      ws.onmessage = (e) => {
        if (typeof e.data !== 'string') {
          tubesReport({ type: 'error', message: `room message arrived as ${e.data}, not as text` });
          return;
        }
        window.signal(e.data);
      };
      ws.onerror = () => tubesReport({ type: 'error', message: 'WebSocket error' });
      ws.onclose = (e) => tubesReport({ type: 'error', message: `WebSocket closed: ${e.code} ${e.reason}` });
    }, path);
    const aJoined = await aInbox.next(JOIN_LIMIT_MS, 'the WebSocket member joining');
    if (aJoined.type !== 'joined') throw new Error(`page A: expected to join, got ${JSON.stringify(aJoined)}`);

    // 1b. B joins over SSE; its messages are POSTs, one after the other so
    // they reach the room in the order they were sent.
    await b.evaluate((path) => {
      const es = new EventSource(`${path}?room`);
      window.events = es;
      let member = null;
      let posting = Promise.resolve();
      window.send = (m) => {
        const body = JSON.stringify(m);
        posting = posting.then(async () => {
          try {
            const res = await fetch(`${path}?room&from=${member}`, { method: 'POST', body });
            const text = await res.text();
            if (res.status !== 200) throw new Error(`${res.status} ${text}`);
          } catch (e) {
            tubesReport({ type: 'error', message: `POST ${m.type}: ${e}` });
          }
        });
      };
      es.addEventListener('joined', (e) => {
        member = e.data;
        tubesReport({ type: 'joined', transport: 'sse', member });
      });
      es.onmessage = (e) => window.signal(e.data);
      // A text message must stay text: not a base64 `binary` event.
      es.addEventListener('binary', (e) =>
        tubesReport({ type: 'error', message: `room message arrived as event: binary (${e.data.slice(0, 80)})` }),
      );
      es.onerror = () => tubesReport({ type: 'error', message: `EventSource error, readyState ${es.readyState}` });
    }, path);
    const bJoined = await bInbox.next(JOIN_LIMIT_MS, 'the SSE member joining');
    if (bJoined.type !== 'joined' || !/^\d+$/.test(bJoined.member)) {
      throw new Error(`page B: expected a joined event with a member id, got ${JSON.stringify(bJoined)}`);
    }
    log(`A joined ${path} over a WebSocket, B over SSE as member ${bJoined.member}`);

    // 2. B says it is there; A starts the offer/answer exchange.
    const started = Date.now();
    try {
      await b.evaluate(() => window.send({ type: 'ready' }));
      await seen(aInbox, 'channel-open', CONNECT_LIMIT_MS, 'the data channel opening');
      log(`data channel open on page A ${Date.now() - started} ms after B's ready`);

      // 3. The messages over the data channel, and the end of each side's
      // candidates (so that every candidate sent has been received).
      const atB = await seen(bInbox, 'channel-message', MESSAGE_LIMIT_MS, JSON.stringify(HELLO));
      const atA = await seen(aInbox, 'channel-message', MESSAGE_LIMIT_MS, JSON.stringify(REPLY));
      log(`page B got ${JSON.stringify(atB.data)}, page A got ${JSON.stringify(atA.data)}`);
      await seen(aInbox, 'candidates-done', MESSAGE_LIMIT_MS, "the end of B's candidates");
      await seen(bInbox, 'candidates-done', MESSAGE_LIMIT_MS, "the end of A's candidates");
    } catch (e) {
      // What each side had when it failed: states and candidates.
      for (const [name, page] of [['A', a], ['B', b]]) {
        const state = await withTimeout(
          page.evaluate(() => ({
            connection: window.pc.connectionState,
            ice: window.pc.iceConnectionState,
            gathering: window.pc.iceGatheringState,
            signaling: window.pc.signalingState,
            ...window.received,
          })),
          5_000,
          `the state of page ${name}`,
        ).catch((err) => err.message);
        log(`page ${name} at the failure: ${JSON.stringify(state)}`);
      }
      if (/timed out/.test(e.message)) {
        log('(host candidates named *.local are mDNS names: if they cannot be resolved here, the peers never connect)');
      }
      throw e;
    }

    // 4. What each page received, and the pair of candidates ICE chose.
    const collect = (page) => page.evaluate(() => window.received);
    const [receivedA, receivedB] = await withTimeout(Promise.all([collect(a), collect(b)]), 10_000, 'collecting results');
    for (const [name, r] of [['A', receivedA], ['B', receivedB]]) {
      log(`page ${name}: signals ${r.signals.join(',')}; sent candidates ${JSON.stringify(r.candidatesSent)}`);
    }
    const pair = await withTimeout(
      a.evaluate(async () => {
        const stats = [...(await window.pc.getStats()).values()];
        const byId = new Map(stats.map((s) => [s.id, s]));
        const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
        const selected = transport && byId.get(transport.selectedCandidatePairId);
        const describe = (c) => c && `${c.candidateType} ${c.protocol} ${c.address}:${c.port}`;
        return selected && { local: describe(byId.get(selected.localCandidateId)), remote: describe(byId.get(selected.remoteCandidateId)) };
      }),
      10_000,
      'the selected candidate pair',
    );
    log(`page A's selected candidate pair: ${JSON.stringify(pair)}`);
    process.stdout.write(`result ${JSON.stringify({ a: receivedA, b: receivedB, pair })}\n`);
    await withTimeout(Promise.all([a.close(), b.close()]), 10_000, 'closing the pages');
  } finally {
    await close();
  }
});
