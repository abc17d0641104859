// Conversations (design B): a conversation's WebSocket (`/ws/{id}`, opened
// with the login cookie), showing messages and the bot's events as they
// come, and sending messages into it.
import { h, report } from './dom.js';

export async function render(main, [id]) {
  const status = h('p.meta#conversation-status');
  const opener = h('form.toolbar', {
    onsubmit: e => { e.preventDefault(); const next = opener.elements.cid.value.trim(); if (next) location.hash = '#/conversation/' + encodeURIComponent(next); },
  }, h('input', { name: 'cid', placeholder: 'conversation id', value: id || '', size: 32 }), h('button', 'Join'));
  main.append(h('h1', 'Conversations'), opener, status);
  if (!id) return;
  const frames = h('div.messages#frames');
  const answers = new Map();
  const text = h('input', { placeholder: 'message', size: 60 });
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws/${encodeURIComponent(id)}`);
  socket.onopen = () => { status.textContent = 'connected'; };
  socket.onclose = () => { status.textContent = 'disconnected'; };
  socket.onmessage = message => {
    let frame;
    try { frame = JSON.parse(message.data); } catch (_) { return; }
    if (frame.type === 'message') {
      frames.append(h('div.turn.user', { 'data-frame': frame.id }, h('strong', frame.userId || 'anonymous'), ': ', frame.text));
    } else if (frame.type === 'event') {
      // A bot answer streams as text deltas into one turn per job.
      let turn = answers.get(frame.jobId);
      if (!turn) { turn = h('div.turn.assistant', { 'data-job': frame.jobId }); answers.set(frame.jobId, turn); frames.append(turn); }
      if (frame.event === 'task_started') turn.textContent = '';
      if (frame.event === 'text_delta') turn.append(frame.data.text || '');
    } else if (frame.type === 'error') {
      report(status, new Error(frame.message));
    }
  };
  const form = h('form.inline', {
    onsubmit: e => { e.preventDefault(); if (text.value && socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify({ type: 'message', text: text.value })); text.value = ''; } },
  }, text, h('button', 'Send'));
  main.append(frames, form);
  return () => socket.close();
}
