// Small DOM helpers shared by the pages. Text always goes in as text nodes;
// only blocks.js puts (sanitized) HTML into the page.

/// h('td.num#total', {title: 'x'}, child, 'text', ...): an element.
export function h(spec, attrs, ...children) {
  const [tag, ...parts] = spec.split(/(?=[.#])/);
  const element = document.createElement(tag || 'div');
  for (const part of parts) {
    if (part.startsWith('#')) element.id = part.slice(1);
    else element.classList.add(part.slice(1));
  }
  if (attrs && (attrs.constructor !== Object)) { children.unshift(attrs); attrs = null; }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name in element && typeof value !== 'string') element[name] = value;
    else element.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : '';
}

export function stateBadge(state) {
  return h('span.state.state-' + state, { 'data-state': state }, state);
}

/// Shows a failure where the user acted, instead of an unhandled rejection.
export function report(target, error) {
  target.textContent = error && error.message ? error.message : String(error);
  target.classList.add('error');
}

/// Runs `action` on click, showing its failure in `status`.
export function actionButton(label, status, action, className) {
  return h('button' + (className ? '.' + className : ''), {
    type: 'button',
    onclick: async event => {
      const button = event.currentTarget;
      button.disabled = true;
      status.textContent = '';
      status.classList.remove('error');
      try { await action(); } catch (error) { report(status, error); } finally { button.disabled = false; }
    },
  }, label);
}

/// Calls `tick` now and every `ms` until the page is left.
export function every(ms, tick) {
  let stopped = false;
  const run = async () => { if (!stopped) { try { await tick(); } catch (_) { /* shown by tick */ } } };
  run();
  const timer = setInterval(run, ms);
  return () => { stopped = true; clearInterval(timer); };
}
