// Integrity: the newest signed checkpoint, and an entry's inclusion proof checked in this
// browser (Web Crypto: SHA-256 for RFC 6962 Merkle hashes, Ed25519 for the checkpoint's
// signature), so that the page does not take the server's word for it.
//
// A checkpoint is a C2SP signed note: its text (origin, size, base64 root, `chain …`,
// `time …`, optionally `max-unsigned …`), a blank line, then `— <key name> <base64(key id ||
// signature)>`. Keys are `<name>+<hex key id>+<base64(0x01 || public key)>`; the key id is the
// first 4 bytes of SHA-256(name || "\n" || 0x01 || public key).

import { getJSON } from './api.js';
import { base64ToBytes, base64ToHex, el, fill, hexToBytes } from './dom.js';
import { MerkleFrontier, chainHash, entryHash } from './ledger.js';

const SIGNATURE_PREFIX = '\u2014 ';
const PINNED = 'audit-console.pinned-key';

async function sha256(...parts) {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(length);
  let at = 0;
  for (const part of parts) { joined.set(part, at); at += part.length; }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', joined));
}

const leafHash = (entryHash) => sha256(Uint8Array.of(0), entryHash);
const nodeHash = (left, right) => sha256(Uint8Array.of(1), left, right);

function equal(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** RFC 9162 §2.1.3.2: whether `proof` leads from leaf `index` of `size` leaves to `root`. */
export async function verifyInclusion(index, size, leaf, proof, root) {
  if (index >= size) return false;
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equal(r, root);
}

/** The parts of a signed note: its text, size, root and signature lines. */
export function parseNote(note) {
  const at = note.indexOf('\n\n');
  if (at < 0) throw new Error('the note has no blank line before its signatures');
  const body = note.slice(0, at + 1);
  const lines = body.split('\n');
  return {
    body,
    origin: lines[0],
    size: BigInt(lines[1]),
    root: base64ToBytes(lines[2]),
    chain: base64ToBytes((lines[3] || '').replace(/^chain /, '')),
    time: Number((lines[4] || '').replace(/^time /, '')),
    signatures: note.slice(at + 2).split('\n').filter(Boolean),
  };
}

/** Checks the note's Ed25519 signature by `keyText`; `null` when Web Crypto lacks Ed25519. */
export async function verifySignature(note, keyText) {
  // `<name>+<hex id>+<base64 key>`: the base64 may itself contain `+`.
  const textKey = keyText.trim();
  const first = textKey.indexOf('+');
  const second = textKey.indexOf('+', first + 1);
  if (first < 0 || second < 0) throw new Error('the key is not <name>+<id>+<key>');
  const name = textKey.slice(0, first);
  const idHex = textKey.slice(first + 1, second);
  const keyBase64 = textKey.slice(second + 1);
  const raw = base64ToBytes(keyBase64);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error('the key is not an Ed25519 note key');
  const key = raw.slice(1);
  const id = (await sha256(new TextEncoder().encode(`${name}\n`), Uint8Array.of(1), key))
    .slice(0, 4);
  if (!equal(id, hexToBytes(idHex))) throw new Error('the key id does not match the key');
  let cryptoKey;
  try {
    cryptoKey = await crypto.subtle.importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
  } catch {
    return null;
  }
  for (const line of note.signatures) {
    if (!line.startsWith(SIGNATURE_PREFIX)) continue;
    const [signer, blob] = line.slice(SIGNATURE_PREFIX.length).split(' ');
    if (signer !== name) continue;
    const bytes = base64ToBytes(blob);
    if (bytes.length !== 68 || !equal(bytes.slice(0, 4), id)) continue;
    const body = new TextEncoder().encode(note.body);
    if (await crypto.subtle.verify({ name: 'Ed25519' }, cryptoKey, bytes.slice(4), body)) {
      return true;
    }
  }
  return false;
}

/** Shows the newest checkpoint, and verifies the proof of `state.get('sequence')` if given. */
export async function showIntegrity(state) {
  const pinned = document.getElementById('pinned-key');
  pinned.value = localStorage.getItem(PINNED) || '';
  pinned.onchange = () => localStorage.setItem(PINNED, pinned.value.trim());
  const list = document.getElementById('checkpoint');
  try {
    const { checkpoint, publicKey, head } = await getJSON('/api/checkpoint');
    if (!checkpoint) {
      fill(list, el('dt', {}, 'checkpoint'), el('dd', {}, 'none signed yet'));
    } else {
      const note = parseNote(checkpoint.note);
      const signature = await verifySignature(note, publicKey).catch((e) => e.message);
      fill(list,
        el('dt', {}, 'log'), el('dd', {}, checkpoint.origin),
        el('dt', {}, 'size'), el('dd', {}, `${checkpoint.size} entries (log head ${head})`),
        el('dt', {}, 'root'), el('dd', {}, checkpoint.rootHash),
        el('dt', {}, 'signed'), el('dd', {}, checkpoint.time || ''),
        el('dt', {}, 'key'), el('dd', {}, publicKey),
        el('dt', {}, 'signature'), el('dd', { id: 'checkpoint-signature' }, signatureText(signature)));
    }
  } catch (error) {
    fill(list, el('dt', {}, 'error'), el('dd', {}, error.message));
  }
  document.getElementById('verify-log').onclick = () => verifyLog();
  const input = document.getElementById('proof-sequence');
  document.getElementById('proof-form').onsubmit = (event) => {
    event.preventDefault();
    verifyEntry(input.value.trim());
  };
  if (state.get('sequence')) {
    input.value = state.get('sequence');
    await verifyEntry(input.value);
  }
}

function signatureText(result) {
  if (result === true) return 'valid Ed25519 signature (checked in this browser)';
  if (result === null) return 'not checked: this browser has no Ed25519 in Web Crypto';
  if (result === false) return 'INVALID signature';
  return `not checked: ${result}`;
}

/** Verifies the inclusion of entry `sequence` in the newest checkpoint, step by step. */
export async function verifyEntry(sequence) {
  const steps = document.getElementById('proof-steps');
  const result = document.getElementById('proof-result');
  fill(steps);
  result.textContent = 'Verifying…';
  result.className = '';
  const step = (ok, what) => {
    steps.append(el('li', { class: ok ? 'pass' : 'fail' }, `${ok ? '✓' : '✗'} ${what}`));
    return ok;
  };
  try {
    const [proof, entry] = await Promise.all([
      getJSON(`/api/proof/${encodeURIComponent(sequence)}`),
      getJSON(`/api/entries/${encodeURIComponent(sequence)}`),
    ]);
    const note = parseNote(proof.checkpoint.note);
    const pinned = (localStorage.getItem(PINNED) || '').trim();
    let ok = true;
    if (pinned) ok = step(pinned === proof.publicKey, 'the server signs with the key you pinned') && ok;
    const signature = await verifySignature(note, proof.publicKey);
    if (signature === null) {
      steps.append(el('li', {}, '– signature not checked: no Ed25519 in this browser\'s Web Crypto'));
    } else {
      ok = step(signature, `the checkpoint of ${note.size} entries is signed by ${proof.publicKey.slice(0, proof.publicKey.indexOf('+'))}`) && ok;
    }
    ok = step(note.size === BigInt(proof.treeSize), 'the proof is for the checkpoint\'s tree size') && ok;
    const entryHash = hexToBytes(proof.entryHash);
    ok = step(base64ToHex(entry.entryHash) === proof.entryHash,
      `the entry's hash is ${proof.entryHash.slice(0, 16)}…`) && ok;
    const included = await verifyInclusion(BigInt(sequence) - 1n, note.size,
      await leafHash(entryHash), proof.hashes.map(hexToBytes), note.root);
    ok = step(included, `the audit path of ${proof.hashes.length} hashes leads to the signed root`) && ok;
    result.textContent = ok
      ? `Entry #${sequence} is included in the signed checkpoint of ${note.size} entries.`
      : `Entry #${sequence} FAILED verification.`;
    result.className = ok ? 'pass' : 'fail';
    result.dataset.verdict = ok ? 'verified' : 'failed';
  } catch (error) {
    result.textContent = `Not verified: ${error.message}`;
    result.className = 'fail';
    result.dataset.verdict = 'error';
  }
}

const toHex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');

/** Verifies the whole log against the newest checkpoint, showing progress; the first problem
 * found is reported with its entry. */
export async function verifyLog() {
  const result = document.getElementById('verify-result');
  const progress = document.getElementById('verify-progress');
  const count = document.getElementById('verify-count');
  const finish = (ok, message) => {
    result.textContent = message;
    result.className = ok ? 'pass' : 'fail';
    result.dataset.verdict = ok ? 'verified' : 'failed';
  };
  delete result.dataset.verdict;
  result.textContent = 'Verifying…';
  result.className = '';
  try {
    const { checkpoint, publicKey, head } = await getJSON('/api/checkpoint');
    if (!checkpoint) return finish(false, 'No checkpoint is signed yet: nothing to verify against.');
    const note = parseNote(checkpoint.note);
    const signature = await verifySignature(note, publicKey);
    if (signature === false) return finish(false, 'The newest checkpoint\'s signature is INVALID.');
    const total = Number(head) || 1;
    let previous = new Uint8Array(32);
    const frontier = new MerkleFrontier();
    let checked = 0n;
    let token = '';
    do {
      const params = new URLSearchParams({ order: 'asc', page_size: '1000' });
      if (token) params.set('page_token', token);
      const page = await getJSON('/api/entries', params);
      for (const entry of page.entries) {
        const sequence = BigInt(entry.sequence);
        if (sequence !== checked + 1n) {
          return finish(false, `Entry #${checked + 1n} is missing from the log.`);
        }
        const hash = await entryHash(entry);
        if (toHex(hash) !== base64ToHex(entry.entryHash)) {
          return finish(false, `Entry #${sequence} FAILED: its content does not match its hash.`);
        }
        previous = await chainHash(previous, hash);
        if (toHex(previous) !== base64ToHex(entry.chainHash)) {
          return finish(false, `Entry #${sequence} FAILED: the hash chain breaks here.`);
        }
        if (sequence <= note.size) await frontier.push(hash);
        if (sequence === note.size) {
          if (toHex(await frontier.root()) !== toHex(note.root)) {
            return finish(false, `The entries do not form the signed root of ${note.size} entries.`);
          }
          if (toHex(previous) !== toHex(note.chain)) {
            return finish(false, `The chain head differs from the signed one at ${note.size}.`);
          }
        }
        checked = sequence;
      }
      progress.value = Math.min(1, Number(checked) / total);
      count.textContent = `${checked} of ${head} entries`;
      token = page.nextPageToken;
    } while (token);
    if (checked < note.size) {
      return finish(false, `The log has ${checked} entries, fewer than the ${note.size} its checkpoint signs.`);
    }
    const signed = signature === null ? ' (signature not checked: no Ed25519 in this browser)' : '';
    return finish(true, `The log is intact: ${checked} entries, hashes and chain recomputed, `
      + `the first ${note.size} matching the signed checkpoint${signed}.`);
  } catch (error) {
    return finish(false, `Not verified: ${error.message}`);
  }
}
