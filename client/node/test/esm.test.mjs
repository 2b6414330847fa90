// The package imported from an ES module: named imports and the default export.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import gaspar2, { request, parseUrl } from 'gaspar2';

test('named and default imports', () => {
  assert.equal(typeof request, 'function');
  assert.equal(gaspar2.request, request);
  assert.deepEqual(parseUrl(':1'), { host: '127.0.0.1', port: 1 });
});
