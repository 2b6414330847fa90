'use strict';
// gaspar2 client for Node.js: one request per connection, using only the net module.
//
// The request is a 4-byte big-endian length and the payload; the reply is everything the
// server writes before closing. A failed request is a TCP reset, never an empty reply.

const net = require('net');

// "host:port" or "[v6 address]:port" -> {host, port}
function parseUrl(url) {
  const match = /^\[?(.*?)\]?:(\d+)$/.exec(url);
  if (!match) throw new TypeError(`expected HOST:PORT, got ${JSON.stringify(url)}`);
  return { host: match[1] || '127.0.0.1', port: Number(match[2]) };
}

function failure(url, message, code, cause) {
  const err = new Error(`${url}: ${message}`, { cause });
  err.code = code;
  return err;
}

// The rejection for an aborted request: a signal from AbortSignal.timeout() is a timeout.
function aborted(url, signal) {
  if (signal.reason?.name === 'TimeoutError') return failure(url, 'timed out', 'ETIMEDOUT', signal.reason);
  const err = failure(url, 'aborted', 'ABORT_ERR', signal.reason);
  err.name = 'AbortError';
  return err;
}

// Send `message` (a Buffer, Uint8Array or string, sent as UTF-8) to the server at `url`.
// Resolves to the reply as a Buffer (possibly empty). Rejects with an Error whose `code` is
// 'ECONNRESET' when the server reset the connection (the request failed there),
// 'ETIMEDOUT' when `timeout` milliseconds passed first, 'ABORT_ERR' when `signal` aborted
// it, or the socket's own code (e.g. 'ECONNREFUSED') otherwise.
function request(url, message, { timeout, signal } = {}) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) throw aborted(url, signal);
    const { host, port } = parseUrl(url);
    const payload = typeof message === 'string' ? Buffer.from(message, 'utf8') : Buffer.from(message);
    if (payload.length > 0xffffffff) throw new RangeError('message too long for a 4-byte length');
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length);

    const chunks = [];
    let timer;
    const socket = net.connect({ host, port });
    const onAbort = () => settle(aborted(url, signal));
    const settle = (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(Buffer.concat(chunks));
    };

    if (timeout > 0) {
      timer = setTimeout(() => settle(failure(url, `timed out after ${timeout} ms`, 'ETIMEDOUT')), timeout);
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    // One write for length and payload, then half-close: the request is complete.
    socket.end(Buffer.concat([header, payload]));
    socket.on('data', (chunk) => chunks.push(chunk));
    // An orderly close (EOF) is the only success, even with no bytes.
    socket.on('end', () => settle());
    socket.on('error', (err) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        // EPIPE: the reset hit a write rather than a read; it means the same.
        settle(failure(url, 'connection reset: the request failed on the server (see its log)', 'ECONNRESET', err));
      } else if (err.code === 'ECONNREFUSED') {
        settle(failure(url, 'connection refused: is the server running?', err.code, err));
      } else {
        settle(failure(url, err.message, err.code, err));
      }
    });
  });
}

module.exports = { request, parseUrl };
