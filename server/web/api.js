// The console's JSON API. Requests go to this origin only; credentials (a client
// certificate, or HTTP Basic with a console token) are the browser's.

/** Fetches JSON from `path` with `params`; throws an Error carrying the server's reason. */
export async function getJSON(path, params) {
  const query = params && params.toString();
  const response = await fetch(query ? `${path}?${query}` : path, {
    headers: { Accept: 'application/json' },
    credentials: 'same-origin',
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.violations = body.violations || [];
    throw error;
  }
  return body;
}

/** The filter parameters of the form's state (`state` is a URLSearchParams). */
export function filterParams(state) {
  const params = new URLSearchParams();
  const single = ['request_id', 'source', 'method', 'principal', 'spiffe_id', 'event', 'category',
    'resource', 'min_level', 'start_time', 'end_time'];
  for (const name of single) {
    const value = state.get(name);
    if (value) params.set(name, value.trim());
  }
  for (const outcome of state.getAll('outcome')) params.append('outcome', outcome);
  for (const code of listOf(state.get('status_code'))) params.append('status_code', code);
  for (const label of listOf(state.get('label'))) params.append('label', label);
  const range = state.get('range');
  if (range && !state.get('start_time')) {
    // Later pages keep the start the first page had (`range_from`): page tokens are bound to
    // their filter.
    const from = state.get('range_from') || new Date(Date.now() - rangeMillis(range)).toISOString();
    params.set('start_time', from);
  }
  return params;
}

function listOf(text) {
  return (text || '').split(',').map((s) => s.trim()).filter(Boolean);
}

/** `15m`, `1h`, `7d` in milliseconds. */
export function rangeMillis(range) {
  const match = /^(\d+)([mhd])$/.exec(range);
  if (!match) return 0;
  const unit = { m: 60e3, h: 3600e3, d: 86400e3 }[match[2]];
  return Number(match[1]) * unit;
}
