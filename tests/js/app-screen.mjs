// Screen sharing through the web app, in Chromium: the sharing page's
// "screen" is an animated canvas (getDisplayMedia needs a person to pick a
// screen, so the test's stand-in returns canvas.captureStream()); it is
// recorded, cut into parts and sent live (`?live`). Two viewer pages open
// the link the sharer shows, the second one a few seconds later (a late
// joiner), and each must play it in its <video>: metadata of the canvas's
// size, enough data to play (readyState >= 2), and a currentTime that
// keeps advancing. Then the sharer stops and the viewers are told.
//
// Usage: node tests/js/app-screen.mjs https://localhost:PORT
// Prints `ok` on success. Run by tests/browser_app.rs.

import { baseUrl, launch, log, main } from './browser-common.mjs';
import { FOREGROUND_ARGS, failOnError, openApp, poll, screenshots, waitForText } from './app-common.mjs';

const STEP_MS = 20_000;
const WIDTH = 640;
const HEIGHT = 360;

/** getDisplayMedia that "shares" an animated canvas. */
function fakeScreen({ width, height }) {
  navigator.mediaDevices.getDisplayMedia = async () => {
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    let frame = 0;
    setInterval(() => {
      frame += 1;
      ctx.fillStyle = `hsl(${(frame * 5) % 360}, 60%, 40%)`;
      ctx.fillRect(0, 0, width, height);
      ctx.fillStyle = '#fff';
      ctx.font = '48px sans-serif';
      ctx.fillText(`shared screen, frame ${frame}`, 30, height / 2);
      ctx.fillRect((frame * 8) % width, height - 60, 40, 40);
    }, 50);
    return canvas.captureStream(15);
  };
}

/** Waits until a viewer's video plays and its time has moved on by `by`. */
async function playing(viewer, by, what) {
  const start = await poll(
    viewer.page,
    () => {
      const v = document.querySelector('#share-video');
      return v.readyState >= 2 && v.currentTime > 0 ? { t: v.currentTime, w: v.videoWidth, h: v.videoHeight, r: v.readyState } : null;
    },
    null,
    STEP_MS,
    `${what}: the video starts playing`,
  );
  if (start.w !== WIDTH || start.h !== HEIGHT) throw new Error(`${what}: the video is ${start.w}x${start.h}`);
  const later = await poll(
    viewer.page,
    (t) => {
      const v = document.querySelector('#share-video');
      return v.currentTime >= t ? { t: v.currentTime, r: v.readyState, paused: v.paused } : null;
    },
    start.t + by,
    STEP_MS,
    `${what}: the video's time advances by ${by} s`,
  );
  log(`${what}: plays (readyState ${later.r}), currentTime ${start.t.toFixed(2)} -> ${later.t.toFixed(2)} s`);
  return later;
}

await main(90_000, async () => {
  const base = baseUrl();
  const { context, close } = await launch(FOREGROUND_ARGS);
  try {
    const sharer = await openApp(context, 'sharer', base, '/#screen', { init: [fakeScreen, { width: WIDTH, height: HEIGHT }] });
    await sharer.page.click('#share-start');
    await waitForText(sharer.page, '#share-message', /sharing live/, STEP_MS, 'the sharer starts');
    const name = await sharer.page.inputValue('#share-name');
    const link = (await sharer.page.locator('#share-commands code').first().textContent()).trim();
    if (link !== `${base}/#watch=${name}`) throw new Error(`the sharer shows ${link}`);

    const first = await openApp(context, 'viewer 1', base, `/#watch=${name}`);
    await playing(first, 1.5, 'viewer 1');
    const second = await openApp(context, 'viewer 2 (late)', base, `/#watch=${name}`);
    await playing(second, 1.5, 'viewer 2');
    await playing(first, 1, 'viewer 1 still');
    await screenshots(second.page, 'screen-watch');
    await screenshots(sharer.page, 'screen-share');

    await sharer.page.bringToFront();
    await sharer.page.click('#share-stop');
    await waitForText(sharer.page, '#share-message', /sharing stopped/, STEP_MS, 'the sharer stops');
    for (const v of [first, second]) {
      await waitForText(v.page, '#share-message', /ended/, STEP_MS, `${v.inbox.name} is told it ended`);
    }
    for (const p of [sharer, first, second]) failOnError(p.inbox);
  } finally {
    await close();
  }
});
