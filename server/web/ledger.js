// The log's hashes recomputed in the browser from entries as proto3 JSON: the canonical
// encoding of `ledger/src/encoding.rs` (version 1), entry_hash = SHA-256("audit.v1/entry\0" ||
// entry), chain(s) = SHA-256("audit.v1/chain\0" || chain(s-1) || entry_hash(s)), and the
// RFC 6962 Merkle root of the entry hashes. A change to the encoding there must be made here
// too; the browser test checks both agree on every entry it records.

const ENTRY_TAG = new TextEncoder().encode('audit.v1/entry\0');
const CHAIN_TAG = new TextEncoder().encode('audit.v1/chain\0');
const LEVELS = ['LEVEL_UNSPECIFIED', 'LEVEL_DEBUG', 'LEVEL_INFO', 'LEVEL_WARNING', 'LEVEL_ERROR',
  'LEVEL_CRITICAL'];
const OUTCOMES = ['OUTCOME_UNSPECIFIED', 'OUTCOME_SUCCESS', 'OUTCOME_DENIED', 'OUTCOME_ERROR'];
const utf8 = new TextEncoder();

class Writer {
  constructor() { this.parts = []; this.length = 0; }
  bytes(bytes) { this.parts.push(bytes); this.length += bytes.length; }
  fixed(size, set) {
    const bytes = new Uint8Array(size);
    set(new DataView(bytes.buffer));
    this.bytes(bytes);
  }
  u8(v) { this.bytes(Uint8Array.of(v)); }
  u32(v) { this.fixed(4, (d) => d.setUint32(0, v)); }
  i32(v) { this.fixed(4, (d) => d.setInt32(0, v)); }
  u64(v) { this.fixed(8, (d) => d.setBigUint64(0, BigInt(v))); }
  i64(v) { this.fixed(8, (d) => d.setBigInt64(0, BigInt(v))); }
  f64(v) { this.fixed(8, (d) => d.setFloat64(0, v)); }
  str(text) { const b = utf8.encode(text ?? ''); this.u32(b.length); this.bytes(b); }
  done() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const part of this.parts) { out.set(part, at); at += part.length; }
    return out;
  }
}

/** `[seconds, nanos]` of an RFC 3339 time as proto3 JSON writes it (UTC). */
function timestamp(text) {
  const match = /^(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$/.exec(text);
  if (!match) throw new Error(`not a proto3 JSON timestamp: ${text}`);
  const [, y, mo, d, h, mi, s, fraction = ''] = match;
  const date = new Date(0);
  date.setUTCFullYear(Number(y), Number(mo) - 1, Number(d));
  date.setUTCHours(Number(h), Number(mi), Number(s), 0);
  return [Math.floor(date.getTime() / 1000), Number(fraction.padEnd(9, '0'))];
}

/** `[seconds, nanos]` of a proto3 JSON duration such as `1.5s` or `-0.25s`. */
function duration(text) {
  const match = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(text);
  if (!match) throw new Error(`not a proto3 JSON duration: ${text}`);
  const sign = match[1] ? -1 : 1;
  return [sign * Number(match[2]), sign * Number((match[3] || '').padEnd(9, '0'))];
}

function enumNumber(value, names) {
  if (value === undefined) return 0;
  if (typeof value === 'number') return value;
  const index = names.indexOf(value);
  if (index < 0) throw new Error(`unknown enum value ${value}`);
  return index;
}

/** Keys in ascending order of their UTF-8 bytes, as the server's maps iterate. */
function sortedKeys(object) {
  const compare = (a, b) => {
    const x = utf8.encode(a);
    const y = utf8.encode(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  };
  return Object.keys(object).sort(compare);
}

function peer(w, value) {
  if (value?.unix) {
    const u = value.unix;
    w.u8(1); w.u32(u.uid ?? 0); w.u32(u.gid ?? 0); w.u32(u.pid ?? 0); w.str(u.binaryPath);
  } else if (value?.network) {
    const n = value.network;
    w.u8(2); w.str(n.address); w.str(n.spiffeId); w.str(n.certificateSubject);
  } else {
    w.u8(0);
  }
}

function structure(w, object) {
  const keys = sortedKeys(object);
  w.u32(keys.length);
  for (const key of keys) { w.str(key); value(w, object[key]); }
}

function value(w, v) {
  if (v === null) { w.u8(1); w.i32(0); }
  else if (typeof v === 'number') { w.u8(2); w.f64(v); }
  else if (typeof v === 'string') { w.u8(3); w.str(v); }
  else if (typeof v === 'boolean') { w.u8(4); w.u8(v ? 1 : 0); }
  else if (Array.isArray(v)) { w.u8(6); w.u32(v.length); for (const item of v) value(w, item); }
  else { w.u8(5); structure(w, v); }
}

function optional(w, present, write) {
  if (present === undefined) { w.u8(0); return; }
  w.u8(1);
  write();
}

/** The canonical encoding of an entry given as proto3 JSON. */
export function encodeEntry(entry) {
  const w = new Writer();
  w.u8(1);
  w.u64(entry.sequence);
  w.str(entry.id);
  w.str(entry.requestId);
  for (const time of [entry.time, entry.receivedTime]) {
    optional(w, time, () => { const [s, n] = timestamp(time); w.i64(s); w.i32(n); });
  }
  for (const field of ['source', 'method', 'event', 'category', 'resource']) w.str(entry[field]);
  w.i32(enumNumber(entry.level, LEVELS));
  w.i32(enumNumber(entry.outcome, OUTCOMES));
  w.i32(entry.statusCode ?? 0);
  w.str(entry.statusMessage);
  optional(w, entry.caller, () => {
    const c = entry.caller;
    peer(w, c);
    w.str(c.principal); w.str(c.role); w.str(c.sessionId); w.str(c.userAgent);
  });
  optional(w, entry.recorder, () => peer(w, entry.recorder));
  optional(w, entry.latency, () => { const [s, n] = duration(entry.latency); w.i64(s); w.i32(n); });
  optional(w, entry.details, () => structure(w, entry.details));
  const labels = entry.labels || {};
  const keys = sortedKeys(labels);
  w.u32(keys.length);
  for (const key of keys) { w.str(key); w.str(labels[key]); }
  return w.done();
}

async function sha256(...parts) {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(length);
  let at = 0;
  for (const part of parts) { joined.set(part, at); at += part.length; }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', joined));
}

/** The entry's hash, recomputed from its content. */
export function entryHash(entry) {
  return sha256(ENTRY_TAG, encodeEntry(entry));
}

/** The chain value after an entry. */
export function chainHash(previous, hash) {
  return sha256(CHAIN_TAG, previous, hash);
}

/** The RFC 6962 Merkle root of leaves pushed one at a time (a frontier of full subtrees). */
export class MerkleFrontier {
  constructor() { this.stack = []; this.size = 0; }

  async push(entryHashBytes) {
    let node = { height: 0, hash: await sha256(Uint8Array.of(0), entryHashBytes) };
    while (this.stack.length && this.stack[this.stack.length - 1].height === node.height) {
      const left = this.stack.pop();
      node = { height: node.height + 1, hash: await sha256(Uint8Array.of(1), left.hash, node.hash) };
    }
    this.stack.push(node);
    this.size += 1;
  }

  async root() {
    if (this.stack.length === 0) return sha256();
    let hash = this.stack[this.stack.length - 1].hash;
    for (let i = this.stack.length - 2; i >= 0; i--) {
      hash = await sha256(Uint8Array.of(1), this.stack[i].hash, hash);
    }
    return hash;
  }
}
