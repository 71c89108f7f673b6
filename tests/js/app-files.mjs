// Files through the web app, in Chromium, with curl and tar on the other
// side (all bytes checked by sha256):
// - page A sends a file to a path; curl receives it, with its name;
// - curl sends a file to a path; page B receives it as a download;
// - page A sends three files (one with a long non-ASCII name) to a path as
//   one tar archive; `curl | tar x` unpacks them; the same for two files
//   dropped on the page;
// - page A sends a file under a code (encrypted); page B saves it to disk
//   as it arrives (the File System Access API; the test's picker gives a
//   file of the origin's private file system, as no dialog can be clicked
//   in a headless browser).
//
// Usage: node tests/js/app-files.mjs https://localhost:PORT
// Prints `ok` on success. Run by tests/browser_app.rs.

import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseUrl, launch, log, main, randomPath } from './browser-common.mjs';
import {
  FOREGROUND_ARGS,
  failOnError,
  openApp,
  receiveInApp,
  receivedDownload,
  run,
  screenshots,
  sendFromApp,
  sha256,
  shownCode,
  waitForText,
} from './app-common.mjs';

const STEP_MS = 30_000;

/** A picker that hands out files of the origin private file system. */
function fakeSavePicker() {
  window.showSaveFilePicker = async ({ suggestedName }) => {
    const root = await navigator.storage.getDirectory();
    return root.getFileHandle(suggestedName, { create: true });
  };
}

await main(100_000, async () => {
  const base = baseUrl();
  const dir = mkdtempSync(join(tmpdir(), 'tubes-app-files-'));
  const { context, close } = await launch(FOREGROUND_ARGS);
  try {
    const a = await openApp(context, 'page A', base, '/#send');
    const b = await openApp(context, 'page B', base, '/#receive', { init: fakeSavePicker });

    // Page to curl.
    const name = 'résumé 1.bin';
    const file = join(dir, name);
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    writeFileSync(file, bytes);
    const path = randomPath('app-file').slice(1);
    const out = join(dir, 'from-page.bin');
    const headers = join(dir, 'headers.txt');
    const curl = run('curl', ['-sSk', '--fail', '-D', headers, '-o', out, `${base}/${path}`], { ms: STEP_MS });
    await sendFromApp(a.page, { files: [file], to: 'path', path });
    const got = await curl;
    if (got.code !== 0) throw new Error(`curl failed: ${got.stderr}`);
    if (sha256(readFileSync(out)) !== sha256(bytes)) throw new Error('curl received other bytes than the page sent');
    const head = readFileSync(headers, 'utf8').toLowerCase();
    if (!head.includes("content-disposition: attachment; filename*=utf-8''r%c3%a9sum%c3%a9%201.bin")) {
      throw new Error(`curl got no file name: ${head}`);
    }
    if (!head.includes(`content-length: ${bytes.length}`)) throw new Error(`curl got no length: ${head}`);
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
    const rate = await a.page.locator('#send-rate').textContent();
    if (!/MB in [\d.]+ s · [\d.]+ [kMG]?B\/s/.test(rate)) throw new Error(`the sender's rate line says ${JSON.stringify(rate)}`);
    await screenshots(a.page, 'send-file');
    log(`page to curl: ${bytes.length} bytes, sha256 equal; ${rate}`);

    // Curl to page.
    const path2 = randomPath('app-curl').slice(1);
    await receiveInApp(b.page, { target: path2 });
    await waitForText(b.page, '#recv-message', /waiting for the sender/, STEP_MS, 'B waits');
    const download = receivedDownload(b.page, dir, STEP_MS);
    const sent = await run('curl', ['-sSk', '--fail', '-T', file, `${base}/${path2}`], { ms: STEP_MS });
    if (sent.code !== 0) throw new Error(`curl -T failed: ${sent.stderr}`);
    const d = await download;
    if (d.sha256 !== sha256(bytes)) throw new Error('the page received other bytes than curl sent');
    if (d.name !== path2) throw new Error(`the download is named ${d.name}, expected ${path2}`);
    await waitForText(b.page, '#recv-message', /received/, STEP_MS, 'B says it is done');
    log('curl to page: sha256 equal');

    // Several files as one tar, unpacked by tar.
    const names = ['a.txt', `${'ünïcødé '.repeat(12)}long name.txt`, 'c.bin'];
    const contents = [Buffer.from('first file\n'), Buffer.from('second file, long name\n'), randomBytes(1024 * 1024 + 5)];
    const files = names.map((n, i) => {
      const p = join(dir, n);
      writeFileSync(p, contents[i]);
      return p;
    });
    const path3 = randomPath('app-tar').slice(1);
    const unpacked = join(dir, 'unpacked');
    mkdirSync(unpacked);
    const tar = run('sh', ['-c', `curl -sSk --fail '${base}/${path3}' | tar -x -C '${unpacked}'`], { ms: STEP_MS });
    await sendFromApp(a.page, { files, to: 'path', path: path3 });
    const tarred = await tar;
    if (tarred.code !== 0) throw new Error(`curl | tar x failed: ${tarred.stderr}`);
    names.forEach((n, i) => {
      if (sha256(readFileSync(join(unpacked, n))) !== sha256(contents[i])) throw new Error(`${n} differs after tar x`);
    });
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told the tar was delivered');
    log('three files as one tar: unpacked, each sha256 equal');

    // Files dropped on the page (a drag and drop made in the page: the
    // drop event carries a DataTransfer with two files).
    const path4 = randomPath('app-drop').slice(1);
    await a.page.bringToFront();
    await a.page.click('#nav-send');
    await a.page.check('input[name=what][value=files]');
    await a.page.evaluate(() => {
      const data = new DataTransfer();
      data.items.add(new File(['dropped one\n'], 'one.txt', { type: 'text/plain' }));
      data.items.add(new File(['dropped two\n'], 'two.txt', { type: 'text/plain' }));
      const drop = document.querySelector('#drop');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        drop.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
      }
    });
    const listed = await a.page.locator('#file-list .file-name').allTextContents();
    if (JSON.stringify(listed) !== JSON.stringify(['one.txt', 'two.txt'])) throw new Error(`the dropped files list as ${JSON.stringify(listed)}`);
    const unpacked2 = join(dir, 'unpacked2');
    mkdirSync(unpacked2);
    const tar2 = run('sh', ['-c', `curl -sSk --fail '${base}/${path4}' | tar -x -C '${unpacked2}'`], { ms: STEP_MS });
    await a.page.check('input[name=to][value=path]');
    await a.page.fill('#send-path', path4);
    await a.page.selectOption('#send-protect', 'none');
    await a.page.click('#send-button');
    if ((await tar2).code !== 0) throw new Error('curl | tar x of the dropped files failed');
    for (const [n, text] of [['one.txt', 'dropped one\n'], ['two.txt', 'dropped two\n']]) {
      if (readFileSync(join(unpacked2, n), 'utf8') !== text) throw new Error(`${n} differs after the drop`);
    }
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told the dropped files were delivered');
    log('two dropped files: sent as a tar, unpacked, equal');

    // Page to page under a code, saved to disk as it arrives.
    const big = join(dir, 'big.bin');
    const bigBytes = randomBytes(8 * 1024 * 1024 + 1);
    writeFileSync(big, bigBytes);
    await sendFromApp(a.page, { files: [big], to: 'code' });
    const code = await shownCode(a.page);
    await receiveInApp(b.page, { target: code });
    await b.page.waitForSelector('#recv-choice:not([hidden])', { timeout: STEP_MS });
    await screenshots(b.page, 'receive-file');
    await b.page.click('#recv-disk');
    await waitForText(b.page, '#recv-message', /saved big\.bin/, STEP_MS, 'B saves to disk');
    const onDisk = await b.page.evaluate(async () => {
      const root = await navigator.storage.getDirectory();
      const f = await (await root.getFileHandle('big.bin')).getFile();
      const digest = await crypto.subtle.digest('SHA-256', await f.arrayBuffer());
      return { size: f.size, sha256: Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, '0')).join('') };
    });
    if (onDisk.sha256 !== sha256(bigBytes)) throw new Error(`the file on disk differs: ${JSON.stringify(onDisk)}`);
    await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
    log(`page to page under a code, streamed to disk: ${onDisk.size} bytes, sha256 equal`);

    failOnError(a.inbox);
    failOnError(b.inbox);
  } finally {
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
});
