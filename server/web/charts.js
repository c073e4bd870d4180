// Charts from /api/stats (counted by the server from its indexes): entries per bucket by
// outcome, denied calls over time, top principals and methods. Plain SVG; every label is text.

import { getJSON, filterParams } from './api.js';
import { fill, notice, svg } from './dom.js';
import { describe } from './search.js';

const COLORS = { success: '#1a7f37', denied: '#cf222e', error: '#bc4c00' };
const WIDTH = 800;
const HEIGHT = 200;
const LEFT = 40;

/** Draws the charts of `state`'s filter. */
export async function showCharts(state) {
  const bucket = document.getElementById('bucket');
  bucket.value = state.get('bucket') || 'minute';
  const params = filterParams(state);
  params.set('bucket', bucket.value);
  let stats;
  try {
    stats = await getJSON('/api/stats', params);
  } catch (error) {
    notice(describe(error));
    return;
  }
  notice('');
  document.getElementById('chart-summary').textContent =
    `${stats.total} entries from ${stats.start} to ${stats.end}`;
  fill(document.getElementById('chart-outcomes'), stacked(stats.buckets));
  fill(document.getElementById('chart-denied'), line(stats.buckets));
  fill(document.getElementById('chart-principals'), bars(stats.principals));
  fill(document.getElementById('chart-methods'), bars(stats.methods));
}

function axis(max) {
  return [
    svg('line', { x1: LEFT, y1: HEIGHT - 20, x2: WIDTH, y2: HEIGHT - 20, stroke: '#888' }),
    svg('text', { x: 2, y: 12, 'font-size': 11 }, String(max)),
    svg('text', { x: 2, y: HEIGHT - 22, 'font-size': 11 }, '0'),
  ];
}

function stacked(buckets) {
  const max = Math.max(1, ...buckets.map((b) => b.success + b.denied + b.error));
  const width = (WIDTH - LEFT) / Math.max(1, buckets.length);
  const scale = (HEIGHT - 30) / max;
  const bars = buckets.flatMap((b, i) => {
    let y = HEIGHT - 20;
    return ['success', 'denied', 'error'].filter((k) => b[k] > 0).map((k) => {
      const h = b[k] * scale;
      y -= h;
      return svg('rect', {
        x: LEFT + i * width, y, width: Math.max(1, width - 1), height: h, fill: COLORS[k],
        class: `bar-${k}`,
      }, svg('title', {}, `${b.start}: ${b[k]} ${k}`));
    });
  });
  const legend = Object.entries(COLORS).map(([k, color], i) =>
    svg('text', { x: LEFT + 10 + i * 90, y: 12, fill: color, 'font-size': 12 }, `■ ${k}`));
  return svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': 'entries by outcome' },
    axis(max), bars, legend);
}

function line(buckets) {
  const max = Math.max(1, ...buckets.map((b) => b.denied));
  const step = (WIDTH - LEFT) / Math.max(1, buckets.length - 1);
  const points = buckets.map((b, i) =>
    `${LEFT + i * step},${HEIGHT - 20 - b.denied * ((HEIGHT - 30) / max)}`).join(' ');
  return svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': 'denied calls' },
    axis(max),
    svg('polyline', { points, fill: 'none', stroke: COLORS.denied, 'stroke-width': 2, class: 'denied-line' }));
}

function bars(values) {
  const max = Math.max(1, ...values.map((v) => v.count));
  const row = 22;
  const height = Math.max(row, values.length * row);
  return svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, role: 'img' },
    values.map((v, i) => [
      svg('rect', { x: 300, y: i * row + 3, width: (WIDTH - 360) * (v.count / max), height: row - 6, fill: '#0969da' }),
      svg('text', { x: 0, y: i * row + 15, 'font-size': 12 }, (v.value || '(none)').slice(0, 48)),
      svg('text', { x: 305 + (WIDTH - 360) * (v.count / max), y: i * row + 15, 'font-size': 12 }, String(v.count)),
    ]));
}
