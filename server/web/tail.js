// Live tail: Server-Sent Events from /api/tail, newest at the top. The browser reconnects by
// itself and sends the last event id, from which the server resumes without a gap. While
// paused, entries are kept and counted, and shown on resume.

import { filterParams } from './api.js';
import { fill } from './dom.js';
import { entryRow, header } from './search.js';

const MAX_ROWS = 500;

let source = null;
let paused = false;
let held = [];
// Entries come in sequence order; after a reconnect the server resumes past the last one.
let last = 0n;

/** Starts (or restarts, with a new filter) the tail of `state`. */
export function startTail(state, navigate) {
  stopTail();
  const table = document.getElementById('tail');
  header(table);
  fill(table.tBodies[0]);
  held = [];
  last = 0n;
  setPaused(false);
  const stateLabel = document.getElementById('tail-state');
  const params = filterParams(state);
  // A live tail starts now, whatever the time range says.
  params.delete('start_time');
  source = new EventSource(`/api/tail?${params}`);
  stateLabel.textContent = 'connecting…';
  source.addEventListener('open', () => { stateLabel.textContent = 'live'; });
  source.addEventListener('error', () => {
    stateLabel.textContent = source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting…';
  });
  source.addEventListener('heartbeat', () => { stateLabel.textContent = 'live'; });
  source.addEventListener('failure', (event) => {
    stateLabel.textContent = `interrupted: ${JSON.parse(event.data).error}; reconnecting…`;
  });
  source.addEventListener('entry', (event) => {
    const entry = JSON.parse(event.data);
    const sequence = BigInt(entry.sequence);
    if (sequence <= last) return;
    last = sequence;
    if (paused) {
      held.push(entry);
      showHeld();
    } else {
      show([entry], navigate);
    }
  });
  document.getElementById('pause').onclick = () => {
    if (paused) {
      setPaused(false);
      show(held, navigate);
      held = [];
      showHeld();
    } else {
      setPaused(true);
    }
  };
}

/** Closes the tail's stream. */
export function stopTail() {
  if (source) source.close();
  source = null;
}

function show(entries, navigate) {
  const body = document.getElementById('tail').tBodies[0];
  for (const entry of entries) {
    const row = entryRow(entry, navigate);
    row.classList.add('new');
    body.prepend(row);
  }
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
}

function setPaused(value) {
  paused = value;
  document.getElementById('pause').textContent = paused ? 'Resume' : 'Pause';
  showHeld();
}

function showHeld() {
  document.getElementById('paused-count').textContent =
    paused || held.length ? `${held.length} received while paused` : '';
}
