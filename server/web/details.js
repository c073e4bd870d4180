// Entry details: every field, the caller and recorder identities, labels, details as formatted
// JSON, the entry and chain hashes, and links to the entries of the same request.

import { getJSON } from './api.js';
import { base64ToHex, el, fill, notice } from './dom.js';
import { STATUS_NAMES } from './search.js';

const ORDER = ['sequence', 'id', 'requestId', 'time', 'receivedTime', 'source', 'method', 'event',
  'category', 'resource', 'level', 'outcome', 'statusCode', 'statusMessage', 'caller', 'recorder',
  'latency', 'entryHash', 'chainHash'];

/** Shows the entry of `state.get('sequence')`. */
export async function showDetails(state, navigate) {
  const sequence = state.get('sequence') || '';
  const list = document.getElementById('details');
  document.getElementById('details-title').textContent = `Entry #${sequence}`;
  let entry;
  try {
    entry = await getJSON(`/api/entries/${encodeURIComponent(sequence)}`);
  } catch (error) {
    fill(list);
    notice(error.message);
    return;
  }
  notice('');
  if (!('statusCode' in entry)) entry.statusCode = 0;
  const rows = [];
  const keys = [...ORDER, ...Object.keys(entry).filter((k) => !ORDER.includes(k)
    && k !== 'details' && k !== 'labels')];
  for (const key of keys) {
    if (!(key in entry)) continue;
    for (const [name, value] of flatten(key, entry[key])) rows.push(...field(name, value));
  }
  fill(list, rows);

  const labels = Object.entries(entry.labels || {});
  fill(document.getElementById('details-labels').tBodies[0],
    labels.length
      ? labels.map(([k, v]) => el('tr', {}, el('th', { scope: 'row' }, k), el('td', {}, v)))
      : el('tr', {}, el('td', {}, 'no labels')));
  document.getElementById('details-json').textContent =
    entry.details ? JSON.stringify(entry.details, null, 2) : 'no details';

  const request = document.getElementById('details-request');
  if (entry.requestId) {
    const to = new URLSearchParams({ view: 'search', request_id: entry.requestId, order: 'asc' });
    request.hidden = false;
    request.href = `?${to}`;
    request.onclick = (event) => { event.preventDefault(); navigate(to); };
  } else {
    request.hidden = true;
  }
  const verify = document.getElementById('details-verify');
  const proof = new URLSearchParams({ view: 'integrity', sequence: entry.sequence });
  verify.href = `?${proof}`;
  verify.onclick = (event) => { event.preventDefault(); navigate(proof); };
}

function field(name, value) {
  let shown = value;
  if (name === 'entryHash' || name === 'chainHash') shown = base64ToHex(value);
  if (name === 'statusCode') shown = `${value} ${STATUS_NAMES[value] ?? ''}`;
  return [el('dt', {}, name), el('dd', { 'data-field': name }, String(shown))];
}

function flatten(prefix, value) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([k, v]) => flatten(`${prefix}.${k}`, v));
  }
  return [[prefix, Array.isArray(value) ? JSON.stringify(value) : value]];
}
