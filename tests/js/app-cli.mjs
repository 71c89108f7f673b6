// End-to-end encryption between the web app and the real `tubes` client,
// both ways, every byte checked by sha256:
// - `tubes send FILE` (a code) to page B, and a wrong code typed in the
//   page fails on both sides;
// - page A under a code to `tubes recv CODE`, one file and then two files
//   (a tar the client unpacks), and one file from a page on the WebSocket
//   fallback (`?upload=ws`);
// - `tubes send FOLDER` to page B (a download of FOLDER.tar, unpacked here);
// - passphrases both ways (`--path P --pass`), and `--path P --encrypt` to
//   page B with the three words the client printed.
//
// Usage: node tests/js/app-cli.mjs https://localhost:PORT --tubes=/path/to/tubes
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
  sendFromApp,
  sha256,
  shownCode,
  waitForText,
} from './app-common.mjs';

const STEP_MS = 30_000;

await main(100_000, async () => {
  const base = baseUrl();
  const tubes = process.argv.find((a) => a.startsWith('--tubes='))?.slice('--tubes='.length);
  if (!tubes) throw new Error('usage: app-cli.mjs URL --tubes=PATH');
  const dir = mkdtempSync(join(tmpdir(), 'tubes-app-cli-'));
  // No config file of the machine's user: only what the command line says.
  const env = { HOME: dir, XDG_CONFIG_HOME: join(dir, 'config') };
  const client = (args, opts = {}) => {
    let listener = null;
    const seen = { out: '', err: '' };
    const done = run(tubes, [...args, '-s', base, '-k'], {
      ms: STEP_MS,
      env,
      cwd: opts.cwd ?? dir,
      onOutput: (out, err) => {
        seen.out = out;
        seen.err = err;
        listener?.();
      },
    });
    /** Waits for `pattern` in the client's output. */
    const waitFor = (pattern, what) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out: ${what}; the client said ${JSON.stringify(seen)}`)), STEP_MS);
        listener = () => {
          const m = pattern.exec(seen.out + seen.err);
          if (m) {
            clearTimeout(timer);
            listener = null;
            resolve(m);
          }
        };
        listener();
        done.then((r) => reject(new Error(`the client ended (${r.code}) before ${what}: ${r.stderr}`)), reject);
      });
    return { done, waitFor };
  };
  const expectExit = async (c, code, what) => {
    const r = await c.done;
    if (r.code !== code) throw new Error(`${what}: tubes exited ${r.code}, expected ${code}: ${r.stderr}`);
    return r;
  };

  const { context, close } = await launch(FOREGROUND_ARGS);
  try {
    const a = await openApp(context, 'page A', base, '/#send');
    const b = await openApp(context, 'page B', base, '/#receive');

    const file = join(dir, 'report.bin');
    const bytes = randomBytes(2 * 1024 * 1024 + 3);
    writeFileSync(file, bytes);

    // tubes send (a code) to the page.
    {
      const c = client(['send', file]);
      const [, code] = await c.waitFor(/Code: (\S+)/, 'the code');
      const download = receivedDownload(b.page, dir, STEP_MS);
      await receiveInApp(b.page, { target: code });
      const d = await download;
      if (d.sha256 !== sha256(bytes) || d.name !== 'report.bin') throw new Error(`page got ${JSON.stringify(d)}`);
      await expectExit(c, 0, 'tubes send');
      log(`tubes send -> page under ${code}: sha256 equal`);
    }

    // A wrong code fails on both sides.
    {
      const c = client(['send', file]);
      const [, code] = await c.waitFor(/Code: (\S+)/, 'the code');
      const wrong = code.replace(/-[a-z]+$/, (w) => (w === '-zebra' ? '-apple' : '-zebra'));
      await receiveInApp(b.page, { target: wrong });
      const shown = await b.page.evaluate(async () => {
        for (let i = 0; i < 300; i++) {
          const m = document.querySelector('#recv-message');
          if (m.classList.contains('error')) return m.textContent;
          await new Promise((r) => setTimeout(r, 100));
        }
        return null;
      });
      if (!/wrong code/.test(shown || '')) throw new Error(`a wrong code in the page shows ${JSON.stringify(shown)}`);
      const r = await expectExit(c, 4, 'tubes send with a wrong code on the other side');
      if (!/wrong code/.test(r.stderr)) throw new Error(`tubes send said ${r.stderr}`);
      log('a wrong code fails on both sides');
    }

    // The page (a code) to tubes recv: one file, then two (a tar).
    {
      await sendFromApp(a.page, { files: [file], to: 'code' });
      const code = await shownCode(a.page);
      const out = join(dir, 'recv1');
      mkdirSync(out);
      await expectExit(client(['recv', code], { cwd: out }), 0, 'tubes recv');
      if (sha256(readFileSync(join(out, 'report.bin'))) !== sha256(bytes)) throw new Error('tubes recv wrote other bytes');
      await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
      log(`page -> tubes recv under ${code}: sha256 equal`);

      const second = join(dir, 'notes ü.txt');
      writeFileSync(second, 'second file\n');
      await sendFromApp(a.page, { files: [file, second], to: 'code' });
      const code2 = await shownCode(a.page);
      const out2 = join(dir, 'recv2');
      mkdirSync(out2);
      await expectExit(client(['recv', code2], { cwd: out2 }), 0, 'tubes recv of two files');
      if (sha256(readFileSync(join(out2, 'report.bin'))) !== sha256(bytes)) throw new Error('report.bin differs after unpacking');
      if (readFileSync(join(out2, 'notes ü.txt'), 'utf8') !== 'second file\n') throw new Error('notes ü.txt differs after unpacking');
      await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told the tar was delivered');
      log('page (two files) -> tubes recv: unpacked, equal');
    }

    // The same from a page on the WebSocket fallback (as a browser that
    // cannot stream an upload sends): the client cannot tell.
    {
      const c = await openApp(context, 'page C (WebSocket)', base, '/?upload=ws#send');
      await sendFromApp(c.page, { files: [file], to: 'code' });
      const code = await shownCode(c.page);
      const out = join(dir, 'recv-ws');
      mkdirSync(out);
      await expectExit(client(['recv', code], { cwd: out }), 0, 'tubes recv from the WebSocket fallback');
      if (sha256(readFileSync(join(out, 'report.bin'))) !== sha256(bytes)) throw new Error('WebSocket fallback: tubes recv wrote other bytes');
      await waitForText(c.page, '#send-message', /sent/, STEP_MS, 'C is told it was sent');
      failOnError(c.inbox);
      await c.page.close();
      log(`page on the WebSocket fallback -> tubes recv under ${code}: sha256 equal`);
    }

    // tubes send FOLDER to the page: a .tar download.
    {
      const folder = join(dir, 'album');
      mkdirSync(join(folder, 'inner'), { recursive: true });
      const inner = randomBytes(300_000);
      writeFileSync(join(folder, 'inner', 'photo.bin'), inner);
      writeFileSync(join(folder, 'readme.txt'), 'hello\n');
      const c = client(['send', folder]);
      const [, code] = await c.waitFor(/Code: (\S+)/, 'the code');
      const download = receivedDownload(b.page, dir, STEP_MS);
      await receiveInApp(b.page, { target: code });
      const d = await download;
      if (d.name !== 'album.tar') throw new Error(`the folder arrived as ${d.name}`);
      const x = join(dir, 'x');
      mkdirSync(x);
      const t = await run('tar', ['-x', '-f', d.file, '-C', x], { ms: STEP_MS });
      if (t.code !== 0) throw new Error(`tar x: ${t.stderr}`);
      if (sha256(readFileSync(join(x, 'album', 'inner', 'photo.bin'))) !== sha256(inner)) throw new Error('photo.bin differs');
      await expectExit(c, 0, 'tubes send of a folder');
      log('tubes send FOLDER -> page: album.tar, unpacked, equal');
    }

    // Passphrases, both ways.
    {
      const pass = 'correct horse battery';
      const path = randomPath('app-pass').slice(1);
      const c = client(['send', '--path', path, '--pass', pass, file]);
      const download = receivedDownload(b.page, dir, STEP_MS);
      await receiveInApp(b.page, { target: path, pass });
      const d = await download;
      if (d.sha256 !== sha256(bytes)) throw new Error('passphrase: the page got other bytes');
      await expectExit(c, 0, 'tubes send --pass');

      const path2 = randomPath('app-pass').slice(1);
      await sendFromApp(a.page, { files: [file], to: 'path', path: path2, protect: 'pass', pass });
      const out = join(dir, 'recv3.bin');
      await expectExit(client(['recv', '--path', path2, '--pass', pass, '-o', out]), 0, 'tubes recv --pass');
      if (sha256(readFileSync(out)) !== sha256(bytes)) throw new Error('passphrase: tubes recv wrote other bytes');
      await waitForText(a.page, '#send-message', /delivered/, STEP_MS, 'A is told it was delivered');
      log('passphrase both ways: equal');
    }

    // --path P --encrypt to the page, with the printed words.
    {
      const path = randomPath('app-words').slice(1);
      const c = client(['send', '--path', path, '--encrypt', file]);
      const [, words] = await c.waitFor(/tubes recv --path \S+ ([a-z]+-[a-z]+-[a-z]+)/, 'the words');
      const download = receivedDownload(b.page, dir, STEP_MS);
      await receiveInApp(b.page, { target: path, secret: words });
      const d = await download;
      if (d.sha256 !== sha256(bytes)) throw new Error('--encrypt: the page got other bytes');
      await expectExit(c, 0, 'tubes send --path --encrypt');
      log(`tubes send --path --encrypt -> page with ${words}: equal`);
    }

    failOnError(a.inbox);
    failOnError(b.inbox);
  } finally {
    await close();
    rmSync(dir, { recursive: true, force: true });
  }
});
