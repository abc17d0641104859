// Content blocks as DOM: every type the WIT `content-block` variant has
// (text, markdown, html, code, json, thinking, image, audio, video, file,
// placeholder). Markdown and HTML come from a model or a client, so they pass
// DOMPurify before they reach the page; media only load from http(s) or from
// the block's own base64. Every block is a `.block` carrying `data-block-type`.
import { marked } from './vendor-marked.js';
import DOMPurify from './vendor-purify.js';
import { h } from './dom.js';
import { get, enc } from './api.js';

function sanitized(html) {
  const holder = h('div');
  holder.innerHTML = DOMPurify.sanitize(html);
  return [...holder.childNodes];
}

/// The block's source as a URL the page may load, or null.
function mediaUrl(block, fallbackType) {
  if (typeof block.url === 'string') {
    try {
      const url = new URL(block.url, location.href);
      return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
    } catch (_) { return null; }
  }
  if (typeof block.base64 === 'string') {
    const type = typeof block.mimeType === 'string' && /^[\w.+-]+\/[\w.+-]+$/.test(block.mimeType) ? block.mimeType : fallbackType;
    return 'data:' + type + ';base64,' + block.base64.replace(/[^A-Za-z0-9+/=]/g, '');
  }
  return null;
}

function media(block) {
  const kind = block.type;
  const url = mediaUrl(block, kind === 'file' ? 'application/octet-stream' : kind + '/*');
  const caption = block.caption ? h('figcaption.meta', block.caption) : null;
  if (!url) return h('span.error', `${kind} without a loadable source`);
  if (kind === 'image') {
    return h('figure', h('img', { src: url, alt: block.caption || '', width: block.width, height: block.height }), caption);
  }
  if (kind === 'audio' || kind === 'video') {
    return h('figure', h(kind, { src: url, controls: true, preload: 'none' }), caption);
  }
  return h('figure', h('a', { href: url, download: block.name || 'file', rel: 'noopener' }, block.name || 'download'), caption);
}

export function renderBlock(block) {
  const wrap = h('div.block.block-' + block.type, { 'data-block-type': block.type });
  if (block.stored === 'separate' && block.contentId) {
    // Large blocks are stored apart: load them when shown.
    wrap.append(h('span.meta', 'loading…'));
    get('/api/v1/content/' + enc(block.contentId))
      .then(full => wrap.replaceChildren(...renderBlock(full.block || full).childNodes))
      .catch(error => wrap.replaceChildren(h('span.error', error.message)));
    return wrap;
  }
  switch (block.type) {
    case 'text':
      wrap.append(h('div.block-text', block.text || ''));
      break;
    case 'markdown':
      wrap.append(...sanitized(marked.parse(block.text || '')));
      break;
    case 'html':
      wrap.append(...sanitized(block.html || ''));
      break;
    case 'code': {
      const code = h('code', { 'data-language': block.language || '' }, block.code || '');
      wrap.append(block.language ? h('div.meta', block.language) : '', h('pre', code));
      break;
    }
    case 'json':
      wrap.append(h('pre', JSON.stringify(block.json, null, 2)));
      break;
    case 'thinking':
      wrap.append(h('details', h('summary', 'thinking'), h('div.block-text', block.text || '')));
      break;
    case 'image': case 'audio': case 'video': case 'file':
      wrap.append(media(block));
      break;
    case 'placeholder':
      wrap.classList.add('block-placeholder');
      wrap.dataset.taskId = block.taskId || '';
      wrap.append(h('progress'), ' ', block.description || 'working…');
      break;
    default:
      wrap.append(h('pre', JSON.stringify(block)));
  }
  return wrap;
}

export function renderBlocks(target, blocks) {
  target.replaceChildren(...(blocks || []).map(renderBlock));
}
