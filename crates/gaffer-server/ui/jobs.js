// Jobs: a page of jobs, filtered by state and name, refreshed live from the event stream.

import { api } from './api.js';
import { h, fill, badge, heldBadge, withCode, progress, timeAgo, fmtDuration, throttle, keepFocus, FINAL_JOB } from './util.js';

const STATES = ['pending', 'running', 'succeeded', 'failed', 'killed'];
const PAGE = 25;

export async function render(main, ctx) {
  const p = ctx.params;
  const st = { state: p.get('state') || '', name: p.get('name') || '', cursors: [], before: p.get('before') || '' };
  const flash = new Set((p.get('new') || '').split(',').filter(Boolean));

  const stateSel = h('select', { id: 'filter-state', name: 'state' },
    h('option', { value: '' }, 'All states'), STATES.map((s) => h('option', { value: s }, s)));
  stateSel.value = st.state;
  const search = h('input', { type: 'search', id: 'filter-name', name: 'name', placeholder: 'Search by name…', value: st.name, autocomplete: 'off' });
  const body = h('tbody', { id: 'jobs-body' });
  const status = h('p', { class: 'sr-only', 'aria-live': 'polite', hidden: true });
  const newer = h('button', { class: 'btn small', type: 'button', id: 'page-newer' }, '← Newer');
  const older = h('button', { class: 'btn small', type: 'button', id: 'page-older' }, 'Older →');
  const pageInfo = h('span', { class: 'muted small' });
  const note = h('div');
  if (flash.size) {
    note.append(h('div', { class: 'callout ok', role: 'status', id: 'submitted-note' }, 'Submitted ',
      [...flash].map((id, i) => [i ? ', ' : '', h('a', { href: '#/jobs/' + id }, id)]), '.'));
  }

  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Jobs'), h('div', { class: 'sub' }, 'Newest first; updates live.')),
      h('div', { class: 'actions' }, h('a', { class: 'btn primary', href: '#/submit' }, 'Submit a job'))),
    note,
    h('div', { class: 'toolbar', role: 'search' },
      h('div', {}, h('label', { for: 'filter-state' }, 'State'), stateSel),
      h('div', { class: 'grow' }, h('label', { for: 'filter-name' }, 'Name'), search)),
    h('section', { class: 'panel flush', 'aria-label': 'Jobs' },
      h('div', { class: 'table-wrap' },
        h('table', { id: 'jobs-table' },
          h('thead', {}, h('tr', {},
            h('th', { scope: 'col', class: 'hide-sm' }, 'ID'), h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'State'),
            h('th', { scope: 'col' }, 'Tasks'), h('th', { scope: 'col', class: 'hide-sm' }, 'Submitted'),
            h('th', { scope: 'col', class: 'hide-sm' }, 'Duration'))),
          body)),
      h('div', { class: 'pager' }, pageInfo, newer, older)),
    status);

  let next = null;
  function syncHash() {
    const q = new URLSearchParams();
    if (st.state) q.set('state', st.state);
    if (st.name) q.set('name', st.name);
    if (st.before) q.set('before', st.before);
    const s = q.toString();
    history.replaceState(null, '', '#/jobs' + (s ? '?' + s : ''));
  }

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (st.state) q.set('state', st.state);
    if (st.name) q.set('name', st.name);
    if (st.before) q.set('before', st.before);
    const page = await api('/v1/jobs?' + q, { signal: ctx.signal });
    next = page.next || null;
    older.disabled = !next;
    newer.disabled = !st.before;
    pageInfo.textContent = st.before ? `older than ${st.before}` : '';
    if (!page.jobs.length) {
      fill(body, h('tr', {}, h('td', { colspan: 6, class: 'empty' },
        st.state || st.name ? 'No job matches these filters.' : ['No jobs yet. ', h('a', { href: '#/submit' }, 'Submit one.')])));
      return;
    }
    keepFocus(body, () => fill(body, page.jobs.map((j) => {
      const end = j.finished_at || (FINAL_JOB.includes(j.state) ? j.created_at : Date.now());
      const tr = h('tr', { 'data-job': j.id, 'data-state': j.state, 'data-held': j.held ? 'true' : null, class: flash.has(j.id) ? 'flash' : '' },
        h('td', { class: 'nowrap hide-sm' }, h('a', { href: '#/jobs/' + j.id, class: 'mono' }, j.id)),
        h('td', { class: 'name-cell', title: j.name }, h('a', { href: '#/jobs/' + j.id }, j.name),
          h('div', { class: 'muted small mono show-sm' }, j.id)),
        h('td', {}, h('span', { class: 'state-box' }, badge(j.state), j.held ? heldBadge() : null),
          j.pending_reason ? h('div', { class: 'muted small reason' }, withCode(j.pending_reason)) : null),
        h('td', {}, progress(j.tasks, j.state)),
        h('td', { class: 'hide-sm nowrap' }, timeAgo(j.created_at)),
        h('td', { class: 'hide-sm nowrap' }, fmtDuration(end - j.created_at)));
      return tr;
    })));
    flash.clear();
  }

  stateSel.addEventListener('change', () => {
    st.state = stateSel.value;
    st.before = '';
    st.cursors = [];
    syncHash();
    load().catch(() => {});
  });
  let t = null;
  search.addEventListener('input', () => {
    clearTimeout(t);
    t = setTimeout(() => {
      st.name = search.value.trim();
      st.before = '';
      st.cursors = [];
      syncHash();
      load().catch(() => {});
    }, 250);
  });
  older.addEventListener('click', () => {
    if (!next) return;
    st.cursors.push(st.before);
    st.before = next;
    syncHash();
    load().catch(() => {});
  });
  newer.addEventListener('click', () => {
    st.before = st.cursors.pop() || '';
    syncHash();
    load().catch(() => {});
  });

  await load();
  const refresh = throttle(() => load().catch(() => {}), 500);
  ctx.onEvent(refresh);
  // Durations of running jobs keep moving even without events.
  ctx.every(5000, refresh);
  return () => clearTimeout(t);
}
