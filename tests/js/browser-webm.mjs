// The screen-share seed, in a real browser: page A draws an animated
// canvas, records it with `MediaRecorder` (WebM, a 250 ms timeslice) and
// pushes every recorded chunk into a streaming upload; page B receives with
// a streaming `fetch` and must see a live, growing WebM stream (EBML magic
// first, more bytes on each of several reads over about two seconds) while
// the recording still runs. Then page A stops and closes its stream, and page
// B must have exactly the bytes page A recorded, which it can then play.
//
// Usage: node tests/js/browser-webm.mjs https://localhost:PORT
// Prints `ok` on success; diagnostics go to stderr. Run by tests/browser.rs.

import { Inbox, baseUrl, launch, log, main, openPage, randomPath, withTimeout } from './browser-common.mjs';

const WIDTH = 320;
const HEIGHT = 240;
const LIVE_MS = 2000; // watch the stream grow for at least this long
const MIN_READS = 3; // over at least this many reads
const READ_LIMIT_MS = 10_000; // the next piece must reach B within this

await main(80_000, async () => {
  const base = baseUrl();
  const url = base + randomPath('browser-webm');
  const { context, close } = await launch();
  try {
    const aInbox = new Inbox('page A');
    const bInbox = new Inbox('page B');
    const a = await openPage(context, 'page A', base + '/', aInbox);
    const b = await openPage(context, 'page B', base + '/', bInbox);

    // Page B: the receiver, reporting every read and keeping the bytes.
    await b.evaluate((url) => {
      const hex = (buf) => [...new Uint8Array(buf)].map((x) => x.toString(16).padStart(2, '0')).join('');
      window.receiving = (async () => {
        try {
          const res = await fetch(url);
          await tubesReport({
            type: 'headers',
            status: res.status,
            contentType: res.headers.get('content-type'),
          });
          const reader = res.body.getReader();
          const parts = [];
          let total = 0;
          let head = new Uint8Array(0);
          for (;;) {
            const { done, value } = await reader.read();
            const at = performance.timeOrigin + performance.now();
            if (done) break;
            parts.push(value);
            total += value.length;
            if (head.length < 4) {
              head = new Uint8Array([...head, ...value.subarray(0, 4 - head.length)]);
            }
            await tubesReport({ type: 'chunk', size: value.length, total, head: hex(head), at });
          }
          const blob = new Blob(parts, { type: 'video/webm' });
          const digest = hex(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
          await tubesReport({ type: 'done', total, digest });
          // What arrived must be a WebM a browser can open.
          const video = document.createElement('video');
          video.muted = true;
          const loaded = new Promise((resolve, reject) => {
            video.onloadedmetadata = resolve;
            video.onerror = () => reject(new Error(`video error ${video.error && video.error.message}`));
          });
          video.src = URL.createObjectURL(blob);
          await loaded;
          await tubesReport({ type: 'video', width: video.videoWidth, height: video.videoHeight });
        } catch (e) {
          await tubesReport({ type: 'error', message: `receiver: ${e}` });
        }
      })();
    }, url);

    // Page A: canvas, recorder, and the streaming upload.
    await a.evaluate(
      ({ url, width, height }) => {
        if (!MediaRecorder.isTypeSupported('video/webm')) {
          throw new Error('MediaRecorder does not support video/webm');
        }
        const hex = (buf) => [...new Uint8Array(buf)].map((x) => x.toString(16).padStart(2, '0')).join('');
        const canvas = document.createElement('canvas');
        canvas.width = width;
        canvas.height = height;
        document.body.appendChild(canvas);
        const ctx = canvas.getContext('2d');
        let frame = 0;
        const draw = () => {
          frame += 1;
          ctx.fillStyle = `hsl(${(frame * 7) % 360}, 80%, 45%)`;
          ctx.fillRect(0, 0, width, height);
          ctx.fillStyle = '#fff';
          ctx.font = '28px sans-serif';
          ctx.fillText(`frame ${frame}`, 20, height / 2);
          ctx.fillRect((frame * 6) % width, height - 40, 30, 30);
        };
        draw();
        const drawing = setInterval(draw, 50);

        let controller;
        const body = new ReadableStream({
          start(c) {
            controller = c;
          },
        });
        const recorder = new MediaRecorder(canvas.captureStream(10), { mimeType: 'video/webm' });
        const parts = [];
        let total = 0;
        // Chunks go into the upload in the order they were recorded.
        let chain = Promise.resolve();
        recorder.ondataavailable = (e) => {
          chain = chain.then(async () => {
            if (e.data.size === 0) return;
            const bytes = new Uint8Array(await e.data.arrayBuffer());
            controller.enqueue(bytes);
            parts.push(bytes);
            total += bytes.length;
            await tubesReport({ type: 'enqueued', size: bytes.length, total });
          });
        };
        recorder.onerror = (e) => tubesReport({ type: 'error', message: `recorder: ${e.error}` });
        window.stopRecording = () =>
          new Promise((resolve, reject) => {
            recorder.onstop = () => {
              // `dataavailable` fires before `stop`: the chain holds the last chunk.
              chain
                .then(async () => {
                  clearInterval(drawing);
                  controller.close();
                  const blob = new Blob(parts);
                  const digest = hex(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
                  resolve({ total, digest });
                })
                .catch(reject);
            };
            recorder.stop();
          });

        window.sending = (async () => {
          try {
            const res = await fetch(url, {
              method: 'POST',
              body,
              duplex: 'half',
              headers: { 'Content-Type': 'video/webm' },
            });
            await tubesReport({ type: 'headers', status: res.status });
            await tubesReport({ type: 'log', text: await res.text() });
          } catch (e) {
            await tubesReport({ type: 'error', message: `sender: ${e}` });
          }
        })();
        recorder.start(250);
      },
      { url, width: WIDTH, height: HEIGHT },
    );

    const headers = await bInbox.next(20_000, 'response headers of the receiver');
    if (headers.type !== 'headers' || headers.status !== 200) {
      throw new Error(`receiver: expected 200 headers, got ${JSON.stringify(headers)}`);
    }
    if (headers.contentType !== 'video/webm') {
      throw new Error(`receiver: Content-Type ${headers.contentType}`);
    }

    // A live, growing stream while the recording runs.
    const reads = [];
    for (;;) {
      const m = await bInbox.next(READ_LIMIT_MS, `read ${reads.length + 1} of the live WebM stream`);
      if (m.type !== 'chunk') {
        throw new Error(`receiver: expected more of the stream, got ${JSON.stringify(m)}`);
      }
      const previous = reads.length ? reads[reads.length - 1].total : 0;
      if (!(m.size > 0 && m.total > previous)) {
        throw new Error(`receiver: the stream did not grow: ${JSON.stringify(m)} after ${previous} bytes`);
      }
      reads.push(m);
      if (m.total >= 4 && m.head !== '1a45dfa3') {
        throw new Error(`receiver: the stream starts ${m.head}, not the EBML magic 1a45dfa3`);
      }
      if (reads.length >= MIN_READS && m.at - reads[0].at >= LIVE_MS) break;
    }
    log(
      `page B saw the stream grow over ${reads.length} reads in ${(reads[reads.length - 1].at - reads[0].at).toFixed(0)} ms:`,
      reads.map((r) => r.total).join(' '),
    );
    const recorded = aInbox.messages.filter((m) => m.type === 'enqueued');
    log(`page A had enqueued ${recorded.length} chunks, ${recorded.length ? recorded[recorded.length - 1].total : 0} bytes`);

    // Stop: the last chunk goes out, page A closes the stream.
    const sent = await withTimeout(a.evaluate(() => window.stopRecording()), 15_000, 'stopping the recorder');
    const done = await bInbox.nextOfType('done', READ_LIMIT_MS, 'end of the receiver response');
    log(`page A sent ${sent.total} bytes, page B received ${done.total}`);
    if (done.total !== sent.total || done.digest !== sent.digest) {
      throw new Error(`receiver got ${done.total} bytes (sha256 ${done.digest}), sender sent ${sent.total} (sha256 ${sent.digest})`);
    }
    const video = await bInbox.next(READ_LIMIT_MS, 'the received WebM opening in a <video>');
    if (video.type !== 'video' || video.width !== WIDTH || video.height !== HEIGHT) {
      throw new Error(`receiver: the received WebM opened as ${JSON.stringify(video)}`);
    }

    const aHeaders = await aInbox.nextOfType('headers', READ_LIMIT_MS, 'response headers of the sender');
    if (aHeaders.status !== 200) throw new Error(`sender: status ${aHeaders.status}`);
    const senderLog = await aInbox.nextOfType('log', READ_LIMIT_MS, 'log of the sender');
    for (const want of ['[INFO] Sent successfully!\n', '[INFO] All receiver(s) was/were received successfully.\n']) {
      if (!senderLog.text.includes(want)) {
        throw new Error(`sender log lacks ${JSON.stringify(want)}: ${JSON.stringify(senderLog.text)}`);
      }
    }
    await withTimeout(Promise.all([a.close(), b.close()]), 10_000, 'closing the pages');
  } finally {
    await close();
  }
});
