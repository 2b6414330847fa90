#!/usr/bin/env node
'use strict';
// gaspar2-request [--timeout SECONDS] ADDRESS [MESSAGE]
//
// ADDRESS is HOST:PORT, [V6]:PORT, unix:PATH or unix:@NAME (Linux's abstract namespace).
// Sends MESSAGE (standard input when it is absent or "-") and writes the reply to standard
// output. On failure writes one line to standard error and exits 1.

const { request } = require('./gaspar2');

const USAGE = 'usage: gaspar2-request [--timeout SECONDS] HOST:PORT|unix:PATH|unix:@NAME [MESSAGE]\n';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function main(args) {
  let timeout;
  if (args[0] === '--timeout') {
    const seconds = Number(args[1]);
    if (args.length < 2 || !(seconds >= 0)) return usage();
    timeout = seconds > 0 ? Math.max(1, Math.round(seconds * 1000)) : undefined;
    args = args.slice(2);
  }
  if (args.length < 1 || args.length > 2) return usage();
  const [url, text] = args;
  const message = text === undefined || text === '-' ? await readStdin() : text;
  try {
    const reply = await request(url, message, { timeout });
    process.stdout.write(reply);
  } catch (err) {
    process.stderr.write(`gaspar2-request: ${err.message}\n`);
    process.exitCode = 1;
  }
}

function usage() {
  process.stderr.write(USAGE);
  process.exitCode = 2;
}

main(process.argv.slice(2));
