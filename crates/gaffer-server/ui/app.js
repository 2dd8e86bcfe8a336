// Entry point: asks for the API token when the server wants one, follows the live event stream,
// and routes #/... to the pages.

import { api, ApiError, followEvents, onUnauthorized, setToken, token } from './api.js';
import { h, fill } from './util.js';
import * as overview from './overview.js';
import * as jobs from './jobs.js';
import * as job from './job.js';
import * as submit from './submit.js';
import * as nodes from './nodes.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const live = document.getElementById('live');
const signout = document.getElementById('signout');

// Subscribers to every transition event of the cluster.
const listeners = new Set();
let liveAbort = null;
let current = null; // { abort: AbortController, cleanup }
let authed = false;

function startLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = new AbortController();
  live.hidden = false;
  followEvents({
    signal: liveAbort.signal,
    onEvent: (ev) => listeners.forEach((f) => f(ev)),
    onStatus: (s) => {
      live.className = 'live ' + (s === 'open' ? 'on' : 'off');
      live.textContent = s === 'open' ? 'Live' : 'Reconnecting…';
      // After a reconnect, pages refresh from scratch (events may have been missed).
      if (s === 'open') listeners.forEach((f) => f(null));
    },
  });
}

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = hash.split('?');
  const params = new URLSearchParams(qs || '');
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0) return { page: overview, nav: 'overview', params };
  if (parts[0] === 'jobs' && parts[1]) return { page: job, nav: 'jobs', params, id: decodeURIComponent(parts[1]) };
  if (parts[0] === 'jobs') return { page: jobs, nav: 'jobs', params };
  if (parts[0] === 'submit') return { page: submit, nav: 'submit', params };
  if (parts[0] === 'nodes') return { page: nodes, nav: 'nodes', params };
  return { page: null, nav: '', params };
}

function render() {
  if (!authed) return;
  if (current) {
    current.abort.abort();
    if (typeof current.cleanup === 'function') current.cleanup();
    current = null;
  }
  const r = route();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.nav === r.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const abort = new AbortController();
  const ctx = {
    signal: abort.signal,
    params: r.params,
    id: r.id,
    // Subscribes to live events until the page is left; f(null) means "refresh everything".
    onEvent(f) {
      listeners.add(f);
      abort.signal.addEventListener('abort', () => listeners.delete(f));
    },
    every(ms, f) {
      const t = setInterval(f, ms);
      abort.signal.addEventListener('abort', () => clearInterval(t));
    },
  };
  main.replaceChildren();
  if (!r.page) {
    fill(main, h('div', { class: 'panel empty' }, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview'))));
    return;
  }
  current = { abort, cleanup: null };
  Promise.resolve(r.page.render(main, ctx)).then((cleanup) => {
    if (current && current.abort === abort) current.cleanup = cleanup;
    else if (typeof cleanup === 'function') cleanup();
  }).catch((e) => {
    if (e && e.name === 'AbortError') return;
    if (e instanceof ApiError && e.status === 401) return;
    fill(main, h('div', { class: 'callout error', role: 'alert' }, String(e.message || e)));
  });
}

function askToken(message) {
  authed = false;
  if (current) {
    current.abort.abort();
    current = null;
  }
  if (liveAbort) liveAbort.abort();
  nav.hidden = true;
  live.hidden = true;
  signout.hidden = true;
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, 'aria-describedby': 'token-help token-error' });
  const err = h('p', { class: 'field-error', id: 'token-error', role: 'alert' }, message || '');
  const btn = h('button', { class: 'btn primary', type: 'submit', id: 'token-submit' }, 'Continue');
  const form = h('form', { class: 'panel auth', id: 'auth-form', 'aria-labelledby': 'auth-title' },
    h('h1', { id: 'auth-title' }, 'API token required'),
    h('p', { id: 'token-help' }, 'This gaffer server requires an API token. It is kept in this browser tab only (sessionStorage) and sent with every request.'),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Token'), input, err),
    h('div', { class: 'form-actions' }, btn));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    btn.disabled = true;
    const t = input.value.trim();
    setToken(t);
    if (await check()) {
      start();
    } else {
      setToken('');
      err.textContent = 'The server refused this token.';
      input.setAttribute('aria-invalid', 'true');
      btn.disabled = false;
      input.focus();
    }
  });
  fill(main, form);
  input.focus();
}

/** True if the server accepts our (possibly empty) token. */
async function check() {
  const r = await fetch('/v1/nodes', { headers: token() ? { Authorization: 'Bearer ' + token() } : {}, cache: 'no-store' });
  return r.status !== 401;
}

function start() {
  authed = true;
  nav.hidden = false;
  signout.hidden = !token();
  startLive();
  render();
}

onUnauthorized(() => {
  if (!authed) return;
  setToken('');
  askToken('Your token was refused; enter it again.');
});

signout.addEventListener('click', () => {
  setToken('');
  askToken();
});

window.addEventListener('hashchange', render);

(async () => {
  try {
    if (await check()) start();
    else {
      setToken('');
      askToken();
    }
  } catch (e) {
    fill(main, h('div', { class: 'callout error', role: 'alert' }, 'Cannot reach the gaffer server: ' + e.message));
  }
})();

// Exposed for debugging from the console.
window.gaffer = { api };
