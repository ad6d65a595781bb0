// Module hooks (node:module `register`): every `cloudflare:*` import resolves to a small
// stub with the names the SDK and @cloudflare/containers import (`RpcTarget`,
// `DurableObject`, `WorkerEntrypoint`, `env`, `tracing`). The SandboxClient talks plain
// HTTP and never uses them; they only have to exist for the modules to link.
// @cloudflare/containers also imports its own files without an extension (`./lib/container`),
// which Workers' bundler resolves and Node.js does not: such an import is retried with `.js`.
const PREFIX = 'sandpit-stub:';

const STUB = `
export class RpcTarget {}
export class DurableObject {
  constructor(ctx, env) { this.ctx = ctx; this.env = env; }
}
export class WorkerEntrypoint {
  constructor(ctx, env) { this.ctx = ctx; this.env = env; }
}
export const env = {};
const span = { setAttribute() {}, setAttributes() {}, addEvent() {}, end() {} };
export const tracing = {
  enterSpan(_name, fn, ...args) { return fn(span, ...args); },
};
export default { RpcTarget, DurableObject, WorkerEntrypoint, env, tracing };
`;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('cloudflare:')) {
    return { url: PREFIX + specifier.slice('cloudflare:'.length), shortCircuit: true };
  }
  try {
    return await next(specifier, context);
  } catch (e) {
    const relative = specifier.startsWith('./') || specifier.startsWith('../');
    if (e?.code !== 'ERR_MODULE_NOT_FOUND' || !relative || /\.[cm]?js$/.test(specifier)) throw e;
    return next(`${specifier}.js`, context);
  }
}

export async function load(url, context, next) {
  if (url.startsWith(PREFIX)) {
    return { format: 'module', source: STUB, shortCircuit: true };
  }
  return next(url, context);
}
