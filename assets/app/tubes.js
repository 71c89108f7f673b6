// The transfer layer of the Tubes web app, without any DOM: relay URLs,
// codes, the end-to-end encryption of docs/encryption.md (CPace on
// ristretto255, HKDF, AES-256-GCM records, PBKDF2 passphrases) with
// WebCrypto and @noble/curves, tar streams, and uploads (a streaming
// fetch where the browser can, a WebSocket `?ws=send` otherwise).
//
// Everything here speaks exactly what `tubes send` and `tubes recv` speak,
// so the page and the command line interoperate both ways.

import { ristretto255, ristretto255_hasher } from './vendor.js';

export const MAGIC = new TextEncoder().encode('TUBES/1\n');
const TAG = 32;
const SALT_LEN = 16;
export const PBKDF2_ITERATIONS = 600_000;
const PBKDF2_MAX_ITERATIONS = 10_000_000;
const FINAL_BIT = 0x80000000;
const TAG_LEN = 16;
const MAX_RECORD = 1 << 20;
export const RECORD_SIZE = 256 * 1024;
const MAX_META = 64 * 1024;
const CODE_ATTEMPTS = 5;

const utf8 = new TextEncoder();

/** A failure to show the user as it is. */
export class TubesError extends Error {}

// ---------------------------------------------------------------- bytes

export function concat(parts) {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function u32be(x) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, x >>> 0);
  return b;
}

/** `u32be(len(x)) || x`. */
function lp(x) {
  return concat([u32be(x.length), x]);
}

/** Constant-time comparison of two byte strings of equal length. */
export function tagsEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function random(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

/** A uniform integer in [0, n). */
function randomBelow(n) {
  const limit = Math.floor(0x100000000 / n) * n;
  for (;;) {
    const x = new DataView(random(4).buffer).getUint32(0);
    if (x < limit) return x % n;
  }
}

/** Bytes received in pieces, read back in pieces of any size. */
export class ByteQueue {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }

  push(chunk) {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
  }

  /** The first `n` bytes (n <= length), removed from the queue. */
  take(n) {
    const out = this.peek(n);
    let left = n;
    while (left > 0) {
      const first = this.chunks[0];
      if (first.length <= left) {
        this.chunks.shift();
        left -= first.length;
      } else {
        this.chunks[0] = first.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
    return out;
  }

  /** A copy of the first `n` bytes (n <= length). */
  peek(n) {
    if (this.chunks.length && this.chunks[0].length >= n) return this.chunks[0].slice(0, n);
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of this.chunks) {
      if (at >= n) break;
      const part = c.subarray(0, n - at);
      out.set(part, at);
      at += part.length;
    }
    return out;
  }
}

// ---------------------------------------------------------------- relay URLs
//
// Every request to the relay is made with `cache: 'no-store'`: a browser's
// HTTP cache holds a lock on a URL while a GET to it waits for its
// response (Chrome for up to 20 seconds), and a waiting Piping receiver
// gets no response until its sender comes, so a PUT to the same URL from
// the same browser would wait out that lock.

/** A path as typed (`abc`, `/abc`, `a b/c`) made a relay path: each
 * segment percent-encoded, so `?` and `#` stay part of the path. */
export function normalizePath(input) {
  const segments = String(input)
    .trim()
    .replace(/^\/+/, '')
    .split('/')
    .map((s) => {
      try {
        return encodeURIComponent(decodeURIComponent(s));
      } catch {
        return encodeURIComponent(s);
      }
    });
  return '/' + segments.join('/');
}

/** The CHANNEL of docs/encryption.md for a path: as typed, without the
 * leading `/` (what `tubes --path P` uses). */
export function channelOf(path) {
  return String(path).trim().replace(/^\/+/, '');
}

/** The full URL of a relay path, with query options. */
export function relayUrl(path, query = {}) {
  const url = new URL(normalizePath(path), location.origin);
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === false) continue;
    url.searchParams.set(k, v === true ? '' : String(v));
  }
  return url.href.replace(/=(&|$)/g, '$1');
}

/** The text of a refused request, as the relay said it. */
async function refusal(response) {
  const text = (await response.text().catch(() => '')).trim();
  return new TubesError(text || `the relay answered ${response.status}`);
}

// ---------------------------------------------------------------- codes

let wordList = null;

/** The 1,024 code words (assets/words.txt, the list `tubes` uses). */
export async function words() {
  if (!wordList) {
    const res = await fetch('/-/words.txt');
    if (!res.ok) throw new TubesError('cannot load the word list');
    wordList = (await res.text())
      .split('\n')
      .map((w) => w.trim())
      .filter(Boolean);
    if (wordList.length !== 1024) throw new TubesError('the word list is damaged');
  }
  return wordList;
}

async function randomWords(count) {
  const list = await words();
  return Array.from({ length: count }, () => list[randomBelow(list.length)]);
}

/** A fresh code with a nameplate: `4821-amber-lunar-velvet`. */
export async function generateCode() {
  const nameplate = 1000 + randomBelow(9000);
  return `${nameplate}-${(await randomWords(3)).join('-')}`;
}

/** Three fresh words, for a path transfer encrypted with a code. */
export async function generateSecret() {
  return (await randomWords(3)).join('-');
}

/** Fresh words joined by `-`, for chat and screen names. */
export async function randomName(prefix) {
  return `${prefix}-${(await randomWords(3)).join('-')}`;
}

/**
 * Parses what a user typed, as `tubes recv` does: case and spaces do not
 * matter; a leading number is a nameplate. Returns `{ text, nameplate }`
 * or null when it is not a code.
 */
export function parseCode(input) {
  const parts = String(input)
    .split(/[-\s]+/)
    .filter(Boolean)
    .map((p) => p.toLowerCase());
  let nameplate = null;
  if (parts.length && /^[0-9]+$/.test(parts[0])) nameplate = Number(parts.shift());
  if (parts.length < 2 || !parts.every((w) => /^[a-z]+$/.test(w))) return null;
  if (nameplate !== null && !Number.isSafeInteger(nameplate)) return null;
  const words = parts.join('-');
  return { text: nameplate === null ? words : `${nameplate}-${words}`, nameplate };
}

/** True when the input is a code with a nameplate (not a path). */
export function looksLikeCode(input) {
  const c = parseCode(input);
  return !!c && c.nameplate !== null;
}

// ---------------------------------------------------------------- key exchange

async function sha512(...parts) {
  return new Uint8Array(await crypto.subtle.digest('SHA-512', concat(parts)));
}

const Point = ristretto255.Point;

async function generator(code, channel) {
  const wide = await sha512(lp(utf8.encode('tubes/1 cpace generator')), lp(utf8.encode(code)), lp(utf8.encode(channel)));
  return ristretto255_hasher.deriveToCurve(wide);
}

function scalarFrom(bytes) {
  let x = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) x = (x << 8n) | BigInt(bytes[i]);
  return Point.Fn.create(x);
}

/**
 * One side of CPace (docs/encryption.md): `share` to send, then
 * `finish(peerShare)` gives the 64-byte ISK. `secret` is for test vectors.
 */
export async function cpace(code, channel, role, secret) {
  let y = secret ?? 0n;
  while (y === 0n) y = scalarFrom(random(64));
  const share = (await generator(code, channel)).multiply(y).toBytes();
  return {
    share,
    async finish(peer) {
      if (!(peer instanceof Uint8Array) || peer.length !== 32) throw new TubesError('the other side sent a malformed key-exchange message');
      let point;
      try {
        point = Point.fromBytes(peer);
      } catch {
        throw new TubesError('the other side sent a malformed key-exchange message');
      }
      if (point.is0()) throw new TubesError('the other side sent a malformed key-exchange message');
      const shared = point.multiply(y);
      if (shared.is0()) throw new TubesError('the other side sent a malformed key-exchange message');
      const [ys, yr] = role === 'sender' ? [share, peer] : [peer, share];
      const enc = (s) => lp(utf8.encode(s));
      return sha512(enc('tubes/1 cpace isk'), enc(channel), lp(shared.toBytes()), lp(ys), lp(yr));
    },
  };
}

/** The key schedule: `{ data, confirmSender, confirmReceiver }` from a secret. */
export async function deriveKeys(secret) {
  const key = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveBits']);
  const expand = async (info) =>
    new Uint8Array(
      await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: MAGIC, info: utf8.encode(info) }, key, 256),
    );
  return {
    data: await expand('tubes/1 data key'),
    confirmSender: await expand('tubes/1 sender confirms'),
    confirmReceiver: await expand('tubes/1 receiver confirms'),
  };
}

/** Keys from a passphrase: PBKDF2-HMAC-SHA256, then [deriveKeys]. */
export async function passphraseKeys(pass, salt, iterations) {
  const key = await crypto.subtle.importKey('raw', utf8.encode(pass), 'PBKDF2', false, ['deriveBits']);
  const secret = new Uint8Array(
    await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, key, 256),
  );
  return deriveKeys(secret);
}

// ---------------------------------------------------------------- sealed records

function nonce(counter, last) {
  const n = new Uint8Array(12);
  const view = new DataView(n.buffer);
  view.setBigUint64(0, BigInt(counter));
  view.setUint32(8, last ? 1 : 0);
  return n;
}

async function aesKey(bytes) {
  return crypto.subtle.importKey('raw', bytes, 'AES-GCM', false, ['encrypt', 'decrypt']);
}

/** Seals plaintext into counted records. */
export class Sealer {
  constructor(dataKey) {
    this.key = aesKey(dataKey);
    this.counter = 0;
    this.finished = false;
  }

  async seal(plaintext, last) {
    if (this.finished || plaintext.length > MAX_RECORD) throw new Error('record sealed after the final one');
    const iv = nonce(this.counter, last);
    this.counter += 1;
    this.finished = last;
    const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv, tagLength: 128 }, await this.key, plaintext));
    return concat([u32be((sealed.length | (last ? FINAL_BIT : 0)) >>> 0), sealed]);
  }
}

/** Opens records from bytes pushed in pieces of any size. */
export class Opener {
  constructor(dataKey) {
    this.key = aesKey(dataKey);
    this.counter = 0;
    this.finished = false;
    this.queue = new ByteQueue();
  }

  push(bytes) {
    this.queue.push(bytes);
  }

  /** The next record's plaintext, or null when more bytes are needed. */
  async next() {
    if (this.finished) {
      if (this.queue.length) throw new TubesError('the data was altered on the way (bytes after the final record)');
      return null;
    }
    if (this.queue.length < 4) return null;
    const prefix = new DataView(this.queue.peek(4).buffer).getUint32(0);
    const last = (prefix & FINAL_BIT) !== 0;
    const len = prefix & ~FINAL_BIT;
    if (len < TAG_LEN || len > MAX_RECORD + TAG_LEN) throw new TubesError('the data was altered on the way (bad record length)');
    if (this.queue.length < 4 + len) return null;
    this.queue.take(4);
    const record = this.queue.take(len);
    let plain;
    try {
      plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: nonce(this.counter, last), tagLength: 128 }, await this.key, record);
    } catch {
      throw new TubesError('the data was altered on the way (authentication failed)');
    }
    this.counter += 1;
    this.finished = last;
    return new Uint8Array(plain);
  }
}

/** The clear header of a sealed stream. */
export function encodeHeader(header) {
  if (header.mode === 'code') return concat([MAGIC, new Uint8Array([1]), header.confirm]);
  return concat([MAGIC, new Uint8Array([2]), header.salt, u32be(header.iterations)]);
}

/** Parses a header from the queue's start: null if more bytes are needed. */
export function parseHeader(queue) {
  const head = MAGIC.length + 1;
  const have = queue.peek(Math.min(queue.length, head));
  for (let i = 0; i < Math.min(have.length, MAGIC.length); i++) {
    if (have[i] !== MAGIC[i]) throw new TubesError('not a Tubes encrypted stream (bad header)');
  }
  if (have.length < head) return null;
  const mode = have[MAGIC.length];
  if (mode === 1) {
    if (queue.length < head + TAG) return null;
    const bytes = queue.take(head + TAG);
    return { mode: 'code', confirm: bytes.slice(head) };
  }
  if (mode === 2) {
    if (queue.length < head + SALT_LEN + 4) return null;
    const bytes = queue.take(head + SALT_LEN + 4);
    const iterations = new DataView(bytes.buffer, head + SALT_LEN, 4).getUint32(0);
    return { mode: 'passphrase', salt: bytes.slice(head, head + SALT_LEN), iterations };
  }
  throw new TubesError('not a Tubes encrypted stream (bad header)');
}

// ---------------------------------------------------------------- sources

/** Reads a File or Blob as pieces, `size` bytes at a time. */
export async function* readBlob(blob, size = RECORD_SIZE) {
  for (let at = 0; at < blob.size; at += size) {
    yield new Uint8Array(await blob.slice(at, at + size).arrayBuffer());
  }
}

/** Cuts a stream of pieces into pieces of exactly `size` (the last shorter). */
async function* rechunk(source, size) {
  const queue = new ByteQueue();
  for await (const piece of source) {
    queue.push(piece);
    while (queue.length >= size) yield queue.take(size);
  }
  if (queue.length) yield queue.take(queue.length);
}

// A tar archive (POSIX ustar with PAX records for long or non-ASCII names
// and large sizes), as `tubes recv` unpacks it.

function tarHeader(name, size, mtime, type = '0') {
  const h = new Uint8Array(512);
  const put = (text, at, len) => h.set(utf8.encode(text).subarray(0, len), at);
  const octal = (n, len) => n.toString(8).padStart(len - 1, '0');
  put(name, 0, 100);
  put(octal(type === '5' ? 0o755 : 0o644, 8), 100, 7);
  put(octal(0, 8), 108, 7);
  put(octal(0, 8), 116, 7);
  put(octal(size, 12), 124, 11);
  put(octal(Math.max(0, Math.floor(mtime)), 12), 136, 11);
  h.fill(0x20, 148, 156);
  put(type, 156, 1);
  put('ustar\u000000', 257, 8);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 8);
  return h;
}

function paxRecord(key, value) {
  const body = ` ${key}=${value}\n`;
  let len = utf8.encode(body).length;
  let total = len + String(len).length;
  if (String(total).length !== String(len).length) total = len + String(total).length;
  return utf8.encode(`${total}${body}`);
}

function padding(size) {
  return new Uint8Array((512 - (size % 512)) % 512);
}

/** The header blocks of one entry (a PAX record first when needed). */
function tarEntryHeader(name, size, mtime, type) {
  const ascii = /^[\x20-\x7e]*$/.test(name) && utf8.encode(name).length <= 100;
  const big = size > 0o77777777777;
  const out = [];
  if (!ascii || big) {
    const pax = concat([ascii ? new Uint8Array(0) : paxRecord('path', name), big ? paxRecord('size', String(size)) : new Uint8Array(0)]);
    out.push(tarHeader('PaxHeaders/entry', pax.length, mtime, 'x'), pax, padding(pax.length));
  }
  const short = ascii ? name : name.replace(/[^\x20-\x7e]/g, '_').slice(-100);
  out.push(tarHeader(short, big ? 0 : size, mtime, type));
  return concat(out);
}

/** The folders to create before entries like `a/b/c.txt`. */
function folders(entries) {
  const seen = new Set();
  const out = [];
  for (const e of entries) {
    const parts = e.name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/') + '/';
      if (!seen.has(dir)) {
        seen.add(dir);
        out.push(dir);
      }
    }
  }
  return out;
}

/**
 * A tar archive of `entries` (`{ name, file }`, names relative with `/`)
 * as a Blob that only refers to the files: nothing is read until it is
 * sent, so it can be any size.
 */
export function tarBlob(entries) {
  const parts = [];
  const now = Date.now() / 1000;
  for (const dir of folders(entries)) parts.push(tarEntryHeader(dir, 0, now, '5'));
  for (const { name, file } of entries) {
    parts.push(tarEntryHeader(name, file.size, file.lastModified / 1000, '0'), file, padding(file.size));
  }
  parts.push(new Uint8Array(1024));
  return new Blob(parts, { type: 'application/x-tar' });
}

/** The sum of the entries' sizes (what `tubes` puts in `size` for a tar). */
export function payloadSize(entries) {
  return entries.reduce((n, e) => n + e.file.size, 0);
}

// ---------------------------------------------------------------- uploads

/** Whether this page can stream a request body (HTTP/2 or 3, and a
 * browser that implements it); `?upload=ws` in the page URL says no. */
export function canStreamUpload() {
  if (new URLSearchParams(location.search).get('upload') === 'ws') return false;
  const protocol = performance.getEntriesByType('navigation')[0]?.nextHopProtocol;
  if (protocol !== 'h2' && protocol !== 'h3') return false;
  let duplexAccessed = false;
  try {
    const hasContentType = new Request(location.origin, {
      body: new ReadableStream(),
      method: 'POST',
      get duplex() {
        duplexAccessed = true;
        return 'half';
      },
    }).headers.has('Content-Type');
    return duplexAccessed && !hasContentType;
  } catch {
    return false;
  }
}

/**
 * Uploads the pieces `source` yields to `path` as they are pulled (so the
 * network sets the pace), with a streaming `fetch` or, where the browser
 * cannot stream a request, a WebSocket `?ws=send` (which carries no
 * headers). Resolves with the relay's log when it is over.
 */
export async function uploadStream(path, source, { query = {}, headers = {}, signal, onLog } = {}) {
  if (canStreamUpload()) {
    const iterator = source[Symbol.asyncIterator]();
    const body = new ReadableStream(
      {
        async pull(controller) {
          const { value, done } = await iterator.next();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel() {
          iterator.return?.();
        },
      },
      { highWaterMark: 1 },
    );
    const res = await fetch(relayUrl(path, query), { method: 'PUT', body, duplex: 'half', headers, cache: 'no-store', signal });
    if (!res.ok) throw await refusal(res);
    const log = await res.text();
    onLog?.(log);
    return log;
  }
  return uploadOverWebSocket(path, source, { query, signal, onLog });
}

function wsUrl(path, query) {
  return relayUrl(path, { ...query, ws: 'send' }).replace(/^http/, 'ws');
}

async function uploadOverWebSocket(path, source, { query, signal, onLog }) {
  const ws = new WebSocket(wsUrl(path, query));
  ws.binaryType = 'arraybuffer';
  let log = '';
  let closed = null;
  const closing = new Promise((resolve) => {
    ws.onclose = (e) => {
      closed = e;
      resolve(e);
    };
  });
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      log += e.data;
      onLog?.(log);
    }
  };
  const abort = () => ws.close(4000, 'cancelled');
  signal?.addEventListener('abort', abort);
  try {
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new TubesError('the relay refused the WebSocket (is the path reserved or taken?)'));
    });
    for await (const piece of source) {
      for (let at = 0; at < piece.length; at += MAX_RECORD) {
        // bufferedAmount has no event: wait while a few MiB are queued.
        while (ws.bufferedAmount > 4 * MAX_RECORD && !closed) await new Promise((r) => setTimeout(r, 20));
        if (closed) throw new TubesError('the relay closed the connection');
        ws.send(piece.subarray(at, at + MAX_RECORD));
      }
    }
    while (ws.bufferedAmount > 0 && !closed) await new Promise((r) => setTimeout(r, 20));
    if (closed) throw new TubesError('the relay closed the connection before the end');
    ws.close(1000);
    const end = await closing;
    if (end.code !== 1000) throw new TubesError(`the transfer ended with WebSocket code ${end.code}`);
    return log;
  } finally {
    signal?.removeEventListener('abort', abort);
    if (!closed) ws.close(4000);
  }
}

/**
 * Uploads a Blob (a file, a text, a tar of files) with its length and
 * headers; `onProgress(sent)` as it goes. Works in every browser and over
 * HTTP/1.1. Resolves with the relay's log.
 */
export function uploadBlob(path, blob, { query = {}, headers = {}, signal, onProgress, onLog } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', relayUrl(path, query));
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onProgress?.(e.loaded);
    xhr.onprogress = () => onLog?.(xhr.responseText);
    xhr.onload = () => {
      onLog?.(xhr.responseText);
      if (xhr.status === 200) resolve(xhr.responseText);
      else reject(new TubesError(xhr.responseText.trim() || `the relay answered ${xhr.status}`));
    };
    xhr.onerror = () => reject(new TubesError('the connection to the relay failed'));
    xhr.onabort = () => reject(new TubesError('cancelled'));
    signal?.addEventListener('abort', () => xhr.abort());
    xhr.send(blob);
  });
}

/** PUTs a small message (a key share) and keeps reading the relay's log to
 * its end, as a Piping sender must. Resolves once the relay took it. */
async function putMessage(path, bytes, signal) {
  const res = await fetch(relayUrl(path), { method: 'PUT', body: bytes, cache: 'no-store', signal });
  if (!res.ok) throw await refusal(res);
  res.text().catch(() => {});
}

/** GETs a small message of exactly `n` bytes. */
async function getMessage(path, n, signal) {
  const res = await fetch(relayUrl(path), { cache: 'no-store', signal });
  if (!res.ok) throw await refusal(res);
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (bytes.length !== n) throw new TubesError('the other side sent a malformed key-exchange message');
  return bytes;
}

// ---------------------------------------------------------------- sending

/**
 * A sealed stream: header, metadata record, then the payload in records of
 * 256 KiB, the last one final. `onPlain(n)` counts payload bytes.
 */
export async function* sealedStream(header, keys, meta, payload, onPlain) {
  const sealer = new Sealer(keys.data);
  yield encodeHeader(header);
  yield await sealer.seal(utf8.encode(JSON.stringify(meta)), false);
  let pending = null;
  for await (const piece of rechunk(payload, RECORD_SIZE)) {
    if (pending) yield await sealer.seal(pending, false);
    pending = piece;
    onPlain?.(piece.length);
  }
  yield await sealer.seal(pending ?? new Uint8Array(0), true);
}

/** The sender's half of the code exchange, up to showing the code:
 * posts the share (trying fresh codes if the nameplate is taken) and
 * returns `{ code, channel, finish }`; `finish()` waits for the receiver
 * and returns the keys (or throws "wrong code", after telling it). */
export async function offerCode({ path, signal } = {}) {
  for (let attempt = 1; ; attempt++) {
    const code = path ? await generateSecret() : await generateCode();
    const channel = path ? channelOf(path) : `tubes-${code.split('-')[0]}`;
    const side = await cpace(code, channel, 'sender');
    try {
      await putMessage(`${channel}/key-s`, side.share, signal);
    } catch (e) {
      if (!path && attempt < CODE_ATTEMPTS && e instanceof TubesError) continue;
      throw e;
    }
    const finish = async () => {
      const reply = await getMessage(`${channel}/key-r`, 64, signal);
      let keys = null;
      try {
        keys = await deriveKeys(await side.finish(reply.subarray(0, 32)));
      } catch {
        keys = null;
      }
      if (!keys || !tagsEqual(reply.subarray(32), keys.confirmReceiver)) {
        // Tell the other side at once: a header with no valid tag.
        const refusal = encodeHeader({ mode: 'code', confirm: new Uint8Array(TAG) });
        await putMessage(channel, refusal, signal).catch(() => {});
        throw new TubesError('wrong code: the other side used a different code (or someone else tried to join)');
      }
      return keys;
    };
    return { code, channel, finish };
  }
}

/** A fresh passphrase header and its keys. */
export async function passphraseHeader(pass) {
  const salt = random(SALT_LEN);
  const keys = await passphraseKeys(pass, salt, PBKDF2_ITERATIONS);
  return { header: { mode: 'passphrase', salt, iterations: PBKDF2_ITERATIONS }, keys };
}

// ---------------------------------------------------------------- receiving

/** The receiver's half of the code exchange; returns the keys. */
export async function answerCode(code, channel, signal) {
  const offer = await getMessage(`${channel}/key-s`, 32, signal);
  const side = await cpace(code, channel, 'receiver');
  const keys = await deriveKeys(await side.finish(offer));
  await putMessage(`${channel}/key-r`, concat([side.share, keys.confirmReceiver]), signal);
  return keys;
}

/** The file name in a `Content-Disposition` value (`filename*` first). */
export function dispositionName(value) {
  if (!value) return null;
  let plain = null;
  for (const param of value.split(';').slice(1)) {
    const eq = param.indexOf('=');
    if (eq < 0) continue;
    const key = param.slice(0, eq).trim().toLowerCase();
    let val = param.slice(eq + 1).trim();
    if (key === 'filename*') {
      const at = val.indexOf("''");
      if (at >= 0) {
        try {
          return decodeURIComponent(val.slice(at + 2));
        } catch {
          /* fall back to filename */
        }
      }
    } else if (key === 'filename') {
      if (val.startsWith('"') && val.endsWith('"')) val = val.slice(1, -1).replace(/\\(.)/g, '$1');
      plain = val;
    }
  }
  return plain;
}

/** A plain file name (no folders, not `.` or `..`), or null. */
export function safeFileName(name) {
  if (typeof name !== 'string') return null;
  const base = name.split(/[/\\]/).pop().trim();
  if (!base || base === '.' || base === '..') return null;
  return base.replace(/[\u0000-\u001f]/g, '_').slice(0, 200);
}

/**
 * Opens a receiving response: for a sealed stream checks the header,
 * derives the keys and reads the metadata. Returns `{ meta, pieces }`,
 * `pieces` an async iterator of payload bytes that throws if the stream
 * is cut short or altered.
 */
export async function openResponse(res, expect) {
  const reader = res.body.getReader();
  if (expect.mode === 'plain') {
    return {
      meta: null,
      pieces: (async function* () {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          yield value;
        }
      })(),
      cancel: () => reader.cancel().catch(() => {}),
    };
  }
  const queue = new ByteQueue();
  const more = async () => {
    const { value, done } = await reader.read();
    if (done) return false;
    queue.push(value);
    return true;
  };
  let header;
  while (!(header = parseHeader(queue))) {
    if (!(await more())) throw new TubesError(queue.length ? 'not a Tubes encrypted stream (bad header)' : 'the sender sent nothing');
  }
  let keys;
  if (expect.mode === 'code') {
    if (header.mode !== 'code') throw new TubesError('this transfer is protected by a passphrase: give the passphrase');
    if (!tagsEqual(header.confirm, expect.keys.confirmSender)) {
      throw new TubesError('wrong code: the other side used a different code (or someone else tried to join)');
    }
    keys = expect.keys;
  } else {
    if (header.mode !== 'passphrase') throw new TubesError('this transfer is protected by a code, not a passphrase');
    if (header.iterations === 0 || header.iterations > PBKDF2_MAX_ITERATIONS) throw new TubesError('not a Tubes encrypted stream (bad header)');
    keys = await passphraseKeys(expect.pass, header.salt, header.iterations);
  }
  const opener = new Opener(keys.data);
  opener.push(queue.take(queue.length));
  let metaRecord;
  for (;;) {
    try {
      metaRecord = await opener.next();
    } catch (e) {
      if (expect.mode === 'passphrase') throw new TubesError('wrong passphrase, or the stream was altered');
      throw e;
    }
    if (metaRecord) break;
    if (!(await more())) throw new TubesError('the stream was cut short before its final record');
    opener.push(queue.take(queue.length));
  }
  if (opener.finished || metaRecord.length > MAX_META) throw new TubesError('not a Tubes encrypted stream (bad header)');
  let meta;
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(metaRecord));
  } catch {
    throw new TubesError('not a Tubes encrypted stream (bad metadata)');
  }
  if (!meta || !['file', 'tar', 'stream'].includes(meta.kind)) throw new TubesError('not a Tubes encrypted stream (bad metadata)');
  return {
    meta,
    pieces: (async function* () {
      for (;;) {
        const record = await opener.next();
        if (record) {
          if (record.length) yield record;
          continue;
        }
        if (opener.finished) return;
        const { value, done } = await reader.read();
        if (done) throw new TubesError('the stream was cut short before its final record');
        opener.push(value);
      }
    })(),
    cancel: () => reader.cancel().catch(() => {}),
  };
}

/** Starts receiving from `path` (with `?n=` when given). */
export async function receive(path, { n, signal } = {}) {
  const res = await fetch(relayUrl(path, { n: n > 1 ? n : undefined }), { cache: 'no-store', signal });
  if (!res.ok) throw await refusal(res);
  return res;
}
