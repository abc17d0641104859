// Queues: every queue's counts per state and per priority class, refreshed
// every second; pause and resume. Reads /api/queue/stats.
import { api, get, enc } from './api.js';
import { h, every, actionButton, report } from './dom.js';

const STATES = ['waiting', 'active', 'delayed', 'completed', 'failed', 'dead'];

export async function render(main) {
  const status = h('p.meta');
  const table = h('table#queues');
  main.append(h('h1', 'Queues'), table, status);
  return every(1000, async () => {
    let stats;
    try { stats = await get('/api/queue/stats'); } catch (error) { report(status, error); return; }
    const rows = [h('tr', h('th', 'queue'), h('th', 'class'), STATES.map(s => h('th.num', s)), h('th', ''))];
    for (const [name, queue] of Object.entries(stats.queues || {})) {
      const link = state => h('a', { href: `#/jobs?queue=${enc(name)}&state=${state}` }, String(queue[state] ?? 0));
      const toggle = queue.paused
        ? actionButton('Resume', status, async () => { await api('POST', `/api/queues/${enc(name)}/resume`); }, 'resume')
        : actionButton('Pause', status, async () => { await api('POST', `/api/queues/${enc(name)}/pause`); }, 'pause');
      rows.push(h('tr', { 'data-queue': name, 'data-paused': String(!!queue.paused) },
        h('td', h('strong', name), queue.paused ? h('span.state', ' paused') : ''),
        h('td.meta', 'all'),
        STATES.map(s => h('td.num', { 'data-count': s }, link(s))),
        h('td', toggle)));
      for (const [klass, counts] of Object.entries(queue.by_priority || queue.byPriority || {})) {
        rows.push(h('tr.meta', h('td'), h('td', klass),
          STATES.map(s => h('td.num', counts[s] === undefined ? '' : String(counts[s]))), h('td')));
      }
    }
    table.replaceChildren(...rows);
  });
}
