// The unmodified @cloudflare/sandbox SandboxClient against sandpit's cloudflare dialect:
// commands (buffered and streamed), files, sessions, background processes, code contexts,
// git checkout, ping, the SDK's error classes and the bearer token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { parseSSEStream, collectFile } from '@cloudflare/sandbox';
import { Server, uniqueId, collect, assertContained } from './harness.mjs';

let server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.stop();
});

/** The promise's rejection (it must reject). */
async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('expected the call to fail');
}

test('ping and exec make the sandbox on first use and run commands in it', async () => {
  const id = uniqueId('cf-exec');
  const c = server.client(id);
  assert.equal(await c.utils.ping(), 'pong');
  await assertContained(c, assert);

  const r = await c.commands.execute('echo hello; echo oops >&2; (exit 3)', undefined);
  assert.equal(r.success, false);
  assert.equal(r.exitCode, 3);
  assert.equal(r.stdout, 'hello\n');
  assert.equal(r.stderr, 'oops\n');
  assert.equal(r.command, 'echo hello; echo oops >&2; (exit 3)');
  // `exit` ends the session's shell (sandpit says so on stderr); the next command gets a
  // fresh one.
  const exited = await c.commands.execute('exit 5', undefined);
  assert.equal(exited.exitCode, 5);
  assert.equal((await c.commands.execute('echo again', undefined)).stdout, 'again\n');
  assert.ok(!Number.isNaN(Date.parse(r.timestamp)), r.timestamp);

  const env = await c.commands.execute('echo "$GREETING from $PWD"', undefined,
    { env: { GREETING: 'hi' }, cwd: '/tmp' });
  assert.equal(env.stdout, 'hi from /tmp\n');
  assert.equal(env.exitCode, 0);

  // The sandbox is an ordinary sandpit sandbox with the chosen id.
  const native = await fetch(`http://127.0.0.1:${server.port}/v1/sandboxes/${id}`,
    { headers: { authorization: `Bearer ${server.token}` } });
  assert.equal(native.status, 200);
  assert.equal((await native.json()).id, id);

  const cmds = await c.utils.getCommands();
  assert.ok(cmds.includes('bash'), JSON.stringify(cmds));
});

test('streaming exec yields start, output in order and complete with the exit code', async () => {
  const c = server.client(uniqueId('cf-stream'));
  const stream = await c.commands.executeStream(
    'for i in 1 2 3; do echo line$i; sleep 0.2; done; echo bad >&2; (exit 7)', undefined);
  const events = await collect(parseSSEStream, stream);
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'start', JSON.stringify(events));
  assert.equal(types.at(-1), 'complete', JSON.stringify(events));
  assert.equal(events.at(-1).exitCode, 7);
  const stdout = events.filter((e) => e.type === 'stdout').map((e) => e.data).join('');
  const stderr = events.filter((e) => e.type === 'stderr').map((e) => e.data).join('');
  assert.equal(stdout, 'line1\nline2\nline3\n');
  assert.equal(stderr, 'bad\n');
  // Output arrived as it was produced, not in one piece at the end.
  assert.ok(events.filter((e) => e.type === 'stdout').length >= 2, JSON.stringify(events));
  for (const e of events) assert.ok(!Number.isNaN(Date.parse(e.timestamp)), JSON.stringify(e));
});

test('files: write, read, mkdir, list, exists, rename, move, delete and missing-file errors', async () => {
  const c = server.client(uniqueId('cf-files'));
  const w = await c.files.writeFile('/workspace/notes/a.txt', 'héllo\n', undefined);
  assert.equal(w.success, true);
  assert.equal(w.path, '/workspace/notes/a.txt');

  const r = await c.files.readFile('/workspace/notes/a.txt', undefined);
  assert.equal(r.content, 'héllo\n');
  assert.equal(r.encoding, 'utf-8');
  assert.equal(r.isBinary, false);
  assert.equal(r.size, 7);
  const asB64 = await c.files.readFile('/workspace/notes/a.txt', undefined, { encoding: 'base64' });
  assert.equal(asB64.encoding, 'base64');
  assert.equal(Buffer.from(asB64.content, 'base64').toString(), 'héllo\n');

  // Binary content round-trips as base64.
  const bytes = Buffer.from([0, 255, 1, 254, 10]);
  await c.files.writeFile('/workspace/blob.bin', bytes.toString('base64'), undefined, { encoding: 'base64' });
  const b = await c.files.readFile('/workspace/blob.bin', undefined);
  assert.equal(b.encoding, 'base64');
  assert.equal(b.isBinary, true);
  assert.deepEqual(Buffer.from(b.content, 'base64'), bytes);
  const streamed = await collectFile(await c.files.readFileStream('/workspace/blob.bin', undefined));
  assert.deepEqual(Buffer.from(streamed.content), bytes);
  const text = await collectFile(await c.files.readFileStream('/workspace/notes/a.txt', undefined));
  assert.equal(text.content, 'héllo\n');
  assert.equal(text.metadata.mimeType, 'text/plain');

  const m = await c.files.mkdir('/workspace/deep/er/dir', undefined, { recursive: true });
  assert.equal(m.success, true);
  assert.equal(m.recursive, true);
  await c.files.writeFile('/workspace/deep/er/dir/x.py', 'print(1)\n', undefined);
  await c.files.writeFile('/workspace/deep/.hidden', 'h', undefined);

  const flat = await c.files.listFiles('/workspace/deep', undefined);
  assert.deepEqual(flat.files.map((f) => f.name), ['er']);
  assert.equal(flat.files[0].type, 'directory');
  const all = await c.files.listFiles('/workspace/deep', undefined, { recursive: true, includeHidden: true });
  const rel = all.files.map((f) => f.relativePath).sort();
  assert.deepEqual(rel, ['.hidden', 'er', 'er/dir', 'er/dir/x.py']);
  assert.equal(all.count, 4);
  const py = all.files.find((f) => f.name === 'x.py');
  assert.equal(py.absolutePath, '/workspace/deep/er/dir/x.py');
  assert.equal(py.size, 9);
  assert.equal(py.type, 'file');
  assert.match(py.mode, /^[rwx-]{9}$/);
  assert.equal(py.permissions.readable, true);
  assert.ok(!Number.isNaN(Date.parse(py.modifiedAt)));

  assert.equal((await c.files.exists('/workspace/notes/a.txt', undefined)).exists, true);
  assert.equal((await c.files.exists('/workspace/nope', undefined)).exists, false);

  const rn = await c.files.renameFile('/workspace/notes/a.txt', '/workspace/notes/b.txt', undefined);
  assert.equal(rn.newPath, '/workspace/notes/b.txt');
  assert.equal((await c.files.exists('/workspace/notes/a.txt', undefined)).exists, false);
  // Moving into a directory keeps the name, as `mv` does.
  const mv = await c.files.moveFile('/workspace/notes/b.txt', '/workspace/deep', undefined);
  assert.equal(mv.newPath, '/workspace/deep/b.txt');
  assert.equal((await c.files.readFile('/workspace/deep/b.txt', undefined)).content, 'héllo\n');

  const d = await c.files.deleteFile('/workspace/deep/b.txt', undefined);
  assert.equal(d.success, true);
  assert.equal((await c.files.exists('/workspace/deep/b.txt', undefined)).exists, false);

  // A missing file is the SDK's FileNotFoundError, with the path in its context.
  const e = await rejection(c.files.readFile('/workspace/missing.txt', undefined));
  assert.equal(e.name, 'FileNotFoundError', String(e));
  assert.equal(e.code, 'FILE_NOT_FOUND');
  assert.equal(e.httpStatus, 404);
  assert.equal(e.path, '/workspace/missing.txt');
  const del = await rejection(c.files.deleteFile('/workspace/missing.txt', undefined));
  assert.equal(del.name, 'FileNotFoundError');
  const list = await rejection(c.files.listFiles('/workspace/missing', undefined));
  assert.equal(list.name, 'FileNotFoundError');
  // Bad input is a validation error, not a crash.
  const bad = await rejection(c.files.writeFile('/workspace/x', 'not base64!', undefined, { encoding: 'base64' }));
  assert.equal(bad.code, 'VALIDATION_FAILED');
  assert.equal(bad.httpStatus, 400);
});

test('sessions keep cd and export within a session and not across sessions', async () => {
  const c = server.client(uniqueId('cf-sess'));
  const created = await c.utils.createSession({ id: 'work', env: { FROM_CREATE: 'yes' }, cwd: '/tmp' });
  assert.equal(created.success, true);
  assert.equal(created.id, 'work');
  const again = await rejection(c.utils.createSession({ id: 'work' }));
  assert.equal(again.name, 'SessionAlreadyExistsError', String(again));

  await c.commands.execute('mkdir -p /tmp/sub && cd /tmp/sub && export COLOR=blue', 'work');
  const inside = await c.commands.execute('echo "$PWD $COLOR $FROM_CREATE"', 'work');
  assert.equal(inside.stdout, '/tmp/sub blue yes\n');
  assert.equal(inside.sessionId, 'work');

  // Another session (made on first use) and the default session see neither.
  const other = await c.commands.execute('echo "$PWD [$COLOR]"', 'other');
  assert.equal(other.stdout, '/workspace []\n');
  await c.commands.execute('cd /etc && export COLOR=red', undefined);
  const dflt = await c.commands.execute('echo "$PWD $COLOR"', undefined);
  assert.equal(dflt.stdout, '/etc red\n');
  assert.equal((await c.commands.execute('echo "$PWD $COLOR"', 'work')).stdout, '/tmp/sub blue\n');

  const gone = await c.utils.deleteSession('work');
  assert.equal(gone.sessionId, 'work');
  // A deleted session starts afresh when used again.
  assert.equal((await c.commands.execute('echo "[$COLOR]"', 'work')).stdout, '[]\n');
});

test('background processes: start, list, get, logs, stream, kill, kill-all', async () => {
  const c = server.client(uniqueId('cf-proc'));
  const started = await c.processes.startProcess(
    'for i in 1 2 3; do echo tick$i; sleep 0.1; done; echo done >&2; sleep 300', undefined,
    { processId: 'ticker' });
  assert.equal(started.success, true);
  assert.equal(started.processId, 'ticker');
  assert.ok(started.pid > 0);

  const short = await c.processes.startProcess('echo quick; exit 4', undefined);
  assert.ok(short.processId);

  // The log stream from the start of the short one ends with its exit.
  const evs = await collect(parseSSEStream, await c.processes.streamProcessLogs(short.processId));
  assert.equal(evs[0].type, 'process_info', JSON.stringify(evs));
  assert.equal(evs.at(-1).type, 'exit', JSON.stringify(evs));
  assert.equal(evs.at(-1).exitCode, 4);
  assert.equal(evs.filter((e) => e.type === 'stdout').map((e) => e.data).join(''), 'quick\n');

  const info = await c.processes.getProcess(short.processId);
  assert.equal(info.process.status, 'failed');
  assert.equal(info.process.exitCode, 4);
  assert.equal(info.process.command, 'echo quick; exit 4');

  // Wait (by the log stream's events, no clock) until the ticker has written its lines.
  const reader = (await c.processes.streamProcessLogs('ticker'));
  let seen = '';
  for await (const ev of parseSSEStream(reader)) {
    if (ev.type === 'stderr') seen += ev.data;
    if (seen.includes('done')) break;
  }
  const logs = await c.processes.getProcessLogs('ticker');
  assert.equal(logs.stdout, 'tick1\ntick2\ntick3\n');
  assert.equal(logs.stderr, 'done\n');

  const list = await c.processes.listProcesses();
  const ticker = list.processes.find((p) => p.id === 'ticker');
  assert.equal(ticker.status, 'running', JSON.stringify(list));
  assert.ok(list.processes.some((p) => p.id === short.processId));

  const killed = await c.processes.killProcess('ticker');
  assert.equal(killed.success, true);
  // The stream of a killed process ends with its exit event.
  const end = await collect(parseSSEStream, await c.processes.streamProcessLogs('ticker'));
  assert.equal(end.at(-1).type, 'exit');
  const after = await c.processes.getProcess('ticker');
  assert.notEqual(after.process.status, 'running');

  await c.processes.startProcess('sleep 300', undefined, { processId: 'sleeper1' });
  await c.processes.startProcess('sleep 300', undefined, { processId: 'sleeper2' });
  const all = await c.processes.killAllProcesses();
  assert.equal(all.cleanedCount, 2);
  for (const id of ['sleeper1', 'sleeper2']) {
    const done = await collect(parseSSEStream, await c.processes.streamProcessLogs(id));
    assert.equal(done.at(-1).type, 'exit');
  }

  const missing = await rejection(c.processes.getProcess('no-such-process'));
  assert.equal(missing.name, 'ProcessNotFoundError', String(missing));
  assert.equal(missing.httpStatus, 404);

});

test('a background process started with timeoutMs is killed once it passes', async () => {
  const c = server.client(uniqueId('cf-ptimeout'));
  await c.processes.startProcess('sleep 30', undefined, { processId: 'bounded', timeoutMs: 500 });
  await c.processes.startProcess('sleep 30', undefined, { processId: 'unbounded' });
  // The log stream ends with the exit of the killed process (SIGKILL: 128 + 9).
  const evs = await collect(parseSSEStream, await c.processes.streamProcessLogs('bounded'));
  assert.equal(evs.at(-1).type, 'exit', JSON.stringify(evs));
  assert.equal(evs.at(-1).exitCode, 137);
  const info = await c.processes.getProcess('bounded');
  assert.equal(info.process.status, 'killed');
  // No sleep of it is left; the one without a timeout still runs.
  const ps = await c.commands.execute('ps -eo args', undefined);
  assert.equal(ps.stdout.split('\n').filter((l) => l.trim() === 'sleep 30').length, 1, ps.stdout);
  assert.equal((await c.processes.getProcess('unbounded')).process.status, 'running');
  await c.processes.killProcess('unbounded');
});

test('code contexts keep state across runs and report errors', async () => {
  const c = server.client(uniqueId('cf-code'));
  const ctx = await c.interpreter.createCodeContext({ language: 'python' });
  assert.ok(ctx.id);
  assert.equal(ctx.language, 'python');

  const run = async (code) => {
    const out = { stdout: [], stderr: [], results: [], errors: [] };
    await c.interpreter.runCodeStream(ctx.id, code, 'python', {
      onStdout: (m) => out.stdout.push(m.text),
      onStderr: (m) => out.stderr.push(m.text),
      onResult: (r) => out.results.push(r),
      onError: (e) => out.errors.push(e),
    });
    return out;
  };
  const first = await run('x = 41\nprint("set")');
  assert.deepEqual(first.stdout.join(''), 'set\n');
  assert.equal(first.errors.length, 0);
  const second = await run('x + 1');
  assert.equal(second.results.length, 1, JSON.stringify(second));
  assert.equal(second.results[0].text, '42');
  assert.ok(second.results[0].formats().includes('text'));
  const bad = await run('1 / 0');
  assert.equal(bad.errors.length, 1, JSON.stringify(bad));
  assert.equal(bad.errors[0].name, 'ZeroDivisionError');
  assert.ok(bad.errors[0].traceback.length > 0);
  // The context survives its error.
  assert.equal((await run('x')).results[0].text, '41');

  const js = await c.interpreter.createCodeContext({ language: 'javascript' });
  const jsOut = [];
  await c.interpreter.runCodeStream(js.id, 'const y = 2; console.log(y * 21)', 'javascript',
    { onStdout: (m) => jsOut.push(m.text) });
  assert.equal(jsOut.join(''), '42\n');

  const listed = await c.interpreter.listCodeContexts();
  assert.deepEqual(listed.map((x) => x.id).sort(), [ctx.id, js.id].sort());
  await c.interpreter.deleteCodeContext(js.id);
  assert.deepEqual((await c.interpreter.listCodeContexts()).map((x) => x.id), [ctx.id]);
  const gone = await rejection(c.interpreter.runCodeStream(js.id, '1', 'javascript', {}));
  assert.equal(gone.name, 'ContextNotFoundError', String(gone));
});

test('git checkout clones from a git daemon inside the sandbox', async () => {
  const c = server.client(uniqueId('cf-git'));
  // A repository served on the sandbox's own loopback: no network outside it.
  const setup = await c.commands.execute([
    'set -e',
    'mkdir -p /tmp/src && cd /tmp/src && git init -q -b main',
    'echo "# demo" > README.md && git add README.md',
    'git -c user.email=t@t -c user.name=t commit -qm first',
    'git clone -q --bare /tmp/src /tmp/srv/demo.git',
    'touch /tmp/srv/demo.git/git-daemon-export-ok',
  ].join('\n'), undefined);
  assert.equal(setup.exitCode, 0, setup.stderr);
  await c.processes.startProcess(
    'git daemon --reuseaddr --listen=127.0.0.1 --port=9418 --base-path=/tmp/srv /tmp/srv', undefined,
    { processId: 'gitd' });
  const wait = await c.commands.execute(
    'for i in $(seq 100); do git ls-remote git://127.0.0.1/demo.git >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1',
    undefined);
  assert.equal(wait.exitCode, 0, 'git daemon did not come up');

  const r = await c.git.checkout('git://127.0.0.1/demo.git', undefined, { branch: 'main' });
  assert.equal(r.success, true);
  assert.equal(r.branch, 'main');
  assert.equal(r.targetDir, '/workspace/demo');
  assert.equal((await c.files.readFile('/workspace/demo/README.md', undefined)).content, '# demo\n');

  const missing = await rejection(c.git.checkout('git://127.0.0.1/nope.git', undefined, { targetDir: '/workspace/nope' }));
  assert.ok(missing.name.startsWith('Git'), `${missing.name}: ${missing.message}`);
  const local = await rejection(c.git.checkout('file:///tmp/src', undefined));
  assert.equal(local.name, 'InvalidGitUrlError', String(local));
  await c.processes.killProcess('gitd');
});

test('the dialect needs the bearer token and answers unknown routes in the SDK shape', async () => {
  const id = uniqueId('cf-auth');
  const anonymous = server.client(id, { defaultHeaders: {} });
  const e = await rejection(anonymous.utils.ping());
  assert.equal(e.httpStatus, 401);
  assert.equal(e.code, 'UNAUTHORIZED');
  const wrong = server.client(id, { defaultHeaders: { Authorization: 'Bearer nope' } });
  assert.equal((await rejection(wrong.commands.execute('true', undefined))).httpStatus, 401);
  // Nothing was created by the refused calls.
  const native = await fetch(`http://127.0.0.1:${server.port}/v1/sandboxes/${id}`,
    { headers: { authorization: `Bearer ${server.token}` } });
  assert.equal(native.status, 404);

  const c = server.client(id);
  const watch = await rejection(c.watch.checkChanges({ path: '/workspace' }));
  assert.equal(watch.httpStatus, 404);
  assert.match(watch.message, /not served/);
  const badId = await rejection(server.client('bad id!').utils.ping());
  assert.equal(badId.code, 'VALIDATION_FAILED');
  const noCommand = await rejection(c.commands.execute('', undefined));
  assert.equal(noCommand.name, 'CommandError');
  const lang = await rejection(c.interpreter.createCodeContext({ language: 'cobol' }));
  assert.equal(lang.code, 'VALIDATION_FAILED');

  // Bodies the SDK would not send are refused in its shape, and the server stays up.
  const raw = (path, body) => fetch(`${server.baseUrl(id)}${path}`, {
    method: 'POST', body, headers: { authorization: `Bearer ${server.token}` },
  });
  for (const [path, body] of [['/api/write', '{not json'], ['/api/read', '[]'], ['/api/execute', '{"command": 5}'],
    ['/api/list-files', '{"path": "/workspace", "options": 7}'], ['/api/git/checkout', '{"repoUrl": "x", "depth": -1}']]) {
    const r = await raw(path, body);
    assert.equal(r.status, 400, `${path} ${body}`);
    const e = await r.json();
    assert.equal(e.httpStatus, 400);
    assert.ok(e.code && e.message && e.timestamp, JSON.stringify(e));
  }
  // `background: true` (in the SDK's ExecuteRequest type) starts a process.
  const bg = await (await raw('/api/execute', JSON.stringify({ command: 'echo bg', background: true }))).json();
  assert.equal(bg.success, true);
  assert.ok(bg.processId, JSON.stringify(bg));
  assert.equal(await c.utils.ping(), 'pong');
});
