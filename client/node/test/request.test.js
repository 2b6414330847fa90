'use strict';
// Tests against a live server, run by `npm test`. GASPAR2_TEST_URL is HOST:PORT of a server
// whose handler echoes every message, fails on "fail" and sleeps SECONDS on "pid:SECONDS"
// (python -m gaspar2 serve tests.handlers:work, from the repository's root);
// GASPAR2_TEST_URL6, if set, is the same on an IPv6 address.

const assert = require('node:assert/strict');
const net = require('node:net');
const { describe, test } = require('node:test');
const { request, parseUrl } = require('gaspar2');

const url = process.env.GASPAR2_TEST_URL;
const url6 = process.env.GASPAR2_TEST_URL6;
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
});
