// Small DOM and formatting helpers shared by the pages.

/** Creates an element: h('a', {href: '#', class: 'x', onclick: f}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) add(el, c);
    else if (c instanceof Node) el.append(c);
    else el.append(document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

export function badge(state) {
  const s = String(state || 'unknown');
  return h('span', { class: 'badge ' + s, 'data-state': s }, s.replace(/_/g, ' '));
}

/** The mark of a job on hold (no task starts until it is released). */
export function heldBadge() {
  return h('span', { class: 'badge held', 'data-held': 'true', title: 'On hold: no task starts until it is released' }, 'held');
}

/** A server's text with `code` spans (e.g. a pending reason naming a command) as <code>. */
export function withCode(text) {
  const parts = String(text || '').split('`');
  if (parts.length % 2 === 0) return parts.join('`'); // an odd number of backticks: as it is
  return parts.map((part, i) => (i % 2 ? h('code', {}, part) : part));
}

/** A word as a shell reads it back: as it is when plain, else in single quotes. */
export function quoteWord(w) {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : "'" + w.replace(/'/g, "'\\''") + "'";
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * The one formatter of byte counts in the UI, in binary units: 67108864 → "64 MiB",
 * 1610612736 → "1.5 GiB" (one decimal under 10, none above). With `{exact: true}` the text
 * is exactly `n` bytes as the server parses sizes ("64 MiB", "1.25 GiB", else "N B"), for
 * specs shown or loaded into a form. Anything not a byte count is returned as text.
 */
export function fmtBytes(n, { exact = false } = {}) {
  if (n === undefined || n === null || n === '') return exact ? '' : '—';
  const b = Number(n);
  if (typeof n === 'boolean' || !Number.isFinite(b) || b < 0) return String(n);
  if (exact) {
    for (let i = BYTE_UNITS.length - 1; i > 0; i--) {
      const m = 1024 ** i;
      if (b < m) continue;
      for (let k = 0; k <= 3; k++) {
        const t = String(Number((b / m).toFixed(k)));
        if (Number(t) * m === b) return `${t} ${BYTE_UNITS[i]}`;
      }
    }
    return `${Math.round(b)} B`;
  }
  let i = 0;
  let v = b;
  while (v >= 1024 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${Math.round(v)} B`;
  let t = v.toFixed(v < 10 ? 1 : 0);
  // 1023.7 KiB would read "1024 KiB": that is 1.0 MiB.
  if (Number(t) >= 1024 && i < BYTE_UNITS.length - 1) {
    i++;
    t = (v / 1024).toFixed(1);
  }
  return `${t} ${BYTE_UNITS[i]}`;
}

/** A spec as the pages show it (job page, resubmit): sizes in binary units
 * (`"memory": "64 MiB"`, which the server reads back as the same number of bytes). */
export function displaySpec(spec) {
  const s = { ...spec };
  if (s.resources?.memory !== undefined && s.resources?.memory !== null) {
    s.resources = { ...s.resources, memory: fmtBytes(s.resources.memory, { exact: true }) };
  }
  return s;
}

export function fmtDuration(ms) {
  if (ms === undefined || ms === null || ms < 0) return '—';
  const s = Math.round(ms / 1000);
  if (s < 1) return (ms / 1000).toFixed(1) + 's';
  if (s < 60) return s + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${m % 60}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  return sameDay ? t : d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + t;
}

export function fmtAgo(ms) {
  if (!ms) return '—';
  const d = Date.now() - ms;
  if (d < 5000) return 'just now';
  return fmtDuration(d).split(' ')[0] + ' ago';
}

/** A <time> element showing `fmtAgo`, with the full date as its title. */
export function timeAgo(ms) {
  if (!ms) return '—';
  return h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, fmtAgo(ms));
}

/**
 * A stacked bar: parts = [[fraction, class, name?], ...]; a named part carries `data-part`.
 * What the parts leave is the empty track.
 */
export function bar(parts, label) {
  const b = h('span', { class: 'bar', role: 'img', 'aria-label': label || '', title: label || null });
  for (const [f, cls, name] of parts) {
    if (f > 0) b.append(h('span', { class: cls, 'data-part': name, style: { width: Math.min(100, f * 100).toFixed(2) + '%' } }));
  }
  return b;
}

/**
 * Task progress of a job: "done/total" and a bar coloured by state: succeeded green, failed
 * (failed, timed out, OOM-killed, lost) red, killed rose, running striped blue over the track
 * (under way, not full), pending the empty track. The job's state is on `data-state`.
 */
export function progress(t, state) {
  const total = t.total || 1;
  const done = t.succeeded + t.failed + t.killed;
  const label = [`${t.succeeded} succeeded`, `${t.failed} failed`, `${t.killed} killed`, `${t.running} running`, `${t.pending ?? 0} pending`].join(', ') + ` of ${t.total}`;
  return h('div', { class: 'progress', 'data-state': state || null },
    h('span', { class: 'txt', 'data-done': done, 'data-total': t.total }, `${done}/${t.total}`),
    bar([[t.succeeded / total, 's-ok', 'succeeded'], [t.failed / total, 's-bad', 'failed'], [t.killed / total, 's-kill', 'killed'],
      [t.running / total, 's-run', 'running']], label));
}

export function toast(msg, kind) {
  const box = document.getElementById('toasts');
  const t = h('div', { class: 'toast ' + (kind || '') }, msg);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/**
 * Asks for confirmation in the page's <dialog>. `extra` is an optional element shown under the
 * text (e.g. a checkbox). Resolves true when confirmed.
 */
export function confirmDialog(title, text, okLabel, extra) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  fill(document.getElementById('confirm-extra'), extra || null);
  document.getElementById('confirm-ok').textContent = okLabel || 'OK';
  d.returnValue = '';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
    document.getElementById('confirm-ok').focus();
  });
}

/** Calls `f` at most once per `ms` (trailing call guaranteed). */
export function throttle(f, ms) {
  let timer = null;
  let pending = false;
  let last = 0;
  return function run() {
    const now = Date.now();
    if (timer) {
      pending = true;
      return;
    }
    const wait = Math.max(0, last + ms - now);
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      f();
      if (pending) {
        pending = false;
        run();
      }
    }, wait);
  };
}

export const FINAL_JOB = ['succeeded', 'failed', 'killed'];

/**
 * Runs `redraw` (which replaces the children of `box`) and gives keyboard focus back to the
 * equivalent element (same id, aria-label or href) if it was inside `box`.
 */
export function keepFocus(box, redraw) {
  const a = document.activeElement;
  let sel = null;
  if (a && a !== box && box.contains(a)) {
    if (a.id) sel = '#' + CSS.escape(a.id);
    else if (a.getAttribute('aria-label')) sel = `[aria-label="${CSS.escape(a.getAttribute('aria-label'))}"]`;
    else if (a.getAttribute('href')) sel = `[href="${CSS.escape(a.getAttribute('href'))}"]`;
  }
  redraw();
  if (sel) {
    const b = box.querySelector(sel);
    if (b) b.focus();
  }
}
