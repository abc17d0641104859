// Handlers: each handler's versions, which instance runs which, and its
// activation history; deploy a version by upload (the validation answer is
// shown as the server gives it), roll back, or pin an earlier version.
import { api, get, enc } from './api.js';
import { h, time, actionButton } from './dom.js';

function shortVersion(version) {
  return version ? String(version).slice(0, 16) : '';
}

async function handlerCard(name, status, refresh) {
  const detail = await get('/admin/handlers/' + enc(name));
  const file = h('input', { type: 'file', accept: '.wasm,application/wasm', 'data-upload': name });
  const deploy = actionButton('Deploy', status, async () => {
    if (!file.files.length) throw new Error('choose a .wasm component first');
    const deployed = await api('POST', `/admin/handlers/${enc(name)}/versions?by=console`, file.files[0]);
    status.textContent = deployed.changed
      ? `deployed ${name} ${deployed.version} (validated, compiled ${deployed.compiledFrom})`
      : `${name} ${deployed.version} was already active`;
    status.classList.add('ok');
    await refresh();
  });
  const rollback = actionButton('Roll back', status, async () => {
    const deployed = await api('POST', `/admin/handlers/${enc(name)}/rollback`, { by: 'console' });
    status.textContent = `rolled back ${name} to ${deployed.version}`;
    await refresh();
  });
  const versions = h('table.versions', h('tr', h('th', 'version'), h('th', 'uploaded'), h('th', 'by'), h('th.num', 'bytes'), h('th', '')),
    detail.versions.map(v => h('tr', { 'data-version': v.version, 'data-active': String(v.active) },
      h('td', h('code', { title: v.sha256 }, shortVersion(v.version)), v.active ? h('strong.ok', ' active') : ''),
      h('td', time(v.uploaded_at ?? v.uploadedAt)), h('td', v.uploaded_by ?? v.uploadedBy ?? ''), h('td.num', String(v.size)),
      h('td', v.active ? '' : actionButton('Pin', status, async () => {
        await api('POST', `/admin/handlers/${enc(name)}/rollback`, { to: v.version, by: 'console' });
        status.textContent = `pinned ${name} to ${v.version}`;
        await refresh();
      })))));
  const instances = h('table', h('tr', h('th', 'instance'), h('th', 'runs'), h('th', 'seen')),
    detail.instances.map(i => h('tr', h('td', i.instance), h('td', h('code', shortVersion(i.version)), i.switched ? '' : h('span.meta', ' switching')), h('td', time(i.lastSeen)))));
  const history = h('table', h('tr', h('th', 'when'), h('th', 'action'), h('th', 'version'), h('th', 'previous'), h('th', 'by')),
    detail.history.map(a => h('tr', h('td', time(a.at)), h('td', a.action), h('td', h('code', shortVersion(a.version))), h('td', h('code', shortVersion(a.previous))), h('td', a.by))));
  return h('div.card', { 'data-handler': name, 'data-active': detail.active || '' },
    h('h2', name, ' ', h('code.meta.active-version', shortVersion(detail.active))),
    h('div.toolbar', file, deploy, rollback),
    h('h3.meta', 'Versions'), versions, h('h3.meta', 'Instances'), instances, h('h3.meta', 'History'), history);
}

export async function render(main) {
  const status = h('p.meta#handler-status', { role: 'status' });
  const cards = h('div.cards#handlers');
  const refresh = async () => {
    const overview = await get('/admin/handlers');
    const built = await Promise.all(overview.handlers.map(handler => handlerCard(handler.name, status, refresh)));
    cards.replaceChildren(...built);
    meta.textContent = `generation ${overview.generation} · this instance ${overview.thisInstance} · ` +
      `${overview.instances.length} live instance(s) · compile cache ${overview.compileCache.hits} hits / ${overview.compileCache.misses} misses`;
  };
  const meta = h('p.meta');
  main.append(h('h1', 'Handlers'), meta, status, cards);
  await refresh();
}
