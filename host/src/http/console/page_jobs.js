// Jobs: a queue's jobs by state (unfinished ones as they stand, finished ones
// from the queue's history, dead ones from its dead letters), paged and
// searchable by job id or user, with bulk actions on a selection; and a box
// to open any job by id.
import { api, get, enc } from './api.js';
import { h, time, stateBadge, actionButton, report } from './dom.js';

const PAGE_SIZE = 20;
const UNFINISHED = ['waiting', 'active', 'delayed'];
const LISTED = [...UNFINISHED, 'completed', 'failed', 'dead'];

async function load(queue, state) {
  if (state === 'dead') {
    const { dead } = await get(`/api/queues/${enc(queue)}/dead?limit=1000`);
    return dead.map(d => ({ id: d.jobId, state: 'dead', userId: '', attempts: d.attempts, error: d.error, finishedAt: d.failedAt }));
  }
  const source = UNFINISHED.includes(state) ? 'jobs' : 'history';
  const { jobs } = await get(`/api/queues/${enc(queue)}/${source}?state=${state}&limit=1000`);
  return jobs;
}

export async function render(main, _args, query) {
  const stats = await get('/api/queue/stats');
  const queueNames = Object.keys(stats.queues || {});
  const queue = query.get('queue') || queueNames[0] || '';
  const state = LISTED.includes(query.get('state')) ? query.get('state') : 'waiting';
  const search = query.get('q') || '';
  const page = Math.max(0, Number(query.get('page')) || 0);
  const go = changes => {
    const next = new URLSearchParams({ queue, state, q: search, page: '0', ...changes });
    location.hash = '#/jobs?' + next;
  };

  const status = h('p.meta#jobs-status');
  const opener = h('form.toolbar#open-job', {
    onsubmit: event => { event.preventDefault(); const id = opener.elements.id.value.trim(); if (id) location.hash = '#/job/' + enc(id); },
  }, h('input', { name: 'id', placeholder: 'job id', size: 40 }), h('button', 'Open job'));
  const filters = h('div.toolbar',
    h('select#queue-select', { onchange: e => go({ queue: e.target.value }) },
      queueNames.map(name => h('option', { value: name, selected: name === queue }, name))),
    LISTED.map(s => h('a', { href: `#/jobs?queue=${enc(queue)}&state=${s}`, class: s === state ? 'state state-' + s : '' }, s)),
    h('input#search', { type: 'search', placeholder: 'search id or user', value: search, onchange: e => go({ q: e.target.value }) }));
  main.append(h('h1', 'Jobs'), opener, filters);

  let all = [];
  try { all = await load(queue, state); } catch (error) { report(status, error); }
  const needle = search.toLowerCase();
  const matching = all.filter(job => !needle || job.id.toLowerCase().includes(needle) || (job.userId || '').toLowerCase().includes(needle));
  const shown = matching.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  const selected = new Set();
  const rows = shown.map(job => h('tr', { 'data-job': job.id },
    h('td', h('input', { type: 'checkbox', 'aria-label': 'select ' + job.id, onchange: e => e.target.checked ? selected.add(job.id) : selected.delete(job.id) })),
    h('td', h('a', { href: '#/job/' + enc(job.id) }, job.id)),
    h('td', stateBadge(job.state)),
    h('td', job.userId || ''),
    h('td.num', String(job.attempts ?? '')),
    h('td', job.handlerVersion ? `${job.handler} ${job.handlerVersion}` : ''),
    h('td', time(job.finishedAt)),
    h('td.error', job.error || '')));
  const each = (label, call) => actionButton(label, status, async () => {
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map(call));
    const failed = results.filter(r => r.status === 'rejected');
    // Rows acted on leave the list; the rest stay selected for another try.
    ids.forEach((id, index) => {
      if (results[index].status === 'fulfilled') {
        selected.delete(id);
        table.querySelector(`tr[data-job="${CSS.escape(id)}"]`)?.remove();
      }
    });
    status.textContent = `${label}: ${ids.length - failed.length} of ${ids.length} done` + (failed.length ? ' · ' + failed[0].reason.message : '');
  });
  const bulk = state === 'dead'
    ? [each('Replay selected', id => api('POST', `/api/queues/${enc(queue)}/dead/${enc(id)}/replay`)),
      each('Purge selected', id => api('DELETE', `/api/queues/${enc(queue)}/dead/${enc(id)}`))]
    : [state === 'delayed' ? each('Promote selected', id => api('POST', `/api/queues/${enc(queue)}/jobs/${enc(id)}/promote`)) : '',
      each('Cancel selected', id => api('DELETE', `/api/job/${enc(id)}`))];
  const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
  const table = h('table#job-list', h('tr', h('th', ''), h('th', 'job'), h('th', 'state'), h('th', 'user'), h('th.num', 'attempts'),
    h('th', 'handler'), h('th', 'finished'), h('th', 'error')), rows);
  main.append(
    h('div.toolbar', bulk),
    table,
    h('div.toolbar',
      h('button', { type: 'button', disabled: page === 0, onclick: () => go({ page: String(page - 1) }) }, '← newer'),
      h('span.meta', `page ${page + 1} of ${pages} · ${matching.length} jobs`),
      h('button', { type: 'button', disabled: page + 1 >= pages, onclick: () => go({ page: String(page + 1) }) }, 'older →')),
    status);
}
