// The web app's text transfers and its hygiene, in Chromium:
// - the page's CSP header is the strict one, the app's files have their
//   types, and sending to the reserved prefix /-/ is refused;
// - every control is labelled, and the keyboard alone opens a screen;
// - the encryption test vectors of docs/encryption.md, computed by the
//   page's own modules (WebCrypto + the bundled @noble/curves);
// - text from page A to page B over a plain path, then under a code
//   (end to end encrypted);
// - the script-free form at /noscript (whose CSP allows no script at all)
//   to the app's receive screen;
// - hostile HTML sent with `Content-Type: text/html` by curl shows as
//   text in the app: no element is made from it, no dialog opens.
//
// Usage: node tests/js/app-text.mjs https://localhost:PORT
// Prints `ok` on success. Run by tests/browser_app.rs.

import { baseUrl, launch, log, main, randomPath } from './browser-common.mjs';
import { FOREGROUND_ARGS, failOnError, openApp, poll, receiveInApp, run, screenshots, sendFromApp, shownCode, waitForText } from './app-common.mjs';

const TEXT = 'hello from page A\nsecond line: ünïcødé ✓ ελληνικά\n<b>not bold</b>\n';
const STEP_MS = 20_000;

await main(100_000, async () => {
  const base = baseUrl();
  const { context, close } = await launch(FOREGROUND_ARGS);
  try {
    const a = await openApp(context, 'page A', base, '/#send');
    const b = await openApp(context, 'page B', base, '/#receive');

    // How long the app took to load, and what it loaded.
    const load = await a.page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const files = performance.getEntriesByType('resource').filter((r) => r.name.includes('/-/'));
      return {
        ms: Math.round(Math.max(nav.domContentLoadedEventEnd, ...files.map((r) => r.responseEnd))),
        bytes: nav.encodedBodySize + files.reduce((n, r) => n + r.encodedBodySize, 0),
        files: files.length + 1,
      };
    });
    log(`the app loaded ${load.files} files, ${load.bytes} bytes, in ${load.ms} ms`);

    // Files of the app and the reserved prefix.
    const checks = await a.page.evaluate(async () => {
      const js = await fetch('/-/app.js');
      const css = await fetch('/-/app.css');
      const missing = await fetch('/-/missing.js');
      const put = await fetch('/-/app.js', { method: 'PUT', body: 'x' });
      return {
        js: js.headers.get('content-type'),
        nosniff: js.headers.get('x-content-type-options'),
        etag: js.headers.get('etag'),
        css: css.headers.get('content-type'),
        missing: missing.status,
        put: put.status,
        putText: await put.text(),
      };
    });
    log('asset checks', JSON.stringify(checks));
    if (checks.js !== 'text/javascript; charset=utf-8' || checks.css !== 'text/css; charset=utf-8' || checks.nosniff !== 'nosniff' || !checks.etag) {
      throw new Error(`asset headers: ${JSON.stringify(checks)}`);
    }
    if (checks.missing !== 404) throw new Error(`an unknown asset gave ${checks.missing}`);
    if (checks.put !== 400 || !checks.putText.startsWith("[ERROR] Cannot send to the reserved path '/-/app.js'")) {
      throw new Error(`sending to /-/app.js: ${checks.put} ${checks.putText}`);
    }

    // The vectors of docs/encryption.md, by the page's modules.
    const v = await a.page.evaluate(async () => {
      const t = await import('/-/tubes.js');
      const utf8 = new TextEncoder();
      const code = '1234-amber-lunar-velvet';
      const s = await t.cpace(code, 'tubes-1234', 'sender', 3n);
      const r = await t.cpace(code, 'tubes-1234', 'receiver', 5n);
      const k = await t.deriveKeys(utf8.encode('tubes test secret'));
      const p = await t.passphraseKeys('correct horse', new Uint8Array(16).fill(0x11), 1000);
      const sealer = new t.Sealer(new Uint8Array(32).fill(7));
      return {
        Ys: t.hex(s.share),
        Yr: t.hex(r.share),
        isk: t.hex(await s.finish(r.share)),
        isk2: t.hex(await r.finish(s.share)),
        data: t.hex(k.data),
        cs: t.hex(k.confirmSender),
        cr: t.hex(k.confirmReceiver),
        pass: t.hex(p.data),
        r0: t.hex(await sealer.seal(utf8.encode('hello'), false)),
        r1: t.hex(await sealer.seal(new Uint8Array(0), true)),
      };
    });
    const want = {
      Ys: '18919a87cb13c764772bf3c07d17145dd8871f1d9fadf89752e431effba1820a',
      Yr: 'd6a8ec8250e49200efbdb01e08563608a6b3d385982b81316eac3dcde3fc443a',
      isk: '36ffda54e5a98df945b1af83d18817102c322d36b922406c9a9ebd5fba0828e070d1a0f2a9b03036cfd8bf667564fed22adc43fd9f406ed7fd6d189750378c30',
      data: 'f624ccc467815ca531dc6b8ab989c8d249d15eedb3efcfe527a5567d23f4c70d',
      cs: '22b317a2222790cb02da6db28e6ff155bab550f2a0dac82bf9063d47780a6b69',
      cr: '553380a07d9b42e9dfed113994e1b715b69a9ae3500e40f953e633761cda2bef',
      pass: 'e46ea057f7245a53df2ad343b5dc985244e7990433e0992690719f43cb302c0b',
      r0: '0000001509bdc8de94089f9b5b053e9c291825d9c994051df6',
      r1: '800000104932c4c75dbe41aa63bb36ba3b0ace0e',
    };
    want.isk2 = want.isk;
    for (const [k, x] of Object.entries(want)) {
      if (v[k] !== x) throw new Error(`vector ${k}: page computed ${v[k]}, docs/encryption.md says ${x}`);
    }
    log('the page computes every vector of docs/encryption.md');

    // Every control has a name a screen reader can say, and the screens
    // can be reached with the keyboard alone.
    const unnamed = await b.page.evaluate(() =>
      [...document.querySelectorAll('input, select, textarea, button')]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map((e) => e.id || e.outerHTML.slice(0, 60)),
    );
    if (unnamed.length) throw new Error(`controls without a label: ${JSON.stringify(unnamed)}`);
    await b.page.bringToFront();
    await b.page.evaluate(() => document.activeElement?.blur());
    let reached = null;
    for (let i = 0; i < 10 && reached !== 'nav-chat'; i++) {
      await b.page.keyboard.press('Tab');
      reached = await b.page.evaluate(() => document.activeElement?.id);
    }
    if (reached !== 'nav-chat') throw new Error('Tab does not reach the Chat link');
    await b.page.keyboard.press('Enter');
    // The app routes on `hashchange`, which fires after the key press
    // returns: wait for the chat screen rather than look at once.
    await poll(
      b.page,
      () => !document.querySelector('#screen-chat').hidden && document.querySelector('#screen-receive').hidden,
      null,
      STEP_MS,
      'Enter on the Chat link opens the chat',
    );
    const outline = await b.page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    if (outline === 'none') throw new Error('the focused link shows no outline');
    log('every control is labelled; the keyboard reaches and opens a screen, with a visible focus');

    // Text over a plain path, receiver first.
    const path = randomPath('app-text').slice(1);
    await receiveInApp(b.page, { target: path });
    await waitForText(b.page, '#recv-message', /waiting for the sender/, STEP_MS, 'B waits');
    await sendFromApp(a.page, { text: TEXT, to: 'path', path });
    await waitForText(b.page, '#recv-message', /received: the whole text is here/, STEP_MS, 'B receives the text');
    const got = await b.page.locator('#recv-text').textContent();
    if (got !== TEXT) throw new Error(`B shows ${JSON.stringify(got)}, A sent ${JSON.stringify(TEXT)}`);
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
    log('plain text from page A reached page B');

    // Text under a code: encrypted end to end, sender first.
    await sendFromApp(a.page, { text: TEXT.repeat(3), to: 'code' });
    const code = await shownCode(a.page);
    if (!/^\d{4}(-[a-z]+){3}$/.test(code)) throw new Error(`the code shown is ${JSON.stringify(code)}`);
    const qr = await a.page.locator('#send-qr svg path').getAttribute('d');
    if (!qr || qr.length < 100) throw new Error('no QR code is shown');
    const commands = await a.page.locator('#send-commands code').allTextContents();
    if (!commands.some((c) => c === `tubes recv ${code} -s ${base}`)) throw new Error(`commands shown: ${JSON.stringify(commands)}`);
    if (!commands.some((c) => c === `${base}/#recv=${code}`)) throw new Error(`no receive link in ${JSON.stringify(commands)}`);
    await screenshots(a.page, 'send-code');
    await receiveInApp(b.page, { target: code.replace(/-/g, ' ').toUpperCase() });
    await waitForText(b.page, '#recv-message', /received: the whole text is here/, STEP_MS, 'B receives under the code');
    const got2 = await b.page.locator('#recv-text').textContent();
    if (got2 !== TEXT.repeat(3)) throw new Error(`B shows ${JSON.stringify(got2)} under the code`);
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
    await screenshots(b.page, 'receive-text');
    log('encrypted text from page A reached page B under a code');

    // The script-free form to the app.
    const path2 = randomPath('app-noscript').slice(1);
    const form = await context.newPage();
    const formResponse = await form.goto(`${base}/noscript?path=${path2}&mode=text`);
    if (!/^default-src 'none'; style-src 'nonce-/.test(formResponse.headers()['content-security-policy'] || '')) {
      throw new Error('/noscript lost its policy');
    }
    await form.fill('#input_text', 'sent without JavaScript\n');
    await receiveInApp(b.page, { target: path2 });
    await form.click('button:has-text("Send")');
    await waitForText(b.page, '#recv-message', /received: the whole text is here/, STEP_MS, 'B receives from /noscript');
    const got3 = await b.page.locator('#recv-text').textContent();
    // A form sends a textarea's line ends as CRLF.
    if (got3 !== 'sent without JavaScript\r\n') throw new Error(`B shows ${JSON.stringify(got3)} from /noscript`);
    await form.close();
    log('/noscript reached the app');

    // Hostile HTML from curl: shown as text, never as markup or code.
    const path3 = randomPath('app-html').slice(1);
    const hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script><b>bold?</b>\n';
    await receiveInApp(b.page, { target: path3 });
    const curl = await run('curl', ['-sSk', '--fail', '-T', '-', '-H', 'Content-Type: text/html', `${base}/${path3}`], {
      input: hostile,
      ms: STEP_MS,
    });
    if (curl.code !== 0) throw new Error(`curl failed: ${curl.stderr}`);
    await waitForText(b.page, '#recv-message', /received/, STEP_MS, 'B receives the HTML');
    const shown = await b.page.evaluate(() => ({
      text: document.querySelector('#recv-text').textContent,
      elements: document.querySelectorAll('#recv-text *').length,
      images: document.images.length,
    }));
    if (shown.text !== hostile || shown.elements !== 0) throw new Error(`the HTML was not shown as text: ${JSON.stringify(shown)}`);
    log('hostile HTML shows as text');

    failOnError(a.inbox);
    failOnError(b.inbox);
  } finally {
    await close();
  }
});
