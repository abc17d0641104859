// Limits and metrics: the shared limiter's configured and effective rate,
// tokens, cool-down and refusal counts (/api/limits), and per queue the
// designs' figures over 1/5/15/60-minute windows (/api/metrics) drawn as SVG
// bar charts, plus a line of the last minute's throughput sampled live.
import { get } from './api.js';
import { h, every, report } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const svg = (tag, attrs, ...children) => {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
};

/// Bars for labelled values (null values are drawn as "–").
function barChart(title, entries, format) {
  const width = 320, height = 130, top = 32, bottom = 18;
  const max = Math.max(1e-9, ...entries.map(([, v]) => v ?? 0));
  const slot = width / entries.length;
  const parts = [svg('text', { x: 4, y: 12 }, title)];
  entries.forEach(([label, value], index) => {
    const barHeight = value === null ? 0 : (height - top - bottom) * (value / max);
    const x = index * slot + slot * 0.2;
    parts.push(svg('rect', { x, y: height - bottom - barHeight, width: slot * 0.6, height: barHeight, fill: '#2f5bd3' }));
    parts.push(svg('text', { x, y: height - bottom - barHeight - 3 }, value === null ? '–' : format(value)));
    parts.push(svg('text', { x, y: height - 4 }, label));
  });
  return svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title }, ...parts);
}

function lineChart(title, values) {
  const width = 320, height = 120;
  const max = Math.max(1, ...values);
  const step = width / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 6 - (height - 24) * (v / max)).toFixed(1)}`).join(' ');
  return svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title },
    svg('text', { x: 4, y: 12 }, `${title} (max ${max.toFixed(1)})`), svg('polyline', { points }));
}

function limiterTable(limits) {
  const rows = [];
  const add = (prefix, object) => {
    for (const [key, value] of Object.entries(object)) {
      if (value && typeof value === 'object' && !Array.isArray(value)) {
        if (Object.keys(value).length === 0) rows.push(h('tr', h('th', prefix + key), h('td', '–')));
        else add(prefix + key + '.', value);
      } else {
        rows.push(h('tr', { 'data-field': prefix + key }, h('th', prefix + key), h('td', typeof value === 'number' ? String(Math.round(value * 1000) / 1000) : String(value))));
      }
    }
  };
  add('', limits);
  return h('table#limits', rows);
}

export async function render(main) {
  const status = h('p.meta');
  const limiter = h('div');
  const charts = h('div#charts');
  main.append(h('h1', 'Limits & metrics'), status, h('div.cards', h('div.card', h('h2', 'Model calls'), limiter), h('div.card', h('h2', 'Queues'), charts)));
  const samples = {};
  return every(2000, async () => {
    let limits, metrics;
    try {
      [limits, metrics] = await Promise.all([get('/api/limits'), get('/api/metrics')]);
    } catch (error) { report(status, error); return; }
    limiter.replaceChildren(limiterTable(limits));
    const sections = [];
    for (const [queue, { windows }] of Object.entries(metrics.queues)) {
      const label = w => w.minutes + ' min';
      const line = samples[queue] = [...(samples[queue] || []), windows[0] ? windows[0].throughputPerMinute : 0].slice(-60);
      sections.push(h('section', { 'data-queue': queue }, h('h3', queue),
        h('p.meta', windows.map(w => `${label(w)}: ${w.totalRequests} requests, ${w.failed} failed, ${w.cancelled} cancelled`).join(' · ')),
        h('div.charts', barChart('throughput / min', windows.map(w => [label(w), w.throughputPerMinute]), v => v.toFixed(1)),
        barChart('avg response ms', windows.map(w => [label(w), w.averageResponseTimeMs]), v => v.toFixed(0)),
        barChart('success rate %', windows.map(w => [label(w), w.successRate === null ? null : w.successRate * 100]), v => v.toFixed(0)),
        lineChart('throughput / min, live', line))));
    }
    charts.replaceChildren(...sections);
    status.textContent = `figures in ${metrics.bucketSeconds}-second buckets · updated ${new Date().toLocaleTimeString()}`;
  });
}
