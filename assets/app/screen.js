// Screen sharing over a live path (`PATH?live`), for any number of viewers
// who may join at any time.
//
// The sharer records the screen with MediaRecorder (WebM) and cuts the
// recording into self-contained parts: each part is the WebM
// initialization segment (header and tracks) followed by one cluster of
// the newest frames. The parts go out as a `multipart/x-mixed-replace`
// stream, so the relay's live mode starts every late viewer on a part
// boundary and lets a slow viewer skip whole parts. A viewer feeds the
// parts to Media Source Extensions and plays them in a <video>.
//
// Part: `--B\r\n` (sent with the previous part), headers `Content-Type`
// (the WebM type with its codecs), `Content-Length`, `X-Init-Length`
// (bytes of initialization segment at the start of the body), a blank
// line, the body, then `\r\n--B\r\n` at once, so that a viewer can check a
// part is whole as soon as it has it.

import { ByteQueue, TubesError, canStreamUpload, concat, relayUrl } from './tubes.js';

const ascii = new TextEncoder();

// ---------------------------------------------------------------- WebM

const ID = {
  EBML: 0x1a45dfa3,
  Segment: 0x18538067,
  Cluster: 0x1f43b675,
  Timecode: 0xe7,
  SimpleBlock: 0xa3,
  BlockGroup: 0xa0,
};
const UNKNOWN_SIZE = new Uint8Array([0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** Reads an EBML variable-length integer at `at`: `{ value, length,
 * unknown }` (an ID keeps its marker bits), or null if `bytes` ends first. */
function vint(bytes, at, isId) {
  if (at >= bytes.length) return null;
  const first = bytes[at];
  let length = 1;
  while (length <= 8 && !(first & (0x80 >> (length - 1)))) length++;
  if (length > 8) throw new TubesError('the recording is not WebM');
  if (at + length > bytes.length) return null;
  let value = isId ? first : first & (0xff >> length);
  let allOnes = value === 0xff >> length;
  for (let i = 1; i < length; i++) {
    value = value * 256 + bytes[at + i];
    if (bytes[at + i] !== 0xff) allOnes = false;
  }
  return { value, length, unknown: !isId && allOnes };
}

/** An element header at `at`: `{ id, size (null if unknown), header }`. */
function elementHeader(bytes, at) {
  const id = vint(bytes, at, true);
  if (!id) return null;
  const size = vint(bytes, at + id.length, false);
  if (!size) return null;
  return { id: id.value, size: size.unknown ? null : size.value, header: id.length + size.length };
}

/**
 * Turns MediaRecorder's WebM, fed in pieces, into parts that each start
 * with the initialization segment and hold one cluster of whole blocks.
 */
export class WebmCutter {
  constructor() {
    this.buf = new Uint8Array(0);
    this.init = null; // the initialization segment, once known
    this.initParts = []; // its pieces while it is read
    this.inSegment = false;
    this.clusterEnd = null; // offset in the stream where a sized cluster ends
    this.inCluster = false;
    this.timecode = new Uint8Array(8);
    this.blocks = [];
    this.consumed = 0; // stream offset of buf[0]
  }

  /** Adds recorded bytes; returns the parts now complete. */
  push(bytes) {
    this.buf = this.buf.length ? concat([this.buf, bytes]) : bytes;
    const parts = [];
    let at = 0;
    for (;;) {
      const h = elementHeader(this.buf, at);
      if (!h) break;
      const offset = this.consumed + at;
      if (this.inCluster && this.clusterEnd !== null && offset >= this.clusterEnd) {
        this.inCluster = false;
      }
      if (this.inCluster && h.id !== ID.Cluster && h.id !== ID.Segment && h.id !== ID.EBML && h.id < 0x1000000) {
        // A child of the cluster (IDs of level-1 elements are 4 bytes).
        if (h.size === null) throw new TubesError('the recording has a block of unknown size');
        if (at + h.header + h.size > this.buf.length) break;
        const whole = this.buf.subarray(at, at + h.header + h.size);
        if (h.id === ID.Timecode) {
          // Blocks so far are relative to the previous cluster's time.
          parts.push(...this.flush());
          const value = this.buf.subarray(at + h.header, at + h.header + h.size);
          this.timecode = new Uint8Array(8);
          this.timecode.set(value, 8 - value.length);
        } else if (h.id === ID.SimpleBlock || h.id === ID.BlockGroup) {
          this.blocks.push(whole.slice());
        }
        at += whole.length;
        continue;
      }
      this.inCluster = false;
      if (h.id === ID.EBML) {
        if (at + h.header + h.size > this.buf.length) break;
        this.initParts = [this.buf.slice(at, at + h.header + h.size)];
        this.init = null;
        at += h.header + h.size;
      } else if (h.id === ID.Segment) {
        // Enter it; its size is written as unknown in every part.
        this.initParts.push(this.buf.slice(at, at + 4), UNKNOWN_SIZE);
        this.inSegment = true;
        at += h.header;
      } else if (h.id === ID.Cluster) {
        parts.push(...this.flush());
        if (!this.init) this.init = concat(this.initParts);
        this.inCluster = true;
        this.clusterEnd = h.size === null ? null : offset + h.header + h.size;
        at += h.header;
      } else {
        // Another level-1 element: before the first cluster it belongs to
        // the initialization segment (Info, Tracks); after, it is skipped.
        if (h.size === null) throw new TubesError('the recording has an element of unknown size');
        if (at + h.header + h.size > this.buf.length) break;
        if (!this.init) this.initParts.push(this.buf.slice(at, at + h.header + h.size));
        at += h.header + h.size;
      }
    }
    this.consumed += at;
    this.buf = this.buf.slice(at);
    parts.push(...this.flush());
    return parts;
  }

  /** The part of the blocks read so far, if any. */
  flush() {
    if (!this.init || !this.blocks.length) return [];
    const clusterHeader = concat([
      new Uint8Array([0x1f, 0x43, 0xb6, 0x75]),
      UNKNOWN_SIZE,
      new Uint8Array([ID.Timecode, 0x88]),
      this.timecode,
    ]);
    const body = concat([this.init, clusterHeader, ...this.blocks]);
    this.blocks = [];
    return [{ body, initLength: this.init.length }];
  }
}

// ---------------------------------------------------------------- multipart

function randomBoundary() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'tubes' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Encodes parts as a multipart/x-mixed-replace stream. */
export class PartWriter {
  constructor(type) {
    this.type = type;
    this.boundary = randomBoundary();
    this.started = false;
  }

  get contentType() {
    return `multipart/x-mixed-replace; boundary=${this.boundary}`;
  }

  encode(part) {
    const head =
      (this.started ? '' : `--${this.boundary}\r\n`) +
      `Content-Type: ${this.type}\r\nContent-Length: ${part.body.length}\r\nX-Init-Length: ${part.initLength}\r\n\r\n`;
    this.started = true;
    return concat([ascii.encode(head), part.body, ascii.encode(`\r\n--${this.boundary}\r\n`)]);
  }
}

function indexOf(haystack, needle, from = 0) {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Reads parts from a multipart/x-mixed-replace stream that may have been
 * cut between parts (a late join, a skip ahead); damaged parts are dropped. */
export class PartReader {
  constructor(boundary) {
    this.start = ascii.encode(`--${boundary}\r\n`);
    this.end = ascii.encode(`\r\n--${boundary}\r\n`);
    this.buf = new Uint8Array(0);
    this.state = 'sync';
    this.part = null;
    this.dropped = 0;
  }

  push(bytes) {
    this.buf = this.buf.length ? concat([this.buf, bytes]) : bytes;
    const parts = [];
    for (;;) {
      if (this.state === 'sync') {
        const at = indexOf(this.buf, this.start);
        if (at < 0) {
          this.buf = this.buf.slice(Math.max(0, this.buf.length - this.start.length));
          break;
        }
        this.buf = this.buf.slice(at + this.start.length);
        this.state = 'headers';
      }
      if (this.state === 'headers') {
        const at = indexOf(this.buf, ascii.encode('\r\n\r\n'));
        if (at < 0) {
          if (this.buf.length > 4096) this.resync();
          break;
        }
        const headers = {};
        for (const line of new TextDecoder().decode(this.buf.subarray(0, at)).split('\r\n')) {
          const colon = line.indexOf(':');
          if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const length = Number(headers['content-length']);
        const initLength = Number(headers['x-init-length']);
        if (!Number.isSafeInteger(length) || !Number.isSafeInteger(initLength) || initLength > length) {
          this.resync();
          continue;
        }
        this.part = { type: headers['content-type'] || '', length, initLength };
        this.buf = this.buf.slice(at + 4);
        this.state = 'body';
      }
      if (this.state === 'body') {
        const need = this.part.length + this.end.length;
        if (this.buf.length < need) break;
        const tail = this.buf.subarray(this.part.length, need);
        if (indexOf(tail, this.end) !== 0) {
          this.resync();
          continue;
        }
        parts.push({ ...this.part, body: this.buf.slice(0, this.part.length) });
        this.buf = this.buf.slice(need);
        this.state = 'headers';
      }
    }
    return parts;
  }

  resync() {
    this.dropped += 1;
    this.state = 'sync';
  }
}

// ---------------------------------------------------------------- sharing

function recorderType() {
  for (const t of ['video/webm;codecs=vp8', 'video/webm;codecs=vp9', 'video/webm']) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
  }
  return null;
}

/**
 * Shares `stream` (from getDisplayMedia) live on `path`. Returns
 * `{ stop, done }`; `done` settles when the upload ends. `onStats({
 * parts, bytes })` reports progress.
 */
export function share(path, stream, { onStats } = {}) {
  if (!canStreamUpload()) {
    throw new TubesError('sharing needs a browser that can stream an upload (Chrome, Edge) and this page over HTTPS');
  }
  const type = recorderType();
  if (!type) throw new TubesError('this browser cannot record WebM video');
  const recorder = new MediaRecorder(stream, {
    mimeType: type,
    videoBitsPerSecond: 1_500_000,
    videoKeyFrameIntervalDuration: 1000,
  });
  const cutter = new WebmCutter();
  const writer = new PartWriter(type);
  let controller;
  let stopped = false;
  const body = new ReadableStream({
    start(c) {
      controller = c;
    },
    cancel() {
      stop();
    },
  });
  let parts = 0;
  let bytes = 0;
  let chain = Promise.resolve();
  recorder.ondataavailable = (e) => {
    chain = chain.then(async () => {
      if (!e.data.size) return;
      const recorded = new Uint8Array(await e.data.arrayBuffer());
      for (const part of cutter.push(recorded)) {
        const encoded = writer.encode(part);
        if (!stopped) controller.enqueue(encoded);
        parts += 1;
        bytes += encoded.length;
        onStats?.({ parts, bytes });
      }
    });
  };
  const aborter = new AbortController();
  const done = fetch(relayUrl(path, { live: true }), {
    method: 'PUT',
    body,
    duplex: 'half',
    headers: { 'Content-Type': writer.contentType },
    cache: 'no-store',
    signal: aborter.signal,
  }).then(async (res) => {
    if (!res.ok) throw new TubesError((await res.text()).trim() || `the relay answered ${res.status}`);
    return res.text();
  });
  function stop() {
    if (stopped) return;
    stopped = true;
    for (const track of stream.getTracks()) track.stop();
    const ended = new Promise((resolve) => {
      recorder.onstop = resolve;
    });
    if (recorder.state !== 'inactive') recorder.stop();
    else ended.then(() => {});
    Promise.race([ended, new Promise((r) => setTimeout(r, 2000))])
      .then(() => chain)
      .then(() => controller.close())
      .catch(() => {});
  }
  for (const track of stream.getVideoTracks()) track.addEventListener('ended', stop);
  recorder.start(250);
  return { stop, done, abort: () => aborter.abort() };
}

// ---------------------------------------------------------------- watching

/** `video/webm;codecs=vp8` as Media Source Extensions spell it. */
function mseType(type) {
  const [media, ...params] = type.split(';').map((s) => s.trim());
  const codecs = params.find((p) => p.toLowerCase().startsWith('codecs='));
  if (!codecs) return media;
  return `${media}; codecs="${codecs.slice(7).replace(/"/g, '')}"`;
}

/**
 * Plays the live screen on `path` in `video`. Returns `{ stop, done }`;
 * `onState(text)` says what is happening.
 */
export function watch(path, video, { onState } = {}) {
  const aborter = new AbortController();
  const done = (async () => {
    // iPhone Safari has only the "managed" variant (iOS 17.1 and later).
    const Source = window.MediaSource || window.ManagedMediaSource;
    if (!Source) throw new TubesError('this browser cannot play a live stream (no Media Source Extensions)');
    onState?.('waiting for the screen…');
    const res = await fetch(relayUrl(path, { live: true }), { cache: 'no-store', signal: aborter.signal });
    if (!res.ok) throw new TubesError((await res.text()).trim() || `the relay answered ${res.status}`);
    const contentType = res.headers.get('content-type') || '';
    const boundary = /boundary=("?)([^";]+)\1/i.exec(contentType)?.[2];
    if (!/^multipart\/x-mixed-replace/i.test(contentType) || !boundary) {
      throw new TubesError(`${path} is not a shared screen (it is ${contentType || 'untyped'})`);
    }
    const source = new Source();
    if (Source !== window.MediaSource) video.disableRemotePlayback = true;
    video.src = URL.createObjectURL(source);
    await new Promise((resolve) => source.addEventListener('sourceopen', resolve, { once: true }));
    const reader = new PartReader(boundary);
    const queue = [];
    let buffer = null;
    let first = true;
    let started = false;
    const pump = () => {
      if (!buffer || buffer.updating || !queue.length || source.readyState !== 'open') return;
      const part = queue.shift();
      const bytes = first ? part.body : part.body.subarray(part.initLength);
      first = false;
      try {
        buffer.appendBuffer(bytes);
      } catch (e) {
        if (e.name === 'QuotaExceededError') {
          trim(true);
        } else {
          throw e;
        }
      }
    };
    const trim = (hard) => {
      if (!buffer || buffer.updating || !video.buffered.length) return;
      const start = video.buffered.start(0);
      const keep = hard ? 2 : 20;
      if (video.currentTime - start > keep + 10) buffer.remove(start, video.currentTime - keep);
    };
    const body = res.body.getReader();
    for (;;) {
      const { value, done: ended } = await body.read();
      if (ended) break;
      for (const part of reader.push(value)) {
        if (!buffer) {
          const type = mseType(part.type);
          if (!Source.isTypeSupported(type)) throw new TubesError(`this browser cannot play ${type}`);
          buffer = source.addSourceBuffer(type);
          buffer.mode = 'sequence';
          buffer.addEventListener('updateend', () => {
            // Stay near the live edge, and keep the buffer small.
            const b = video.buffered;
            // Start once a second is buffered, so playback does not stall
            // at once waiting for the next part.
            if (video.paused && !started && b.length && b.end(b.length - 1) - b.start(0) >= 1) {
              started = true;
              video.currentTime = Math.max(b.start(0), b.end(b.length - 1) - 1);
              video.play().catch(() => {});
            }
            if (b.length) {
              const end = b.end(b.length - 1);
              if (end - video.currentTime > 3) video.currentTime = Math.max(b.start(b.length - 1), end - 1);
              else if (video.currentTime < b.start(0)) video.currentTime = b.start(0);
            }
            trim(false);
            pump();
          });
          onState?.('live');
        }
        if (queue.length > 40) queue.length = 0; // far behind: drop, catch up at the next keyframe
        queue.push(part);
      }
      pump();
    }
    onState?.('the screen share ended');
    if (source.readyState === 'open' && buffer && !buffer.updating) source.endOfStream();
  })();
  return { stop: () => aborter.abort(), done };
}
