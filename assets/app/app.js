// The Tubes web app: the screens (send, receive, chat, screen) and their
// wiring. The transfers themselves are in tubes.js and screen.js.
//
// Received data is only ever shown as text (textContent) or handed over as
// a download; nothing from the relay is parsed as HTML or run. The page's
// Content-Security-Policy (no inline code, Trusted Types) enforces it.

import * as tubes from './tubes.js';
import { TubesError } from './tubes.js';
import * as screen from './screen.js';
import { qrEncode } from './vendor.js';

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets its text) and children. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  node.append(...children);
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';

function formatBytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let u = -1;
  do {
    n /= 1000;
    u++;
  } while (n >= 1000 && u < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[u]}`;
}

function errorText(e) {
  if (e instanceof TubesError) return e.message;
  if (e && e.name === 'AbortError') return 'cancelled';
  if (e instanceof TypeError) return `the connection to the relay failed (${e.message})`;
  return String(e && e.message ? e.message : e);
}

/** Progress with a rate: `update(done)` renders "x of y · rate/s". */
class Meter {
  constructor(bar, label, total) {
    this.bar = bar;
    this.label = label;
    this.total = total ?? null;
    this.start = performance.now();
    this.samples = [[this.start, 0]];
    this.done = 0;
    this.last = 0;
  }

  update(done) {
    this.done = done;
    const now = performance.now();
    if (now - this.last < 100 && done !== this.total) return;
    this.last = now;
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 3000) this.samples.shift();
    const [t0, d0] = this.samples[0];
    const rate = now > t0 ? ((done - d0) * 1000) / (now - t0) : 0;
    if (this.total) {
      this.bar.max = this.total;
      this.bar.value = Math.min(done, this.total);
    } else {
      this.bar.removeAttribute('value'); // indeterminate
    }
    const of = this.total ? ` of ${formatBytes(this.total)}` : '';
    this.label.textContent = `${formatBytes(done)}${of} · ${formatBytes(Math.round(rate))}/s`;
  }

  finish() {
    const seconds = (performance.now() - this.start) / 1000;
    if (this.total) this.bar.value = this.bar.max = this.total || 1;
    else {
      this.bar.max = 1;
      this.bar.value = 1;
    }
    this.label.textContent = `${formatBytes(this.done)} in ${seconds.toFixed(1)} s · ${formatBytes(Math.round(this.done / Math.max(seconds, 0.001)))}/s`;
  }
}

// ---------------------------------------------------------------- QR and commands

/** Draws `text` as a QR code (an SVG path) into `box`. */
function drawQr(box, text) {
  box.replaceChildren();
  const { data, size } = qrEncode(text, { ecc: 'M', border: 2 });
  let d = '';
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) if (data[y][x]) d += `M${x} ${y}h1v1h-1z`;
  }
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${size} ${size}`);
  svg.setAttribute('shape-rendering', 'crispEdges');
  svg.setAttribute('aria-hidden', 'true');
  const bg = document.createElementNS(SVG, 'rect');
  bg.setAttribute('width', size);
  bg.setAttribute('height', size);
  bg.setAttribute('class', 'qr-bg');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', d);
  path.setAttribute('class', 'qr-fg');
  svg.append(bg, path);
  box.append(svg);
  box.title = text;
  box.hidden = false;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Select and copy';
  }
  setTimeout(() => (button.textContent = 'Copy'), 1500);
}

/** Fills `list` with `[label, command]` rows, each with a Copy button. */
function showCommands(list, rows) {
  list.replaceChildren(
    ...rows.map(([label, command]) =>
      el(
        'li',
        {},
        el('span', { class: 'command-label', text: label }),
        el(
          'div',
          { class: 'command' },
          el('code', { text: command }),
          el('button', { type: 'button', class: 'copy', 'aria-label': `Copy: ${label}`, text: 'Copy', onclick: (e) => copy(command, e.currentTarget) }),
        ),
      ),
    ),
  );
}

function quote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

const origin = location.origin;

/** A link to this page that opens a screen (the fragment never reaches the relay). */
function appLink(key, value, extra = {}) {
  const params = new URLSearchParams({ [key]: value, ...extra });
  return `${origin}/#${params.toString()}`;
}

// ---------------------------------------------------------------- navigation

const SCREENS = ['send', 'receive', 'chat', 'screen'];

function showScreen(name) {
  for (const s of SCREENS) {
    $(`screen-${s}`).hidden = s !== name;
    const link = $(`nav-${s}`);
    if (s === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function route() {
  const hash = location.hash.slice(1);
  if (SCREENS.includes(hash)) return showScreen(hash);
  const params = new URLSearchParams(hash);
  if (params.has('recv')) {
    showScreen('receive');
    $('recv-target').value = params.get('recv');
    if (params.has('words')) $('recv-secret').value = params.get('words');
    if (params.has('pass')) {
      $('recv-more').open = true;
      $('recv-pass').focus();
      return;
    }
    if (params.has('n')) $('recv-n').value = params.get('n');
    startReceive();
  } else if (params.has('chat')) {
    showScreen('chat');
    $('chat-name').value = params.get('chat');
    startChat('b');
  } else if (params.has('watch')) {
    showScreen('screen');
    $('share-name').value = params.get('watch');
    startWatching();
  } else if (!hash) {
    showScreen('send');
  }
}

// ---------------------------------------------------------------- send

const send = {
  entries: [], // { name, file }
  aborter: null,
};

function renderFiles() {
  const list = $('file-list');
  list.replaceChildren(
    ...send.entries.map((entry, i) =>
      el(
        'li',
        {},
        el('span', { class: 'file-name', text: entry.name }),
        el('span', { class: 'file-size', text: formatBytes(entry.file.size) }),
        el('button', {
          type: 'button',
          class: 'remove',
          'aria-label': `Remove ${entry.name}`,
          text: '×',
          onclick: () => {
            send.entries.splice(i, 1);
            renderFiles();
          },
        }),
      ),
    ),
  );
  const total = tubes.payloadSize(send.entries);
  $('file-summary').textContent = send.entries.length
    ? `${send.entries.length} file${send.entries.length > 1 ? 's' : ''}, ${formatBytes(total)}${send.entries.length > 1 ? ' (sent as one tar archive)' : ''}`
    : '';
}

function addFiles(files, prefix = '') {
  for (const file of files) send.entries.push({ name: prefix + file.name, file });
  renderFiles();
}

/** Walks a dropped folder (FileSystemEntry) into entries. */
async function addEntry(entry, prefix) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    send.entries.push({ name: prefix + file.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await addEntry(child, `${prefix}${entry.name}/`);
    }
  }
}

function setupDrop() {
  const drop = $('drop');
  const input = $('file-input');
  input.addEventListener('change', () => {
    addFiles(input.files);
    input.value = '';
  });
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const items = [...(e.dataTransfer.items || [])];
    const entries = items.map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
    if (entries.length) {
      for (const entry of entries) await addEntry(entry, '');
      renderFiles();
    } else {
      addFiles(e.dataTransfer.files);
    }
  });
}

function sendStatus(text, kind = '') {
  const m = $('send-message');
  m.textContent = text;
  m.className = `message ${kind}`;
}

/** What the form says to send: `{ blob, meta, headers }`. */
function sendPayload() {
  const what = document.querySelector('input[name=what]:checked').value;
  if (what === 'text') {
    const text = $('send-text').value;
    if (!text) throw new TubesError('type some text to send');
    const blob = new Blob([text], { type: 'text/plain; charset=utf-8' });
    return { blob, meta: { kind: 'stream', size: blob.size }, headers: { 'Content-Type': 'text/plain; charset=utf-8' } };
  }
  if (!send.entries.length) throw new TubesError('choose or drop the files to send');
  if (send.entries.length === 1 && !send.entries[0].name.includes('/')) {
    const { file } = send.entries[0];
    const name = file.name;
    const ascii = /^[\x20-\x7e]*$/.test(name) && !/["\\]/.test(name);
    return {
      blob: file,
      meta: { kind: 'file', name, size: file.size, mtime: Math.floor(file.lastModified / 1000) },
      headers: {
        'Content-Type': file.type || 'application/octet-stream',
        'Content-Disposition': ascii ? `attachment; filename="${name}"` : `attachment; filename*=UTF-8''${encodeURIComponent(name)}`,
      },
    };
  }
  const top = new Set(send.entries.map((e) => e.name.split('/')[0]));
  const folder = top.size === 1 && send.entries[0].name.includes('/') ? [...top][0] : null;
  const blob = tubes.tarBlob(send.entries);
  const name = folder ?? 'files';
  return {
    blob,
    meta: { kind: 'tar', ...(folder ? { name: folder } : {}), size: tubes.payloadSize(send.entries) },
    headers: {
      'Content-Type': 'application/x-tar',
      'Content-Disposition': `attachment; filename="${name.replace(/["\\]/g, '_')}.tar"`,
    },
  };
}

async function startSend(event) {
  event.preventDefault();
  if (send.aborter) return;
  let payload;
  try {
    payload = sendPayload();
  } catch (e) {
    $('send-status').hidden = false;
    sendStatus(errorText(e), 'error');
    return;
  }
  const to = document.querySelector('input[name=to]:checked').value;
  const protect = to === 'code' ? 'code' : $('send-protect').value;
  const path = to === 'path' ? $('send-path').value.trim() : null;
  const n = to === 'path' ? Math.max(1, Number($('send-n').value) || 1) : 1;
  if (to === 'path' && !path) {
    $('send-status').hidden = false;
    sendStatus('give a path, or send under a new code', 'error');
    $('send-path').focus();
    return;
  }
  if (protect === 'words' && n > 1) {
    $('send-status').hidden = false;
    sendStatus('three words join exactly two sides: for several receivers use a passphrase (or no encryption)', 'error');
    return;
  }
  const pass = protect === 'pass' ? $('send-pass').value : null;
  if (protect === 'pass' && !pass) {
    $('send-status').hidden = false;
    sendStatus('type the passphrase', 'error');
    $('send-pass').focus();
    return;
  }
  const aborter = new AbortController();
  send.aborter = aborter;
  $('send-button').disabled = true;
  $('send-cancel').hidden = false;
  $('send-status').hidden = false;
  $('send-code-line').hidden = true;
  $('send-qr').hidden = true;
  $('send-commands').replaceChildren();
  $('send-progress').value = 0;
  $('send-rate').textContent = '';
  const meter = new Meter($('send-progress'), $('send-rate'), payload.blob.size);
  const server = quote(origin);
  const nArg = n > 1 ? ` -n ${n}` : '';
  try {
    let log;
    if (protect === 'none') {
      const url = tubes.relayUrl(path, { n: n > 1 ? n : undefined });
      const out = payload.meta.kind === 'stream' ? '' : ` > ${quote(payload.meta.name ?? (payload.meta.kind === 'tar' ? 'files.tar' : 'file'))}`;
      showCommands($('send-commands'), [
        ['With curl', `curl ${quote(url)}${out}`],
        ['With tubes', `tubes recv --path ${quote(path)}${nArg} -s ${server}`],
        ['In a browser', appLink('recv', path, n > 1 ? { n } : {})],
      ]);
      drawQr($('send-qr'), appLink('recv', path, n > 1 ? { n } : {}));
      sendStatus(n > 1 ? `waiting for ${n} receivers…` : 'waiting for the receiver…');
      log = await tubes.uploadBlob(path, payload.blob, {
        query: { n: n > 1 ? n : undefined },
        headers: payload.headers,
        signal: aborter.signal,
        onProgress: (sent) => {
          if (sent > 0) sendStatus('sending…');
          meter.update(sent);
        },
        onLog: (text) => {
          if (/Start sending/.test(text) && meter.done === 0) sendStatus('sending…');
        },
      });
    } else {
      let header;
      let keys;
      let dataPath;
      if (protect === 'pass') {
        sendStatus('deriving the key from the passphrase…');
        ({ header, keys } = await tubes.passphraseHeader(pass));
        dataPath = path;
        showCommands($('send-commands'), [
          ['With tubes', `tubes recv --path ${quote(path)} --pass PASSPHRASE${nArg} -s ${server}`],
          ['In a browser (asks for the passphrase)', appLink('recv', path, { pass: '', ...(n > 1 ? { n } : {}) })],
        ]);
        drawQr($('send-qr'), appLink('recv', path, { pass: '', ...(n > 1 ? { n } : {}) }));
        sendStatus(n > 1 ? `waiting for ${n} receivers…` : 'waiting for the receiver…');
      } else {
        sendStatus('making a code…');
        const offer = await tubes.offerCode({ path, signal: aborter.signal });
        dataPath = offer.channel;
        const code = offer.code;
        const args = path ? `--path ${quote(path)} ${code}` : code;
        const link = path ? appLink('recv', path, { words: code }) : appLink('recv', code);
        $('send-code').textContent = code;
        $('send-code-line').hidden = false;
        showCommands($('send-commands'), [
          ['With tubes', `tubes recv ${args} -s ${server}`],
          ['In a browser', link],
        ]);
        drawQr($('send-qr'), link);
        sendStatus('waiting for the receiver to enter the code…');
        keys = await offer.finish();
        header = { mode: 'code', confirm: keys.confirmSender };
        sendStatus('code confirmed: sending…');
      }
      let plain = 0;
      const stream = tubes.sealedStream(header, keys, payload.meta, tubes.readBlob(payload.blob), (k) => {
        plain += k;
        meter.update(plain);
      });
      log = await tubes.uploadStream(dataPath, stream, {
        query: { n: n > 1 ? n : undefined },
        headers: { 'Content-Type': 'application/octet-stream' },
        signal: aborter.signal,
      });
    }
    meter.finish();
    if (/\[INFO\] All receiver\(s\) was\/were received successfully\./.test(log)) {
      sendStatus('delivered: the relay confirms every receiver got it all.', 'ok');
      send.entries = [];
      renderFiles();
    } else if (/\[ERROR\]|aborted/.test(log)) {
      sendStatus(`not delivered: ${log.trim().split('\n').pop()}`, 'error');
    } else {
      sendStatus('sent.', 'ok');
    }
  } catch (e) {
    sendStatus(`failed: ${errorText(e)}`, 'error');
  } finally {
    send.aborter = null;
    $('send-button').disabled = false;
    $('send-cancel').hidden = true;
  }
}

function setupSend() {
  setupDrop();
  const sync = () => {
    const what = document.querySelector('input[name=what]:checked').value;
    $('files-box').hidden = what !== 'files';
    $('text-box').hidden = what !== 'text';
    const to = document.querySelector('input[name=to]:checked').value;
    $('path-box').hidden = to !== 'path';
    $('pass-box').hidden = $('send-protect').value !== 'pass';
  };
  for (const input of document.querySelectorAll('input[name=what], input[name=to], #send-protect')) {
    input.addEventListener('change', sync);
  }
  sync();
  $('send-form').addEventListener('submit', startSend);
  $('send-cancel').addEventListener('click', () => send.aborter?.abort());
  $('send-random-path').addEventListener('click', async () => {
    $('send-path').value = await tubes.randomName('p');
  });
}

// ---------------------------------------------------------------- receive

const recv = { aborter: null, url: null };

function recvStatus(text, kind = '') {
  const m = $('recv-message');
  m.textContent = text;
  m.className = `message ${kind}`;
}

function looksLikeText(bytes) {
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, Math.min(bytes.length, 4096)), { stream: true });
    return !/[\u0000-\u0008\u000e-\u001f]/.test(text);
  } catch {
    return false;
  }
}

/** Waits for the user to pick where the file goes: a writable file, or
 * null for a download from memory. */
function chooseSaving(name, size) {
  if (typeof window.showSaveFilePicker !== 'function') return Promise.resolve(null);
  $('recv-choice-text').textContent = `${name}${size != null ? `, ${formatBytes(size)}` : ''}: save it to disk as it arrives, or download it when it is all here?`;
  $('recv-choice').hidden = false;
  $('recv-disk').focus();
  return new Promise((resolve, reject) => {
    const done = (value) => {
      $('recv-choice').hidden = true;
      $('recv-disk').onclick = $('recv-memory').onclick = null;
      resolve(value);
    };
    $('recv-disk').onclick = async () => {
      try {
        const handle = await window.showSaveFilePicker({ suggestedName: name });
        done(await handle.createWritable());
      } catch (e) {
        if (e.name !== 'AbortError') reject(e);
      }
    };
    $('recv-memory').onclick = () => done(null);
    recv.aborter.signal.addEventListener('abort', () => reject(new DOMException('cancelled', 'AbortError')));
  });
}

function offerDownload(parts, name, type) {
  if (recv.url) URL.revokeObjectURL(recv.url);
  const blob = new Blob(parts, { type: 'application/octet-stream' });
  recv.url = URL.createObjectURL(blob);
  const link = $('recv-save');
  link.href = recv.url;
  link.download = name;
  link.textContent = `Save ${name} (${formatBytes(blob.size)})`;
  link.hidden = false;
  return type;
}

const TEXT_LIMIT = 2_000_000; // characters shown live; the rest is kept for saving

async function startReceive(event) {
  event?.preventDefault();
  if (recv.aborter) return;
  const target = $('recv-target').value.trim();
  if (!target) {
    $('recv-status').hidden = false;
    recvStatus('type the code or the path the sender gave you', 'error');
    $('recv-target').focus();
    return;
  }
  const secret = $('recv-secret').value.trim();
  const pass = $('recv-pass').value;
  const n = Math.max(1, Number($('recv-n').value) || 1);
  const aborter = new AbortController();
  recv.aborter = aborter;
  $('recv-button').disabled = true;
  $('recv-cancel').hidden = false;
  $('recv-status').hidden = false;
  $('recv-save').hidden = true;
  $('recv-text').hidden = true;
  $('recv-text').textContent = '';
  $('recv-progress').value = 0;
  $('recv-rate').textContent = '';
  let writable = null;
  try {
    let path;
    let expect = { mode: 'plain' };
    if (tubes.looksLikeCode(target)) {
      const code = tubes.parseCode(target);
      path = `tubes-${code.nameplate}`;
      recvStatus('waiting for the sender…');
      expect = { mode: 'code', keys: await tubes.answerCode(code.text, path, aborter.signal) };
    } else if (secret) {
      const code = tubes.parseCode(secret);
      if (!code || code.nameplate !== null) throw new TubesError(`${JSON.stringify(secret)} is not three words like amber-lunar-velvet`);
      path = target;
      recvStatus('waiting for the sender…');
      expect = { mode: 'code', keys: await tubes.answerCode(code.text, tubes.channelOf(path), aborter.signal) };
      path = tubes.channelOf(path);
    } else {
      path = target;
      if (pass) expect = { mode: 'passphrase', pass };
    }
    recvStatus('waiting for the sender…');
    const res = await tubes.receive(path, { n, signal: aborter.signal });
    if (expect.mode === 'passphrase') recvStatus('deriving the key from the passphrase…');
    const opened = await tubes.openResponse(res, expect);
    const { meta, pieces } = opened;
    aborter.signal.addEventListener('abort', opened.cancel);
    const lastSegment = decodeURIComponent(tubes.normalizePath(path).split('/').pop() || 'download');
    let name;
    let size = null;
    let kind; // 'file' or 'text'
    let first = null;
    if (meta) {
      size = Number.isSafeInteger(meta.size) ? meta.size : null;
      if (meta.kind === 'file') {
        kind = 'file';
        name = tubes.safeFileName(meta.name) ?? lastSegment;
      } else if (meta.kind === 'tar') {
        kind = 'file';
        size = null; // the archive is larger than the files in it
        name = `${tubes.safeFileName(meta.name) ?? 'files'}.tar`;
      } else {
        kind = 'sniff';
        name = `${lastSegment}.txt`;
      }
    } else {
      const length = res.headers.get('content-length');
      size = length !== null && /^\d+$/.test(length) ? Number(length) : null;
      const type = (res.headers.get('content-type') || '').toLowerCase();
      const disposition = tubes.dispositionName(res.headers.get('content-disposition'));
      if (disposition) {
        kind = 'file';
        name = tubes.safeFileName(disposition) ?? lastSegment;
      } else if (/^text\/|^application\/(json|x-ndjson)/.test(type)) {
        kind = 'text';
        name = `${lastSegment}.txt`;
      } else if (type && type !== 'application/octet-stream') {
        kind = 'file';
        name = lastSegment;
      } else {
        kind = 'sniff';
        name = lastSegment;
      }
    }
    if (kind === 'sniff') {
      const { value, done } = await pieces.next();
      first = done ? new Uint8Array(0) : value;
      kind = looksLikeText(first) ? 'text' : 'file';
      if (kind === 'text' && !/\.txt$/.test(name)) name = `${name}.txt`;
    }
    const meter = new Meter($('recv-progress'), $('recv-rate'), size);
    const parts = [];
    let received = 0;
    if (kind === 'text') {
      recvStatus('receiving text…');
      const view = $('recv-text');
      view.hidden = false;
      const decoder = new TextDecoder();
      let shown = 0;
      const show = (bytes) => {
        parts.push(bytes);
        received += bytes.length;
        meter.update(received);
        if (shown < TEXT_LIMIT) {
          const text = decoder.decode(bytes, { stream: true });
          shown += text.length;
          const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 40;
          view.append(document.createTextNode(text));
          if (atBottom) view.scrollTop = view.scrollHeight;
        }
      };
      if (first) show(first);
      for await (const piece of pieces) show(piece);
      view.append(document.createTextNode(decoder.decode()));
      if (shown >= TEXT_LIMIT) view.append(document.createTextNode('\n[… the rest is in the saved file]'));
      meter.finish();
      offerDownload(parts, name);
      recvStatus('received: the whole text is here.', 'ok');
    } else {
      writable = await chooseSaving(name, size);
      recvStatus(`receiving ${name}…`);
      const take = async (bytes) => {
        if (writable) await writable.write(bytes);
        else parts.push(bytes);
        received += bytes.length;
        meter.update(received);
      };
      if (first?.length) await take(first);
      for await (const piece of pieces) await take(piece);
      meter.finish();
      if (writable) {
        await writable.close();
        writable = null;
        recvStatus(`saved ${name} (${formatBytes(received)}).`, 'ok');
      } else {
        offerDownload(parts, name);
        $('recv-save').click();
        recvStatus(`received ${name} (${formatBytes(received)}): your browser saves it as a download.`, 'ok');
      }
    }
  } catch (e) {
    if (writable) await writable.abort().catch(() => {});
    recvStatus(`failed: ${errorText(e)}`, 'error');
  } finally {
    recv.aborter = null;
    $('recv-button').disabled = false;
    $('recv-cancel').hidden = true;
    $('recv-choice').hidden = true;
  }
}

function setupReceive() {
  $('recv-form').addEventListener('submit', startReceive);
  $('recv-cancel').addEventListener('click', () => recv.aborter?.abort());
}

// ---------------------------------------------------------------- chat

const chat = { aborter: null, sendLine: null, close: null };

function chatStatus(text, kind = '') {
  const m = $('chat-message');
  m.textContent = text;
  m.className = `message ${kind}`;
}

function chatLine(who, text) {
  const log = $('chat-log');
  log.append(el('li', { class: who }, el('span', { class: 'who', text: who === 'me' ? 'you' : 'them' }), el('span', { class: 'text', text })));
  log.scrollTop = log.scrollHeight;
}

/** An upload of lines as they are typed: a streaming request where the
 * browser can, a WebSocket `?ws=send` otherwise. */
function lineUpload(path, signal) {
  const encoder = new TextEncoder();
  if (tubes.canStreamUpload()) {
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
      },
    });
    const done = fetch(tubes.relayUrl(path), {
      method: 'PUT',
      body,
      duplex: 'half',
      headers: { 'Content-Type': 'text/plain; charset=utf-8' },
      cache: 'no-store',
      signal,
    });
    return {
      how: 'a streaming upload',
      send: (line) => controller.enqueue(encoder.encode(line)),
      close: () => controller.close(),
      done,
    };
  }
  const ws = new WebSocket(tubes.relayUrl(path, { ws: 'send' }).replace(/^http/, 'ws'));
  const pending = [];
  ws.onopen = () => {
    for (const p of pending.splice(0)) ws.send(p);
  };
  signal.addEventListener('abort', () => ws.close(4000));
  const done = new Promise((resolve, reject) => {
    ws.onclose = (e) => (e.code === 1000 ? resolve() : reject(new TubesError(`the connection closed (${e.code})`)));
  });
  return {
    how: 'a WebSocket (this browser cannot stream an upload)',
    send: (line) => (ws.readyState === WebSocket.OPEN ? ws.send(encoder.encode(line)) : pending.push(encoder.encode(line))),
    close: () => ws.close(1000),
    done,
  };
}

async function startChat(role) {
  if (chat.aborter) return;
  let name = $('chat-name').value.trim();
  if (role === 'a' && !name) {
    name = await tubes.randomName('chat');
    $('chat-name').value = name;
  }
  if (!name) {
    chatStatus('type the chat name the other side gave you', 'error');
    $('chat-room').hidden = false;
    $('chat-name').focus();
    return;
  }
  const mine = `${tubes.channelOf(name)}/${role}`;
  const theirs = `${tubes.channelOf(name)}/${role === 'a' ? 'b' : 'a'}`;
  const aborter = new AbortController();
  chat.aborter = aborter;
  $('chat-room').hidden = false;
  $('chat-log').replaceChildren();
  $('chat-start').disabled = $('chat-join').disabled = true;
  $('chat-leave').hidden = false;
  $('chat-line').disabled = false;
  const link = appLink('chat', name);
  if (role === 'a') {
    drawQr($('chat-qr'), link);
    showCommands($('chat-commands'), [
      ['The other side opens', link],
      ['Or reads with curl', `curl -sN ${quote(tubes.relayUrl(mine))}`],
      ['And writes with curl', `curl -sT - ${quote(tubes.relayUrl(theirs))}`],
    ]);
    $('chat-share').hidden = false;
  } else {
    $('chat-share').hidden = true;
  }
  // The upload has its own abort: leaving ends it cleanly once connected
  // (so the other side sees a whole stream), and aborts it only before.
  const uploadAborter = new AbortController();
  let connected = false;
  const upload = lineUpload(mine, uploadAborter.signal);
  chat.sendLine = (text) => {
    for (const line of text.split('\n')) {
      upload.send(`${line}\n`);
      chatLine('me', line);
    }
  };
  chat.close = () => {
    if (connected) upload.close();
    else uploadAborter.abort();
  };
  upload.done.catch(() => {});
  chatStatus(`waiting for the other side to join “${name}”…`);
  $('chat-line').focus();
  try {
    const res = await tubes.receive(theirs, { signal: aborter.signal });
    connected = true;
    chatStatus(`connected (sending through ${upload.how}).`, 'ok');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let partial = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      partial += value;
      const lines = partial.split('\n');
      partial = lines.pop();
      for (const line of lines) chatLine('them', line);
    }
    if (partial) chatLine('them', partial);
    chatStatus('the other side left the chat.');
  } catch (e) {
    chatStatus(aborter.signal.aborted ? 'you left the chat.' : `the chat broke off: ${errorText(e)}`, aborter.signal.aborted ? '' : 'error');
  } finally {
    try {
      chat.close();
    } catch {
      /* already closed */
    }
    chat.aborter = null;
    chat.sendLine = null;
    $('chat-start').disabled = $('chat-join').disabled = false;
    $('chat-leave').hidden = true;
    $('chat-line').disabled = true;
  }
}

function setupChat() {
  $('chat-start').addEventListener('click', () => startChat('a'));
  $('chat-join').addEventListener('click', () => startChat('b'));
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    startChat('b');
  });
  $('chat-send').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('chat-line');
    if (!chat.sendLine || !input.value) return;
    chat.sendLine(input.value);
    input.value = '';
  });
  $('chat-leave').addEventListener('click', () => {
    chat.close?.();
    chat.aborter?.abort();
  });
}

// ---------------------------------------------------------------- screen

const screenState = { session: null };

function shareStatus(text, kind = '') {
  const m = $('share-message');
  m.textContent = text;
  m.className = `message ${kind}`;
}

function screenBusy(busy) {
  $('share-start').disabled = $('share-watch').disabled = busy;
  $('share-stop').hidden = !busy;
}

async function startSharing() {
  if (screenState.session) return;
  $('share-box').hidden = false;
  let name = $('share-name').value.trim();
  if (!name) {
    name = await tubes.randomName('screen');
    $('share-name').value = name;
  }
  let stream;
  try {
    if (!navigator.mediaDevices?.getDisplayMedia) throw new TubesError('this browser cannot share its screen');
    stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
  } catch (e) {
    shareStatus(`cannot share: ${errorText(e)}`, 'error');
    return;
  }
  const video = $('share-video');
  video.srcObject = stream;
  video.hidden = false;
  video.play().catch(() => {});
  const link = appLink('watch', name);
  drawQr($('share-qr'), link);
  showCommands($('share-commands'), [['Viewers open', link]]);
  $('share-links').hidden = false;
  try {
    const session = screen.share(tubes.channelOf(name), stream, {
      onStats: ({ bytes }) => shareStatus(`sharing live: ${formatBytes(bytes)} sent. Anyone with the link can watch.`, 'ok'),
    });
    screenState.session = session;
    screenBusy(true);
    shareStatus('starting…');
    await session.done;
    shareStatus('sharing stopped.');
  } catch (e) {
    shareStatus(`sharing failed: ${errorText(e)}`, 'error');
    for (const t of stream.getTracks()) t.stop();
  } finally {
    screenState.session = null;
    video.srcObject = null;
    screenBusy(false);
  }
}

async function startWatching(event) {
  event?.preventDefault();
  if (screenState.session) return;
  $('share-box').hidden = false;
  const name = $('share-name').value.trim();
  if (!name) {
    shareStatus('type the name of the screen to watch', 'error');
    $('share-name').focus();
    return;
  }
  $('share-links').hidden = true;
  const video = $('share-video');
  video.srcObject = null;
  video.hidden = false;
  const session = screen.watch(tubes.channelOf(name), video, {
    onState: (s) => shareStatus(s === 'live' ? `watching “${name}” live.` : s, s === 'live' ? 'ok' : ''),
  });
  screenState.session = session;
  screenBusy(true);
  try {
    await session.done;
  } catch (e) {
    shareStatus(screenState.stopping ? 'stopped watching.' : `watching failed: ${errorText(e)}`, screenState.stopping ? '' : 'error');
  } finally {
    screenState.session = null;
    screenState.stopping = false;
    screenBusy(false);
  }
}

function setupScreen() {
  $('share-start').addEventListener('click', startSharing);
  $('share-form').addEventListener('submit', startWatching);
  $('share-stop').addEventListener('click', () => {
    screenState.stopping = true;
    screenState.session?.stop();
  });
}

// ---------------------------------------------------------------- start

setupSend();
setupReceive();
setupChat();
setupScreen();
window.addEventListener('hashchange', route);
route();
document.documentElement.dataset.ready = 'true';
