// UUIDv7 (RFC 9562, section 5.7): 48 bits of Unix time in milliseconds, then random bits, so
// ids sort by creation time. Node 20's crypto.randomUUID only makes version 4.

import { randomFillSync } from "node:crypto";

let lastMs = 0;
let lastCounter = 0;

/**
 * A new UUIDv7, lowercase with hyphens. Within one process ids are strictly increasing: ids made
 * in the same millisecond carry a 12-bit counter in `rand_a` (RFC 9562, section 6.2, method 1),
 * seeded at random each millisecond; when it overflows, the clock is advanced by a millisecond.
 */
export function uuidv7(now: number = Date.now()): string {
  const bytes = new Uint8Array(16);
  randomFillSync(bytes);
  let ms = Math.max(now, lastMs);
  let counter: number;
  if (ms === lastMs) {
    counter = lastCounter + 1;
    if (counter > 0xfff) {
      ms += 1;
      counter = bytes[6]! & 0x07; // leave room to count
    }
  } else {
    counter = ((bytes[6]! << 8) | bytes[7]!) & 0x7ff;
  }
  lastMs = ms;
  lastCounter = counter;
  // unix_ts_ms: 48 bits, big-endian.
  let t = ms;
  for (let i = 5; i >= 0; i--) {
    bytes[i] = t % 256;
    t = Math.floor(t / 256);
  }
  bytes[6] = 0x70 | (counter >> 8); // version 7, then the top 4 bits of rand_a
  bytes[7] = counter & 0xff;
  bytes[8] = 0x80 | (bytes[8]! & 0x3f); // variant 10
  const hex = Buffer.from(bytes).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
