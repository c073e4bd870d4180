// Search: the filter as a page of entries, following page tokens, with downloads.

import { getJSON, filterParams } from './api.js';
import { el, fill, notice } from './dom.js';

export const STATUS_NAMES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED',
  'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION',
  'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED'];

const COLUMNS = ['Time', '#', 'Outcome', 'Status', 'Caller', 'Method', 'Resource'];

/** The header row of an entries table. */
export function header(table) {
  fill(table.tHead, el('tr', {}, COLUMNS.map((name) => el('th', { scope: 'col' }, name))));
}

/** Who made the audited call, as `audit tail` shows it. */
export function callerText(caller) {
  if (!caller) return '';
  if (caller.principal) return caller.principal;
  if (caller.network) return caller.network.spiffeId || caller.network.address || '';
  if (caller.unix) return `uid:${caller.unix.uid ?? 0}`;
  return '';
}

/** The outcome's short name (`DENIED`). */
export function outcomeName(outcome) {
  return (outcome || 'OUTCOME_UNSPECIFIED').replace(/^OUTCOME_/, '');
}

/** One table row of an entry, the columns of `audit tail`; its sequence links to details. */
export function entryRow(entry, navigate) {
  const outcome = outcomeName(entry.outcome);
  const code = entry.statusCode ?? 0;
  const details = `?view=details&sequence=${encodeURIComponent(entry.sequence)}`;
  const link = el('a', {
    href: details,
    onclick: (event) => { event.preventDefault(); navigate(new URLSearchParams(details)); },
  }, `#${entry.sequence}`);
  return el('tr', { 'data-sequence': entry.sequence },
    el('td', {}, (entry.time || '').replace(/(\.\d{3})\d*Z$/, '$1Z')),
    el('td', {}, link),
    el('td', { class: `outcome-${outcome}` }, outcome),
    el('td', {}, STATUS_NAMES[code] ?? String(code)),
    el('td', {}, callerText(entry.caller)),
    el('td', {}, entry.method || '-'),
    el('td', {}, entry.resource || '-'));
}

/** Runs the search of `state` (the URL's parameters) and shows its page. */
export async function showSearch(state, navigate) {
  const table = document.getElementById('results');
  header(table);
  const params = filterParams(state);
  params.set('order', state.get('order') || 'desc');
  params.set('page_size', '50');
  if (state.get('page_token')) params.set('page_token', state.get('page_token'));
  const summary = document.getElementById('search-summary');
  summary.textContent = 'Searching…';
  const download = new URLSearchParams(params);
  // Downloads hold every result from the first page on, read 1000 at a time.
  download.delete('page_token');
  download.set('page_size', '1000');
  for (const format of ['jsonl', 'csv']) {
    download.set('format', format);
    document.getElementById(`download-${format}`).href = `/api/entries?${download}`;
  }
  let page;
  try {
    page = await getJSON('/api/entries', params);
  } catch (error) {
    summary.textContent = '';
    fill(table.tBodies[0]);
    notice(describe(error));
    return;
  }
  notice('');
  fill(table.tBodies[0], page.entries.map((entry) => entryRow(entry, navigate)));
  summary.textContent = page.entries.length === 0
    ? 'No entry matches.'
    : `${page.entries.length} entries${page.nextPageToken ? ', more on the next page' : ''}`;
  const next = document.getElementById('next-page');
  next.disabled = !page.nextPageToken;
  next.onclick = () => {
    const to = new URLSearchParams(state);
    to.set('page_token', page.nextPageToken);
    if (state.get('range') && !state.get('start_time')) to.set('range_from', params.get('start_time'));
    navigate(to);
  };
  const first = document.getElementById('first-page');
  first.disabled = !state.get('page_token');
  first.onclick = () => {
    const to = new URLSearchParams(state);
    to.delete('page_token');
    to.delete('range_from');
    navigate(to);
  };
}

/** An API error as one line, naming the fields it refused. */
export function describe(error) {
  const fields = (error.violations || []).map((v) => `${v.field}: ${v.description}`);
  return fields.length ? fields.join('; ') : error.message;
}
