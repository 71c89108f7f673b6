// Shared by the driver scripts of tests/browser_live.rs (browser-sse.mjs,
// browser-mjpeg.mjs, browser-ws.mjs), on top of browser-common.mjs: the
// command line, the line protocol with the Rust test (stdout to it, stdin
// from it), and Node's own HTTPS requests to the relay (self-signed).
//
// The protocol: every line a script prints on stdout is read by the test as
// it comes. `result {JSON}` carries what the test checks itself; `ok` (the
// last line, printed by `main`) means the script's own checks passed. Other
// lines are requests to the test (e.g. `send 12`), answered on stdin.

import { request } from 'node:https';
import { createInterface } from 'node:readline';
import { baseUrl, withTimeout } from './browser-common.mjs';

/** `base` (https://localhost:PORT) and the further positional arguments. */
export function args(names) {
  const base = baseUrl();
  const rest = process.argv.slice(3);
  if (rest.length !== names.length) {
    throw new Error(`usage: node ${process.argv[1]} https://localhost:PORT ${names.map((n) => n.toUpperCase()).join(' ')}`);
  }
  return { base, ...Object.fromEntries(names.map((n, i) => [n, rest[i]])) };
}

/** Prints one protocol line for the Rust test. */
export function say(line) {
  process.stdout.write(`${line}\n`);
}

/** Prints the JSON result the Rust test checks. */
export function result(value) {
  say(`result ${JSON.stringify(value)}`);
}

/**
 * Lines the Rust test writes to stdin, in order; `next` waits, bounded, for
 * the next unread one. `close` lets Node exit (stdin would keep it alive).
 */
export class StdinLines {
  constructor() {
    this.lines = [];
    this.waiters = [];
    this.ended = false;
    this.reader = createInterface({ input: process.stdin });
    this.reader.on('line', (line) => {
      this.lines.push(line);
      this.wake();
    });
    this.reader.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  wake() {
    for (const w of [...this.waiters]) w();
  }

  next(ms, what) {
    let check;
    const arrived = new Promise((resolve, reject) => {
      check = () => {
        if (this.lines.length) return resolve(this.lines.shift());
        if (this.ended) reject(new Error(`stdin closed while waiting for ${what}`));
      };
      this.waiters.push(check);
      check();
    });
    return withTimeout(arrived, ms, `the test: ${what}`).finally(() => {
      this.waiters = this.waiters.filter((w) => w !== check);
    });
  }

  /** Waits for exactly `line` as the next line from the test. */
  async expect(line, ms) {
    const got = await this.next(ms, JSON.stringify(line));
    if (got !== line) throw new Error(`the test answered ${JSON.stringify(got)}, expected ${JSON.stringify(line)}`);
  }

  close() {
    this.reader.close();
    process.stdin.destroy();
  }
}

function target(base, pathAndQuery) {
  const url = new URL(pathAndQuery, base);
  return {
    host: url.hostname,
    port: Number(url.port),
    path: url.pathname + url.search,
    // The relay's certificate is self-signed; HTTP/1.1 (Node offers no ALPN).
    rejectUnauthorized: false,
    agent: false,
  };
}

/**
 * A streaming upload from Node (HTTP/1.1 over TLS, chunked). `write` waits
 * for the socket to take the bytes; `end` finishes the body; `response`
 * resolves to `{ status, headers, text }` once the response has ended
 * (the relay answers a live sender at once and streams its log).
 */
export function upload(base, pathAndQuery, headers) {
  const req = request({ ...target(base, pathAndQuery), method: 'PUT', headers });
  const response = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (s) => (text += s));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  // Unhandled until awaited: keep a failure from crashing Node before then.
  response.catch(() => {});
  req.flushHeaders();
  return {
    response,
    write(bytes) {
      return new Promise((resolve, reject) => {
        req.write(bytes, (e) => (e ? reject(e) : resolve()));
      });
    },
    end() {
      return new Promise((resolve) => req.end(resolve));
    },
    destroy() {
      req.destroy();
    },
  };
}

/**
 * A download from Node that hands over its bytes as they come: resolves,
 * once the response head is there, to `{ status, headers, read(n, ms) }`,
 * where `read` waits (bounded) until at least `n` bytes have arrived and
 * returns all of them so far. `close` drops the connection.
 */
export function download(base, pathAndQuery, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request({ ...target(base, pathAndQuery), method: 'GET', headers });
    req.on('error', reject);
    req.on('response', (res) => {
      const parts = [];
      let total = 0;
      let ended = false;
      let failure = null;
      let waiters = [];
      const wake = () => waiters.forEach((w) => w());
      res.on('data', (b) => {
        parts.push(b);
        total += b.length;
        wake();
      });
      res.on('end', () => {
        ended = true;
        wake();
      });
      res.on('error', (e) => {
        failure = e;
        wake();
      });
      resolve({
        status: res.statusCode,
        headers: res.headers,
        read(n, ms) {
          let check;
          const enough = new Promise((ok, fail) => {
            check = () => {
              if (total >= n) return ok(Buffer.concat(parts));
              if (failure) return fail(failure);
              if (ended) fail(new Error(`the response ended after ${total} bytes, wanted ${n}`));
            };
            waiters.push(check);
            check();
          });
          return withTimeout(enough, ms, `${n} bytes of GET ${pathAndQuery}`).finally(() => {
            waiters = waiters.filter((w) => w !== check);
          });
        },
        close() {
          req.destroy();
        },
      });
    });
    req.end();
  });
}
