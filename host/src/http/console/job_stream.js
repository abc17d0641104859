// Follows a job's SSE stream (`/stream/status/{id}`, authorised by the login
// cookie) until the job ends. Ends on every terminal event, `task_cancelled`
// included, and on the server's `error` event; a stream the browser keeps
// reconnecting to a finished job was the old chat page's bug.
const TERMINAL = new Set(['task_completed', 'task_cancelled']);

/// `on(name, data, event)` gets every event; returns a function that stops.
export function followJob(id, on) {
  const source = new EventSource('/stream/status/' + encodeURIComponent(id));
  let ended = false;
  let finishedBefore = false;
  const stop = () => { ended = true; source.close(); };
  const names = ['state', 'task_started', 'task_progress', 'text_delta', 'task_failed',
    'task_completed', 'task_cancelled', 'task_retrying', 'content_added', 'block_added'];
  const deliver = (name, message) => {
    let event = {};
    try { event = JSON.parse(message.data); } catch (_) { event = { data: message.data }; }
    const data = name === 'state' ? event : (event.data ?? event);
    if (name === 'state') finishedBefore = ['completed', 'failed', 'cancelled'].includes(data.state);
    on(name, data, event);
    if (TERMINAL.has(name)) stop();
    // A final failure may still be followed by a replay's events: the stream
    // goes on until the server ends it.
    if (name === 'task_failed' && data.final) finishedBefore = true;
  };
  for (const name of names) source.addEventListener(name, message => deliver(name, message));
  // Custom events a handler publishes arrive as their own names; unnamed ones as `message`.
  source.onmessage = message => deliver('message', message);
  // A named `error` event is the server's (with data); a bare one is the connection's.
  source.addEventListener('error', message => {
    if (ended) return;
    if (message.data) {
      deliver('error', message);
      stop();
    } else if (finishedBefore) {
      // The server ended the stream of a job that had ended.
      stop();
    } else if (source.readyState === EventSource.CLOSED) {
      on('disconnected', {}, {});
    }
  });
  return stop;
}
