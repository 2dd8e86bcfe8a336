// Talking to the gaffer REST API: the token, JSON calls, errors, and Server-Sent Events read
// with fetch() (so the Authorization header can be sent; EventSource cannot send headers).

const KEY = 'gaffer.token';
let unauthorized = () => {};

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

/** Called with no arguments whenever the server answers 401. */
export function onUnauthorized(f) {
  unauthorized = f;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.fields = (body && body.fields) || [];
  }
}

function headers(extra) {
  const h = { ...(extra || {}) };
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

/**
 * Calls the API. `body` objects are sent as JSON, strings as they are (with `contentType`).
 * Returns parsed JSON, text, null (204), or the Response itself with `raw: true`.
 */
export async function api(path, opts = {}) {
  const { method = 'GET', signal, raw = false, contentType } = opts;
  let body = opts.body;
  const extra = {};
  if (body !== undefined && typeof body !== 'string') {
    body = JSON.stringify(body);
    extra['Content-Type'] = 'application/json';
  } else if (body !== undefined) {
    extra['Content-Type'] = contentType || 'application/json';
  }
  let r;
  try {
    r = await fetch(path, { method, body, headers: headers(extra), signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { error: 'cannot reach the gaffer server: ' + e.message });
  }
  if (r.status === 401) {
    unauthorized();
    throw new ApiError(401, { error: 'this server requires an API token' });
  }
  if (!r.ok) {
    let b;
    try {
      b = await r.json();
    } catch {
      b = { error: `${r.status} ${r.statusText}` };
    }
    throw new ApiError(r.status, b);
  }
  if (raw) return r;
  if (r.status === 204) return null;
  const ct = r.headers.get('content-type') || '';
  return ct.includes('json') ? r.json() : r.text();
}

/** Parses a Server-Sent Events byte stream; calls `onMessage({event, data, id})` per message. */
async function readSse(response, onMessage, signal) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done || signal.aborted) return;
    buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const msg = { event: 'message', data: '', id: null };
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const k = i < 0 ? line : line.slice(0, i);
        let v = i < 0 ? '' : line.slice(i + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (k === 'event') msg.event = v;
        else if (k === 'data') data.push(v);
        else if (k === 'id') msg.id = v;
      }
      if (data.length) {
        msg.data = data.join('\n');
        onMessage(msg);
      }
    }
  }
}

/**
 * Follows `GET /v1/events` until `signal` aborts, reconnecting with back-off and resuming after
 * the last event seen. `onEvent(eventView)` per transition; `onStatus('open'|'retrying')`.
 */
export function followEvents({ after, job, signal, onEvent, onStatus = () => {} }) {
  let last = after;
  (async () => {
    let delay = 500;
    while (!signal.aborted) {
      const q = new URLSearchParams();
      if (last !== undefined && last !== null) q.set('after', String(last));
      if (job) q.set('job', job);
      try {
        const r = await fetch('/v1/events?' + q, { headers: headers({ Accept: 'text/event-stream' }), signal, cache: 'no-store' });
        if (r.status === 401) {
          unauthorized();
          return;
        }
        if (!r.ok) throw new Error('HTTP ' + r.status);
        onStatus('open');
        delay = 500;
        await readSse(r, (m) => {
          if (m.event !== 'transition') return;
          let ev;
          try {
            ev = JSON.parse(m.data);
          } catch {
            return;
          }
          last = ev.id;
          onEvent(ev);
        }, signal);
      } catch (e) {
        if (signal.aborted) return;
      }
      if (signal.aborted) return;
      onStatus('retrying');
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 10000);
      // A live-only stream resumes from what it saw; if it saw nothing, it stays live-only.
    }
  })();
}

/** Downloads `path` with the token and saves it as `name`. */
export async function download(path, name) {
  const r = await api(path, { raw: true });
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
