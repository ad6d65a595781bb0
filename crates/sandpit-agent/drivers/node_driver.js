// sandpit's JavaScript code-interpreter driver: one long-lived Node.js process per context.
// Requests arrive as JSON lines on fd 3; events and results leave as JSON lines on fd 4.
// Code runs in one vm context, so top-level declarations persist between runs.
'use strict';
const fs = require('fs');
const vm = require('vm');
const util = require('util');
const readline = require('readline');

function send(obj) {
  fs.writeSync(4, JSON.stringify(obj) + '\n');
}
const show = (args) => args.map((a) => (typeof a === 'string' ? a : util.inspect(a))).join(' ') + '\n';
const sandboxConsole = {
  log: (...a) => send({ event: 'stdout', data: show(a) }),
  info: (...a) => send({ event: 'stdout', data: show(a) }),
  debug: (...a) => send({ event: 'stdout', data: show(a) }),
  error: (...a) => send({ event: 'stderr', data: show(a) }),
  warn: (...a) => send({ event: 'stderr', data: show(a) }),
};
const context = vm.createContext({
  console: sandboxConsole,
  require,
  process,
  Buffer,
  setTimeout,
  setInterval,
  clearTimeout,
  clearInterval,
  setImmediate,
  URL,
  TextEncoder,
  TextDecoder,
});
if (process.env.SANDPIT_CONTEXT_PAYLOAD !== undefined) {
  const raw = process.env.SANDPIT_CONTEXT_PAYLOAD;
  delete process.env.SANDPIT_CONTEXT_PAYLOAD;
  // JSON text: a string, an object or an array.
  let value = raw;
  try {
    value = JSON.parse(raw);
  } catch (_) {}

  context.context = value;
}
let count = 0;

async function run(code) {
  count += 1;
  const results = [];
  let error = null;
  try {
    let value = vm.runInContext(code, context, { filename: '<cell>', breakOnSigint: true });
    if (value && typeof value.then === 'function') value = await value;
    if (value !== undefined) {
      results.push({ 'text/plain': util.inspect(value), is_main_result: true });
    }
  } catch (e) {
    const name = (e && e.name) || 'Error';
    const message = e && e.message !== undefined ? String(e.message) : String(e);
    error = { name, value: message, traceback: (e && e.stack) || String(e) };
  }
  send({ event: 'done', execution_count: count, results, error });
}

process.on('SIGINT', () => {});
send({ event: 'ready', version: process.version });
const rl = readline.createInterface({ input: fs.createReadStream(null, { fd: 3 }) });
let queue = Promise.resolve();
rl.on('line', (line) => {
  const req = JSON.parse(line);
  queue = queue.then(() => run(req.code || ''));
});
rl.on('close', () => process.exit(0));
