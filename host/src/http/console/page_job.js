// One job: its fields, attempts and their errors, result blocks, the live
// event timeline, the payload it was submitted with (admin keys only; shown
// as the host stored it, pretty-printed), and the actions that apply (cancel;
// promote a delayed job; replay or purge a dead job).
import { api, get, enc } from './api.js';
import { h, time, stateBadge, actionButton } from './dom.js';
import { renderBlocks } from './blocks.js';
import { followJob } from './job_stream.js';

const FIELDS = ['queue', 'class', 'priority', 'userId', 'attempts', 'progress', 'step', 'worker', 'errorKind', 'error'];

export async function render(main, [id]) {
  const status = h('p.meta#job-status');
  const summary = h('div#job-summary');
  const attempts = h('table#attempts');
  const blocks = h('div#job-blocks');
  const result = h('pre#job-result');
  const timeline = h('div.timeline#timeline');
  const payload = h('pre#job-payload');
  const actions = h('div.toolbar#job-actions');
  main.append(h('h1', 'Job ', h('code', id)), actions, status, summary,
    h('h2', 'Result'), blocks, result, h('h2', 'Payload'), payload, h('h2', 'Attempts'), attempts, h('h2', 'Events'), timeline);

  const show = job => {
    summary.replaceChildren(h('p', stateBadge(job.state), ' ',
      h('span.meta', `handler ${job.handler} ${job.handlerVersion || '(not started)'} · created ${time(job.createdAt)}` +
        (job.finishedAt ? ` · finished ${time(job.finishedAt)}` : ''))),
    h('table', FIELDS.filter(f => job[f] !== null && job[f] !== undefined && job[f] !== '')
      .map(f => h('tr', h('th', f), h('td', String(job[f]))))));
    renderBlocks(blocks, job.blocks);
    result.textContent = job.result ? JSON.stringify(job.result, null, 2) : '';
    result.hidden = !job.result;
    attempts.replaceChildren(...[h('tr', h('th', '#'), h('th', 'outcome'), h('th', 'worker'), h('th', 'started'), h('th', 'finished'), h('th', 'error')),
      (job.attemptHistory || []).map(a => h('tr', h('td', String(a.attempt)), h('td', a.outcome), h('td', a.worker || ''),
        h('td', time(a.startedAt)), h('td', time(a.finishedAt)), h('td.error', [a.errorKind, a.error].filter(Boolean).join(': '))))].flat());
    const queue = job.queue;
    actions.replaceChildren(
      ['waiting', 'delayed', 'active'].includes(job.state)
        ? actionButton('Cancel', status, async () => { const r = await api('DELETE', `/api/job/${enc(id)}`); status.textContent = r.cancel === 'requested' ? 'cancel requested' : 'cancelled'; await refresh(); }, 'danger')
        : '',
      job.state === 'delayed' ? actionButton('Promote', status, async () => { await api('POST', `/api/queues/${enc(queue)}/jobs/${enc(id)}/promote`); status.textContent = 'promoted'; await refresh(); }) : '',
      job.state === 'failed' ? actionButton('Replay', status, async () => { await api('POST', `/api/queues/${enc(queue)}/dead/${enc(id)}/replay`); status.textContent = 'replayed'; await refresh(); restart(); }) : '',
      job.state === 'failed' ? actionButton('Purge dead letter', status, async () => { const r = await api('DELETE', `/api/queues/${enc(queue)}/dead/${enc(id)}`); status.textContent = `purged ${r.purged}`; }, 'danger') : '');
  };
  const refresh = async () => show(await get('/api/job/' + enc(id)));
  const first = await get('/api/job/' + enc(id));
  show(first);
  // The payload never changes: read once, after the page is up.
  get(`/api/queues/${enc(first.queue)}/jobs/${enc(id)}/payload`)
    .then(body => { payload.textContent = JSON.stringify(body, null, 2); })
    .catch(error => { payload.textContent = `(not shown: ${error.message})`; });

  let stop = null;
  const restart = () => {
    if (stop) stop();
    stop = followJob(id, (name, data) => {
      if (name === 'state' || name === 'ping' || name === 'disconnected') return;
      const detail = name === 'text_delta' ? JSON.stringify(data.text) : JSON.stringify(data);
      timeline.append(h('div', { 'data-event': name }, h('span.meta', new Date().toLocaleTimeString() + ' '), h('strong', name), ' ', detail.slice(0, 300)));
      if (name !== 'text_delta') refresh().catch(() => {});
    });
  };
  restart();
  return () => stop && stop();
}
