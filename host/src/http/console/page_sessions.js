// Sessions (design D): open or create a session, read its messages with their
// blocks and task placeholders, post a message, and follow a streaming
// message live (its SSE stream, authorised by the login cookie).
import { api, get, enc } from './api.js';
import { h, time, actionButton, report } from './dom.js';
import { renderBlocks } from './blocks.js';

function messageView(message) {
  const body = h('div.answer');
  renderBlocks(body, message.blocks && message.blocks.length ? message.blocks : [{ type: 'text', text: message.text || '' }]);
  const tasks = (message.tasks || []).map(t => h('div.meta', { 'data-task': t.taskId || t.id }, `task ${t.taskId || t.id}: ${t.status}` + (t.error ? ` · ${t.error}` : '')));
  return h('div.turn.' + (message.role === 'user' ? 'user' : 'assistant'), { 'data-message': message.id, 'data-status': message.status || '' },
    body, tasks, h('div.meta', `${message.role} · ${message.status || ''} · ${time(message.createdAt)}` + (message.jobId ? ` · job ${message.jobId}` : '')));
}

/// Keeps a streaming message's view current until its `message_end`.
function follow(sid, message, replace) {
  const source = new EventSource(`/api/v1/sessions/${enc(sid)}/messages/${enc(message.id)}/stream`);
  const reload = async () => replace(messageView(await get('/api/v1/messages/' + enc(message.id))));
  for (const name of ['text_delta', 'content_added', 'content_updated', 'task_started', 'task_progress', 'task_completed', 'task_failed', 'error']) {
    source.addEventListener(name, () => { reload().catch(() => {}); });
  }
  source.addEventListener('message_end', () => { source.close(); reload().catch(() => {}); });
  source.addEventListener('stream_error', () => source.close());
  return () => source.close();
}

export async function render(main, [sid]) {
  const status = h('p.meta#session-status');
  const opener = h('form.toolbar', {
    onsubmit: e => { e.preventDefault(); const id = opener.elements.sid.value.trim(); if (id) location.hash = '#/sessions/' + enc(id); },
  }, h('input', { name: 'sid', placeholder: 'session id', value: sid || '', size: 40 }), h('button', 'Open'),
  actionButton('New session', status, async () => {
    const session = await api('POST', '/api/v1/sessions', { metadata: { createdBy: 'console' } });
    location.hash = '#/sessions/' + enc(session.id);
  }));
  main.append(h('h1', 'Sessions'), opener, status);
  if (!sid) return;
  const session = await get('/api/v1/sessions/' + enc(sid));
  const list = h('div.messages#messages');
  const stops = [];
  const load = async () => {
    const page = await get(`/api/v1/sessions/${enc(sid)}/messages?limit=200`);
    stops.splice(0).forEach(stop => stop());
    list.replaceChildren(...page.messages.map(message => {
      let view = messageView(message);
      if (message.status === 'streaming') {
        stops.push(follow(sid, message, next => { view.replaceWith(next); view = next; }));
      }
      return view;
    }));
  };
  const content = h('textarea', { placeholder: 'message text' });
  const form = h('form.inline', {
    onsubmit: async e => {
      e.preventDefault();
      try {
        await api('POST', `/api/v1/sessions/${enc(sid)}/messages`, { role: 'user', content: content.value });
        content.value = '';
        await load();
      } catch (error) { report(status, error); }
    },
  }, content, h('button', 'Post'));
  main.append(h('p.meta', `session ${session.id} · ${session.messageCount} message(s) · created ${time(session.createdAt)}`), list, form);
  await load();
  return () => stops.forEach(stop => stop());
}
