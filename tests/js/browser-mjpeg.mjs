// M-JPEG through a live path, watched by a late-joining <img> in a real
// browser.
//
// 1. Page A draws solid-colour frames on a canvas and encodes each with
//    `canvas.toBlob('image/jpeg')`; Node gets them as base64.
// 2. Node streams them, round and round, to `PUT PATH?live` as
//    `multipart/x-mixed-replace; boundary=frame` (HTTP/1.1 over TLS), each
//    part written in three pieces so that joiners can arrive mid-part.
// 3. After some parts have gone out, raw late joiners (Node GETs) must each
//    start exactly at `--frame` and get a whole part: its JPEG is
//    byte-for-byte one of the frames.
// 4. Page B (the viewer) joins late with `<img src="PATH?live">`; once it
//    shows an image, a screenshot is saved to SCREENSHOT and the page draws
//    the image on a canvas: every sampled pixel must be the same frame
//    colour (within JPEG tolerance). Then the image must change to another
//    frame by itself: the viewer is live.
// 5. Node ends the upload; the sender's log gives the byte count.
//
// Usage: node tests/js/browser-mjpeg.mjs https://localhost:PORT PATH SCREENSHOT
// Prints `result {...}` and `ok`; diagnostics go to stderr. Run by
// tests/browser_live.rs.

import { Inbox, launch, log, main, openPage, withTimeout } from './browser-common.mjs';
import { args, download, result, upload } from './browser-live-common.mjs';

const WIDTH = 96;
const HEIGHT = 72;
const COLOURS = [
  [220, 30, 30],
  [30, 170, 60],
  [30, 60, 220],
  [230, 210, 30],
  [200, 40, 200],
  [30, 200, 210],
];
const TOLERANCE = 32; // per channel, for JPEG (4:2:0) of a solid colour
const PART_MS = 100; // one part every 100 ms: the camera's pace, not a synchronisation
const EARLY_PARTS = 6; // parts out before anyone joins
const RAW_JOINERS = 5;
const LIMIT_MS = 15_000;

const part = (jpeg) =>
  Buffer.concat([
    Buffer.from(`--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ${jpeg.length}\r\n\r\n`),
    jpeg,
    Buffer.from('\r\n'),
  ]);

await main(40_000, async () => {
  const { base, path, screenshot } = args(['path', 'screenshot']);
  const { context, close } = await launch();
  let sender = null;
  try {
    // 1. The frames, encoded by Chromium.
    const aInbox = new Inbox('page A');
    const a = await openPage(context, 'page A', base + '/', aInbox);
    const encoded = await withTimeout(
      a.evaluate(
        async ({ colours, width, height }) => {
          const canvas = document.createElement('canvas');
          canvas.width = width;
          canvas.height = height;
          const ctx = canvas.getContext('2d');
          const out = [];
          for (const [r, g, b] of colours) {
            ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
            ctx.fillRect(0, 0, width, height);
            const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
            const bytes = new Uint8Array(await blob.arrayBuffer());
            let binary = '';
            for (const x of bytes) binary += String.fromCharCode(x);
            out.push(btoa(binary));
          }
          return out;
        },
        { colours: COLOURS, width: WIDTH, height: HEIGHT },
      ),
      LIMIT_MS,
      'encoding the frames',
    );
    const frames = encoded.map((b64) => Buffer.from(b64, 'base64'));
    for (const [i, f] of frames.entries()) {
      if (!(f[0] === 0xff && f[1] === 0xd8 && f.at(-2) === 0xff && f.at(-1) === 0xd9)) {
        throw new Error(`frame ${i} is not a JPEG (${f.subarray(0, 4).toString('hex')}...)`);
      }
      if (f.includes('--frame')) throw new Error(`frame ${i} contains the boundary`);
    }
    log(`frames: ${frames.map((f) => f.length).join(', ')} bytes`);
    await a.close();

    // 2. The camera: parts in three pieces each, until told to stop.
    sender = upload(base, `${path}?live`, { 'Content-Type': 'multipart/x-mixed-replace; boundary=frame' });
    let partsSent = 0;
    let bytesSent = 0;
    let stop = false;
    let partWaiters = [];
    const camera = (async () => {
      for (let i = 0; !stop; i++) {
        const bytes = part(frames[i % frames.length]);
        const cuts = [0, 30, Math.floor(bytes.length / 2), bytes.length];
        for (let c = 0; c < 3; c++) {
          await sender.write(bytes.subarray(cuts[c], cuts[c + 1]));
          await new Promise((r) => setTimeout(r, PART_MS / 3));
        }
        bytesSent += bytes.length;
        partsSent += 1;
        partWaiters.forEach((w) => w());
      }
    })();
    camera.catch(() => {});
    const partsOut = (n) => {
      let check;
      return withTimeout(
        new Promise((resolve) => {
          check = () => partsSent >= n && resolve();
          partWaiters.push(check);
          check();
        }),
        LIMIT_MS,
        `${n} parts sent`,
      ).finally(() => (partWaiters = partWaiters.filter((w) => w !== check)));
    };
    const log0 = await Promise.race([
      sender.response.then(() => 'the sender response ended early'),
      partsOut(EARLY_PARTS).then(() => null),
    ]);
    if (log0) throw new Error(log0);

    // 3. Raw late joiners, at different points of a part.
    const joins = [];
    for (let j = 0; j < RAW_JOINERS; j++) {
      const at = partsSent;
      const res = await withTimeout(download(base, `${path}?live`), LIMIT_MS, 'a raw late joiner');
      if (res.status !== 200 || res.headers['content-type'] !== 'multipart/x-mixed-replace; boundary=frame') {
        throw new Error(`raw joiner: ${res.status} ${res.headers['content-type']}`);
      }
      let got = await res.read(200, LIMIT_MS);
      if (!got.subarray(0, 9).equals(Buffer.from('--frame\r\n'))) {
        throw new Error(`raw joiner ${j} started mid-part: ${JSON.stringify(got.subarray(0, 40).toString('latin1'))}`);
      }
      const headEnd = got.indexOf('\r\n\r\n');
      const length = Number(/Content-Length: (\d+)/.exec(got.subarray(0, headEnd).toString())?.[1]);
      got = await res.read(headEnd + 4 + length + 2, LIMIT_MS);
      const jpeg = got.subarray(headEnd + 4, headEnd + 4 + length);
      const index = frames.findIndex((f) => f.equals(jpeg));
      if (index < 0) throw new Error(`raw joiner ${j}: its first part (${length} bytes) is none of the frames`);
      res.close();
      joins.push({ afterParts: at, frame: index });
      await partsOut(at + 1);
    }
    log(`raw joiners: ${JSON.stringify(joins)}`);

    // 4. The viewer, joining late.
    const bInbox = new Inbox('page B');
    const b = await openPage(context, 'page B', base + '/', bInbox);
    await b.setViewportSize({ width: 320, height: 240 });
    const joinedAfter = partsSent;
    await b.evaluate(
      ({ src, width, height }) => {
        document.body.replaceChildren();
        document.body.style.margin = '0';
        document.body.style.background = '#fff';
        const img = document.createElement('img');
        img.id = 'cam';
        img.width = width;
        img.height = height;
        img.src = src;
        document.body.appendChild(img);
        const canvas = document.createElement('canvas');
        canvas.width = width;
        canvas.height = height;
        // The colour of the image now at a few points (centre and inside
        // each corner).
        window.samples = () => {
          const ctx = canvas.getContext('2d', { willReadFrequently: true });
          ctx.clearRect(0, 0, width, height);
          ctx.drawImage(img, 0, 0, width, height);
          const points = [
            [width / 2, height / 2],
            [6, 6],
            [width - 7, 6],
            [6, height - 7],
            [width - 7, height - 7],
          ];
          return points.map(([x, y]) => [...ctx.getImageData(x, y, 1, 1).data].slice(0, 3));
        };
      },
      { src: `${base}${path}?live`, width: WIDTH, height: HEIGHT },
    );
    await b.waitForFunction(() => document.getElementById('cam').naturalWidth > 0, null, { timeout: LIMIT_MS });
    const natural = await b.evaluate(() => {
      const img = document.getElementById('cam');
      return [img.naturalWidth, img.naturalHeight];
    });
    if (natural[0] !== WIDTH || natural[1] !== HEIGHT) throw new Error(`the viewer shows a ${natural} image`);
    await b.screenshot({ path: screenshot, clip: { x: 0, y: 0, width: WIDTH, height: HEIGHT } });

    const near = (p, c) => p.every((v, i) => Math.abs(v - c[i]) <= TOLERANCE);
    const whichFrame = (samples) => {
      const index = COLOURS.findIndex((c) => near(samples[0], c));
      if (index < 0 || !samples.every((s) => near(s, COLOURS[index]))) {
        throw new Error(`the viewer shows no whole frame: pixels ${JSON.stringify(samples)}`);
      }
      return index;
    };
    const firstSamples = await b.evaluate(() => window.samples());
    const firstFrame = whichFrame(firstSamples);
    log(`the viewer joined after ${joinedAfter} parts and shows frame ${firstFrame}: ${JSON.stringify(firstSamples)}`);
    // Live: the image is replaced by another whole frame.
    await b.waitForFunction(
      ([first, colours, tolerance]) => {
        const [centre] = window.samples();
        return colours.some(
          (c, i) => i !== first && centre.every((v, k) => Math.abs(v - c[k]) <= tolerance),
        );
      },
      [firstFrame, COLOURS, TOLERANCE],
      { timeout: LIMIT_MS },
    );
    const laterSamples = await b.evaluate(() => window.samples());
    const laterFrame = whichFrame(laterSamples);
    log(`then frame ${laterFrame}: ${JSON.stringify(laterSamples)}`);

    // 5. The end.
    stop = true;
    await withTimeout(camera, LIMIT_MS, 'the camera loop');
    await sender.end();
    const senderLog = await withTimeout(sender.response, LIMIT_MS, 'the sender response');
    const want = `[INFO] Live stream ended after ${bytesSent} bytes.\n`;
    if (senderLog.status !== 200 || !senderLog.text.includes(want)) {
      throw new Error(`sender: ${senderLog.status} ${JSON.stringify(senderLog.text)}, expected ${JSON.stringify(want)}`);
    }
    result({
      screenshot,
      frameBytes: frames.map((f) => f.length),
      rawJoins: joins,
      viewerJoinedAfterParts: joinedAfter,
      viewerFrames: [firstFrame, laterFrame],
      samples: [firstSamples, laterSamples],
      partsSent,
      bytesSent,
    });
    await withTimeout(b.close(), 10_000, 'closing page B');
  } finally {
    sender?.destroy();
    await close();
  }
});
