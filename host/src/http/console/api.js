// The console's only way to the server: every call presents the key the user
// typed (kept in sessionStorage, so it dies with the tab). EventSource and
// WebSocket cannot set headers; for them `login` has the server set its
// HttpOnly, SameSite=Strict cookie from the same key.
const STORAGE = 'spool.key';

export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storedKey() {
  return sessionStorage.getItem(STORAGE);
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: 'http_' + response.status, message: text || response.statusText };
    throw new ApiFailure(response.status, error.code, error.message);
  }
  return body;
}

/// Checks the key with the server (which also sets the stream cookie) and keeps it.
export async function login(key) {
  const response = await fetch('/api/login', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key }),
  });
  const who = await answer(response);
  sessionStorage.setItem(STORAGE, key);
  return who;
}

export async function logout() {
  sessionStorage.removeItem(STORAGE);
  await fetch('/api/logout', { method: 'POST' }).catch(() => {});
}

/// A JSON call; `body` is sent as JSON unless it is a Blob/File (sent as is).
export async function api(method, path, body) {
  const headers = { authorization: 'Bearer ' + storedKey() };
  let payload;
  if (body instanceof Blob) {
    headers['content-type'] = 'application/wasm';
    payload = body;
  } else if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  return answer(await fetch(path, { method, headers, body: payload }));
}

export const get = path => api('GET', path);
export const enc = encodeURIComponent;
