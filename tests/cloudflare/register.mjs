// Loaded with `node --import ./register.mjs`: installs hooks.mjs, which stubs the
// `cloudflare:*` modules that only exist inside Cloudflare Workers, so the unmodified
// @cloudflare/sandbox package loads in plain Node.js. Test-only; not part of sandpit.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
