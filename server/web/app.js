// The console's page: one URL holds the view and the query (so a view can be shared), the
// filter form edits it, and each view draws itself from it.

import { showCharts } from './charts.js';
import { showDetails } from './details.js';
import { showIntegrity } from './integrity.js';
import { showSearch } from './search.js';
import { startTail, stopTail } from './tail.js';

const VIEWS = ['search', 'tail', 'charts', 'integrity', 'details'];
const FORM_FIELDS = ['range', 'start_time', 'end_time', 'source', 'method', 'principal',
  'spiffe_id', 'event', 'category', 'resource', 'status_code', 'label', 'request_id',
  'min_level', 'outcome', 'order'];

const form = document.getElementById('filters');

function currentState() {
  return new URLSearchParams(window.location.search);
}

/** Goes to `state` (URLSearchParams), adding it to the history. */
function navigate(state) {
  history.pushState(null, '', `?${state}`);
  render();
}

function fillForm(state) {
  for (const element of form.elements) {
    if (!element.name) continue;
    if (element.type === 'checkbox') element.checked = state.getAll(element.name).includes(element.value);
    else element.value = state.get(element.name) ?? (element.name === 'order' ? 'desc' : '');
  }
}

function formState(view) {
  const state = new URLSearchParams({ view });
  const data = new FormData(form);
  for (const name of FORM_FIELDS) {
    for (const value of data.getAll(name)) if (value) state.append(name, value);
  }
  return state;
}

function render() {
  const state = currentState();
  const view = VIEWS.includes(state.get('view')) ? state.get('view') : 'search';
  for (const name of VIEWS) document.getElementById(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  form.hidden = view === 'integrity' || view === 'details';
  fillForm(state);
  if (view !== 'tail') stopTail();
  if (view === 'search') showSearch(state, navigate);
  if (view === 'tail') startTail(state, navigate);
  if (view === 'charts') showCharts(state);
  if (view === 'integrity') showIntegrity(state);
  if (view === 'details') showDetails(state, navigate);
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const view = currentState().get('view');
  navigate(formState(['tail', 'charts'].includes(view) ? view : 'search'));
});
document.getElementById('reset').addEventListener('click', () => {
  navigate(new URLSearchParams({ view: currentState().get('view') || 'search' }));
});
document.getElementById('bucket').addEventListener('change', (event) => {
  const state = formState('charts');
  state.set('bucket', event.target.value);
  navigate(state);
});
for (const link of document.querySelectorAll('nav a')) {
  link.addEventListener('click', (event) => {
    event.preventDefault();
    const view = link.dataset.view;
    navigate(view === 'integrity' ? new URLSearchParams({ view }) : formState(view));
  });
}
window.addEventListener('popstate', render);
render();
