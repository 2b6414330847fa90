'use strict';
// Tests against a live server, run by `npm test`. GASPAR2_TEST_URL is HOST:PORT of a server
// whose handler echoes every message, fails on "fail" and sleeps SECONDS on "pid:SECONDS"
// (python -m gaspar2 serve tests.handlers:work, from the repository's root);
// GASPAR2_TEST_URL6, if set, is the same on an IPv6 address, GASPAR2_TEST_UNIX on a unix
// socket (unix:PATH) and GASPAR2_TEST_ABSTRACT on an abstract one (unix:@NAME).

const assert = require('node:assert/strict');
const net = require('node:net');
const { describe, test } = require('node:test');
const os = require('node:os');
const path = require('node:path');
const { request, parseUrl, unixPath } = require('gaspar2');

const url = process.env.GASPAR2_TEST_URL;
const url6 = process.env.GASPAR2_TEST_URL6;
const unixUrl = process.env.GASPAR2_TEST_UNIX;
const abstractUrl = process.env.GASPAR2_TEST_ABSTRACT;
// Node.js 20.8 with libuv 1.48 (Node.js 22) reaches abstract names as other programs bind
// them; older ones are refused with ENOTSUP.
const atLeast = (version, major, minor) => {
  const [a, b] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
};
const abstractWorks = process.platform === 'linux' && atLeast(process.versions.node, 20, 8) &&
  atLeast(process.versions.uv, 1, 48);
const skip = !url && 'set GASPAR2_TEST_URL to HOST:PORT of a live test server';

function rejectsWith(promise, code) {
  return assert.rejects(promise, (err) => {
    assert.equal(err.code, code, err.message);
    return true;
  });
}

// A port that nothing listens on: listen, then close.
async function closedPort() {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('parseUrl', () => {
  assert.deepEqual(parseUrl('example.org:80'), { host: 'example.org', port: 80 });
  assert.deepEqual(parseUrl('[::1]:10123'), { host: '::1', port: 10123 });
  assert.deepEqual(parseUrl(':10123'), { host: '127.0.0.1', port: 10123 });
  assert.throws(() => parseUrl('no port'), TypeError);
  assert.throws(() => parseUrl('unix:10123'), TypeError);
});

test('unixPath', () => {
  assert.equal(unixPath('unix:/run/gaspar2.sock'), '/run/gaspar2.sock');
  assert.equal(unixPath('unix:relative.sock'), 'relative.sock');
  assert.equal(unixPath('unix:@gaspar2'), '\0gaspar2');
  assert.equal(unixPath('127.0.0.1:10123'), null);
  assert.throws(() => unixPath('unix:'), TypeError);
  assert.throws(() => unixPath('unix:@'), TypeError);
});

test('a unix socket file that is not there is ECONNREFUSED', async () => {
  const missing = path.join(os.tmpdir(), `gaspar2-test-${process.pid}`, 'none.sock');
  await rejectsWith(request(`unix:${missing}`, 'anyone?'), 'ECONNREFUSED');
});

test('an abstract name nobody listens on is ECONNREFUSED, or ENOTSUP before Node.js 22', async () => {
  await rejectsWith(request(`unix:@gaspar2-test-nobody-${process.pid}`, 'anyone?'),
    abstractWorks ? 'ECONNREFUSED' : 'ENOTSUP');
});

describe('against a live server', { skip }, () => {
  test('text, bytes and an empty message are echoed', async () => {
    assert.equal((await request(url, 'hello')).toString(), 'hello');
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => i % 256));
    assert.deepEqual(await request(url, new Uint8Array(bytes)), bytes);
    assert.equal((await request(url, '')).length, 0);
  });

  test('1 MiB is echoed', async () => {
    const big = Buffer.alloc(1 << 20, 'gaspar2 ');
    assert.ok((await request(url, big, { timeout: 30000 })).equals(big));
  });

  test('a failure on the server is ECONNRESET, never an empty reply', async () => {
    await rejectsWith(request(url, 'fail'), 'ECONNRESET');
  });

  test('nothing listening is ECONNREFUSED', async () => {
    await rejectsWith(request(`127.0.0.1:${await closedPort()}`, 'anyone?'), 'ECONNREFUSED');
  });

  test('no reply within the timeout is ETIMEDOUT', async () => {
    await rejectsWith(request(url, 'pid:0.5', { timeout: 100 }), 'ETIMEDOUT');
  });

  test('AbortSignal.timeout() is a timeout too', async () => {
    await rejectsWith(request(url, 'pid:0.5', { signal: AbortSignal.timeout(100) }), 'ETIMEDOUT');
  });

  test('an aborted signal is ABORT_ERR, before or during the request', async () => {
    const controller = new AbortController();
    const pending = request(url, 'pid:0.5', { signal: controller.signal });
    controller.abort();
    await rejectsWith(pending, 'ABORT_ERR');
    await rejectsWith(request(url, 'hello', { signal: controller.signal }), 'ABORT_ERR');
    assert.equal((await request(url, 'after', { signal: new AbortController().signal })).toString(), 'after');
  });

  test('a bracketed IPv6 address', { skip: !url6 && 'GASPAR2_TEST_URL6 is not set' }, async () => {
    assert.equal((await request(url6, 'over IPv6')).toString(), 'over IPv6');
  });

  test('unix:PATH: a message, an empty one, a failure and a timeout', { skip: !unixUrl && 'GASPAR2_TEST_UNIX is not set' }, async () => {
    assert.equal((await request(unixUrl, `over ${unixUrl}`)).toString(), `over ${unixUrl}`);
    assert.equal((await request(unixUrl, '')).length, 0);
    const big = Buffer.alloc(1 << 20, 'unix ');
    assert.ok((await request(unixUrl, big, { timeout: 30000 })).equals(big));
    await rejectsWith(request(unixUrl, 'fail'), 'ECONNRESET');
    await rejectsWith(request(unixUrl, 'pid:0.5', { timeout: 100 }), 'ETIMEDOUT');
  });

  test('unix:@NAME: a message and a failure, or ENOTSUP before Node.js 22', { skip: !abstractUrl && 'GASPAR2_TEST_ABSTRACT is not set' }, async () => {
    if (!abstractWorks) {
      await rejectsWith(request(abstractUrl, 'hello'), 'ENOTSUP');
      return;
    }
    assert.equal((await request(abstractUrl, `over ${abstractUrl}`)).toString(), `over ${abstractUrl}`);
    await rejectsWith(request(abstractUrl, 'fail'), 'ECONNRESET');
  });
});
