// The console's shell: the key prompt, the navigation and a hash router. A
// page module exports `render(main, args, query)` and may return a function
// that stops its timers and streams when the user leaves it.
import { login, logout, storedKey } from './api.js';
import * as queues from './page_queues.js';
import * as jobs from './page_jobs.js';
import * as job from './page_job.js';
import * as handlers from './page_handlers.js';
import * as limits from './page_limits.js';
import * as chat from './page_chat.js';
import * as sessions from './page_sessions.js';
import * as conversation from './page_conversation.js';

const PAGES = { queues, jobs, job, handlers, limits, chat, sessions, conversation };
const main = document.getElementById('page');
let leave = null;

function showPrompt(message) {
  document.getElementById('shell').hidden = true;
  main.replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  document.getElementById('key').focus();
}

async function route() {
  if (leave) { leave(); leave = null; }
  const [path, search] = (location.hash.slice(1) || '/queues').split('?');
  const [name, ...args] = path.split('/').filter(Boolean);
  const page = PAGES[name] || queues;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.page === (name === 'job' ? 'jobs' : name));
  }
  main.replaceChildren();
  main.dataset.page = PAGES[name] ? name : 'queues';
  try {
    leave = await page.render(main, args.map(decodeURIComponent), new URLSearchParams(search || '')) || null;
  } catch (error) {
    if (error.status === 401) { await logout(); showPrompt('The key is no longer accepted.'); return; }
    main.append(Object.assign(document.createElement('p'), { className: 'error', textContent: error.message }));
  }
}

async function open(who) {
  document.getElementById('login').hidden = true;
  document.getElementById('whoami').textContent = who.role + (who.user ? ' · ' + who.user.userId : '');
  document.getElementById('shell').hidden = false;
  window.addEventListener('hashchange', route);
  await route();
}

document.getElementById('login-form').addEventListener('submit', async event => {
  event.preventDefault();
  const key = document.getElementById('key').value.trim();
  try {
    const who = await login(key);
    document.getElementById('key').value = '';
    await open(who);
  } catch (error) {
    showPrompt(error.message);
  }
});

document.getElementById('logout').addEventListener('click', async () => {
  window.removeEventListener('hashchange', route);
  if (leave) { leave(); leave = null; }
  await logout();
  showPrompt('');
});

// A key kept from earlier in this tab is checked again (it may be revoked).
const kept = storedKey();
if (kept) {
  login(kept).then(open, () => { logout(); showPrompt('Enter a key.'); });
} else {
  showPrompt('');
}
// Lets tests and the screenshot command wait for the console to be ready.
document.documentElement.dataset.ready = '1';
