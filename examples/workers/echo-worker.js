// A gaspar2 worker in Node.js: it echoes each request, and fails those that start with "fail".
// Serve: gaspar2 serve --exec 'node echo-worker.js'
'use strict';

function answer(kind, body) {              // kind 0: a reply, 1: this request failed
  const head = Buffer.alloc(5);
  head.writeUInt8(kind, 0);
  head.writeUInt32BE(body.length, 1);
  process.stdout.write(Buffer.concat([head, body]));
}

function handle(request) {
  if (request.subarray(0, 4).toString() === 'fail') {
    answer(1, Buffer.from("this example fails requests that start with 'fail'"));
  } else {
    answer(0, request);
  }
}

let chunks = [];
let buffered = 0;
process.stdin.on('data', (chunk) => {
  chunks.push(chunk);
  buffered += chunk.length;
  while (buffered >= 4) {
    if (chunks[0].length < 4) chunks = [Buffer.concat(chunks, buffered)];
    const need = 4 + chunks[0].readUInt32BE(0);
    if (buffered < need) return;
    const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    handle(data.subarray(4, need));
    chunks = buffered > need ? [data.subarray(need)] : [];
    buffered -= need;
  }
});
