// The reference Piping server (npm piping-server, pinned in package.json),
// served the way its own CLI serves it, for tests/differential.rs.
//
//   node tests/js/reference-server.js
//
// Listens on 127.0.0.1, on a port the system picks, and prints
// `port <number>` on stdout once it listens. Then it reads commands on
// stdin, one a line:
//
//   stats  ->  prints `stats <waiting senders> <waiting receivers> <transfers>`
//
// so a test can wait until a request has registered (a waiting receiver
// gets no response to tell it). It exits when stdin closes, so it never
// outlives the test that started it.
"use strict";

const http = require("http");
const readline = require("readline");
const { Server } = require("piping-server");

const piping = new Server();
// As in piping-server's CLI (dist/src/index.js).
const server = http.createServer({ requestTimeout: 0 }, piping.generateHandler(false));
process.on("uncaughtException", (err) => {
  console.error("on uncaughtException", err);
});

server.listen({ host: "127.0.0.1", port: 0 }, () => {
  console.log(`port ${server.address().port}`);
});

function stats() {
  let senders = 0;
  let receivers = 0;
  for (const pipe of piping.pathToUnestablishedPipe.values()) {
    if (pipe.sender !== undefined) {
      senders++;
    }
    receivers += pipe.receivers.length;
  }
  return `stats ${senders} ${receivers} ${piping.pathToEstablished.size}`;
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (line.trim() === "stats") {
    console.log(stats());
  } else {
    console.log(`unknown command: ${line}`);
  }
});
commands.on("close", () => process.exit(0));
