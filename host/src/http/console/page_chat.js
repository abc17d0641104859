// Chat (design E): POST /api/chat, then the job's stream. Fixes of the old
// page: a new attempt clears the text an earlier attempt streamed (a retried
// answer shows once); a cancelled job or a server `error` ends the stream
// (no reconnecting forever); the finished answer renders every block type
// (markdown included), not only `block.text`.
import { api, get, enc } from './api.js';
import { h } from './dom.js';
import { renderBlocks } from './blocks.js';
import { followJob } from './job_stream.js';

// One conversation per tab: kept across page switches, gone with the tab.
const history = [];
const turns = [];
const userId = 'console-' + Math.random().toString(36).slice(2, 8);
let streams = new Set();

function turn(role, text) {
  const element = h('div.turn.' + role, text);
  turns.push(element);
  return element;
}

async function send(log, prompt, priority) {
  log.append(turn('user', prompt));
  const body = h('div.answer');
  const bar = h('progress', { max: 100, value: 0 });
  const meta = h('div.meta', 'submitting…');
  const answer = turn('assistant', '');
  answer.append(body, bar, meta);
  log.append(answer);
  let reply;
  try {
    reply = await api('POST', '/api/chat', { userId, prompt, priority, conversationHistory: history });
  } catch (error) {
    meta.textContent = error.message; meta.classList.add('error'); bar.remove();
    return;
  }
  answer.dataset.job = reply.jobId;
  answer.dataset.state = 'waiting';
  meta.textContent = `job ${reply.jobId} · ${reply.class} · waiting`;
  let text = '';
  const end = (state, message, isError) => {
    answer.dataset.state = state;
    bar.remove();
    meta.textContent = message;
    meta.classList.toggle('error', !!isError);
    streams.delete(stop);
  };
  const stop = followJob(reply.jobId, async (name, data) => {
    switch (name) {
      case 'task_started':
        // A new attempt streams its answer from the start.
        text = '';
        body.replaceChildren();
        answer.dataset.state = 'active';
        meta.textContent = `job ${reply.jobId} · attempt ${data.attempt} · running`;
        break;
      case 'task_progress':
        bar.value = data.progress;
        meta.textContent = `job ${reply.jobId} · ${data.step || ''}`;
        break;
      case 'text_delta':
        text += data.text;
        body.replaceChildren(h('div.block-text', text));
        break;
      case 'task_failed':
        if (data.final) end('failed', data.error, true);
        else meta.textContent = `${data.error} · will retry`;
        break;
      case 'task_cancelled':
        end('cancelled', `job ${reply.jobId} · cancelled`, true);
        break;
      case 'error':
        end('error', data.message || data.error || 'the stream failed', true);
        break;
      case 'task_completed': {
        const job = await get('/api/job/' + enc(reply.jobId));
        renderBlocks(body, job.blocks && job.blocks.length ? job.blocks : [{ type: 'markdown', text: (job.result || {}).response || text }]);
        end('completed', `job ${reply.jobId} · ${job.handler} ${job.handlerVersion || ''} · ${data.duration_ms ?? ''} ms`);
        history.push({ role: 'user', content: prompt }, { role: 'assistant', content: (data.result || job.result || {}).response || text });
        break;
      }
    }
  });
  streams.add(stop);
}

export async function render(main) {
  const log = h('div#log', turns);
  const prompt = h('textarea#prompt', { placeholder: 'Ask something… (Enter to send)', required: true });
  const priority = h('select#priority', { title: 'priority' },
    h('option', { value: 9 }, 'high (9)'), h('option', { value: 5, selected: true }, 'normal (5)'), h('option', { value: 2 }, 'low (2)'));
  const form = h('form.inline#chat', {
    onsubmit: event => {
      event.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      prompt.value = '';
      send(log, text, Number(priority.value));
    },
  }, prompt, priority, h('button#send', 'Send'));
  prompt.addEventListener('keydown', e => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); } });
  main.append(h('h1', 'Chat'), log, form);
  // Streams end with their jobs; leaving the page stops the ones still open.
  return () => { for (const stop of streams) stop(); streams = new Set(); };
}
