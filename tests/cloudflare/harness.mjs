// Starts the real sandpit release binary for a test file (its own data dir, a free
// loopback port, a bearer token) and makes SDK clients pointed at its cloudflare dialect.
import { spawn } from 'node:child_process';
import { mkdtempSync, chmodSync, rmSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { SandboxClient } from '@cloudflare/sandbox';

const BIN = process.env.SANDPIT_BIN
  ?? resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../../target/release/sandpit');

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export class Server {
  static async start() {
    const s = new Server();
    // Another process may take the port between freePort() and the bind: try another.
    for (let attempt = 0; ; attempt++) {
      s.port = await freePort();
      if (await s.launch()) return s;
      if (attempt >= 3 || !s.log().includes('Address already in use')) {
        throw new Error(`sandpit did not start:\n${s.log().slice(-4000)}`);
      }
    }
  }

  constructor() {
    this.dataDir = mkdtempSync(join(tmpdir(), 'sandpit-cf-'));
    // Sandbox uids must be able to traverse the data dir.
    chmodSync(this.dataDir, 0o755);
    this.token = randomBytes(16).toString('hex');
    this.logPath = join(this.dataDir, 'server.log');
  }

  log() {
    try { return readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }

  async launch() {
    const out = openSync(this.logPath, 'a');
    const env = { ...process.env, SANDPIT_AUTH_TOKEN: this.token, RUST_BACKTRACE: '1' };
    this.child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir],
      { cwd: this.dataDir, env, stdio: ['ignore', out, out] });
    let exited = false;
    this.child.once('exit', () => { exited = true; });
    for (let i = 0; i < 300 && !exited; i++) {
      try {
        // An answer to our token (not only /health) proves the port is this server's.
        const r = await fetch(`http://127.0.0.1:${this.port}/v1/sandboxes`,
          { headers: { authorization: `Bearer ${this.token}` } });
        if (r.status === 200) return true;
      } catch { /* not listening yet */ }
      await sleep(100);
    }
    this.child.kill('SIGKILL');
    return false;
  }

  /** The dialect's base URL for sandbox `id`. */
  baseUrl(id) {
    return `http://127.0.0.1:${this.port}/compat/cloudflare/${id}`;
  }

  /** The SDK's own client for sandbox `id`, with the token as a default header. */
  client(id, options = {}) {
    return new SandboxClient({
      baseUrl: this.baseUrl(id),
      defaultHeaders: { Authorization: `Bearer ${this.token}` },
      retryTimeoutMs: 1000,
      ...options,
    });
  }

  /** Deletes every sandbox (they outlive the server), then stops it and removes its data. */
  async stop() {
    if (this.child && this.child.exitCode === null) {
      const headers = { authorization: `Bearer ${this.token}` };
      try {
        const list = await (await fetch(`http://127.0.0.1:${this.port}/v1/sandboxes`, { headers })).json();
        await Promise.all((list.sandboxes ?? []).map(async (sb) => {
          const r = await fetch(`http://127.0.0.1:${this.port}/v1/sandboxes/${sb.id}`, { method: 'DELETE', headers });
          if (r.status !== 204 && r.status !== 404) console.error(`cleanup: DELETE ${sb.id}: ${r.status}`);
        }));
      } catch (e) {
        console.error(`cleanup: cannot delete the sandboxes: ${e}`);
      }
      const gone = new Promise((ok) => this.child.once('exit', ok));
      this.child.kill('SIGTERM');
      const force = setTimeout(() => this.child.kill('SIGKILL'), 10000);
      await gone;
      clearTimeout(force);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A sandbox id no other test uses. */
export function uniqueId(prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** Every event of an SSE stream the SDK returned, parsed by the SDK's own parser. */
export async function collect(parse, stream) {
  const events = [];
  for await (const ev of parse(stream)) events.push(ev);
  return events;
}

/** Asserts the sandbox runs in its own pid namespace as an unprivileged host uid. */
export async function assertContained(client, assert) {
  const map = await client.commands.execute('cat /proc/self/uid_map', undefined);
  const [inside, host] = map.stdout.trim().split(/\s+/).map(Number);
  assert.equal(inside, 0, map.stdout);
  assert.notEqual(host, 0, `NOT CONTAINED: root in the sandbox is host root: ${map.stdout}`);
  const ns = await client.commands.execute('readlink /proc/self/ns/pid', undefined);
  const { readlinkSync } = await import('node:fs');
  assert.notEqual(ns.stdout.trim(), readlinkSync('/proc/self/ns/pid'), 'NOT CONTAINED: host pid namespace');
}
