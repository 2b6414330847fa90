'use strict';
// gaspar2 client for Node.js: one request per connection, using only the net module.
//
// The request is a 4-byte big-endian length and the payload; the reply is everything the
// server writes before closing. A failed request is a connection reset, never an empty
// reply. Servers are reached over TCP ("host:port") or unix sockets ("unix:PATH", and
// "unix:@NAME" for Linux's abstract namespace).

const net = require('net');

// "host:port" or "[v6 address]:port" -> {host, port}
function parseUrl(url) {
  const match = /^\[?(.*?)\]?:(\d+)$/.exec(url);
  if (!match || url.startsWith('unix:')) {
    throw new TypeError(`expected HOST:PORT, unix:PATH or unix:@NAME, got ${JSON.stringify(url)}`);
  }
  return { host: match[1] || '127.0.0.1', port: Number(match[2]) };
}

// "unix:PATH" -> PATH, "unix:@NAME" -> "\0NAME" (Linux's abstract namespace); null for a
// TCP address.
function unixPath(url) {
  if (!url.startsWith('unix:')) return null;
  const path = url.slice('unix:'.length);
  if (path === '' || path === '@') {
    throw new TypeError(`unix: needs a path or @NAME, got ${JSON.stringify(url)}`);
  }
  return path.startsWith('@') ? `\0${path.slice(1)}` : path;
}

// Whether net.connect() reaches a name in Linux's abstract namespace as other programs bind
// it: Node 20.8 passes the leading NUL on to libuv, and libuv 1.48 stops padding the name
// with NULs to the whole size of a sockaddr_un (a padded name is another name). Node 22
// has both; Node 18 and 20 (libuv 1.46) do not.
function abstractSupported() {
  const atLeast = (version, major, minor) => {
    const [a, b] = version.split('.').map(Number);
    return a > major || (a === major && b >= minor);
  };
  return process.platform === 'linux' && atLeast(process.versions.node, 20, 8) &&
    atLeast(process.versions.uv, 1, 48);
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
// 'ECONNREFUSED' when nothing listens there (a unix socket's file that does not exist
// included), 'ETIMEDOUT' when `timeout` milliseconds passed first, 'ABORT_ERR' when
// `signal` aborted it, or the socket's own code otherwise.
function request(url, message, { timeout, signal } = {}) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) throw aborted(url, signal);
    const path = unixPath(url);
    const address = path === null ? parseUrl(url) : { path };
    if (path?.startsWith('\0') && !abstractSupported()) {
      throw failure(url, `abstract unix socket names (unix:@NAME) need Node.js 22 or later on Linux ` +
        `(Node.js ${process.versions.node} with libuv ${process.versions.uv} would pad the name)`, 'ENOTSUP');
    }
    const payload = typeof message === 'string' ? Buffer.from(message, 'utf8') : Buffer.from(message);
    if (payload.length > 0xffffffff) throw new RangeError('message too long for a 4-byte length');
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length);

    const chunks = [];
    let timer;
    const socket = net.connect(address);
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
      } else if (err.code === 'ECONNREFUSED' || (path !== null && err.code === 'ENOENT')) {
        // ENOENT: a unix socket's file that is not there; nothing listens, as for a refusal.
        settle(failure(url, 'connection refused: is the server running?', 'ECONNREFUSED', err));
      } else {
        settle(failure(url, err.message, err.code, err));
      }
    });
  });
}

module.exports = { request, parseUrl, unixPath };
