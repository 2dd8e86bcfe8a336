// Overview: jobs by state, queue depth, running tasks, nodes, and ended attempts per minute.

import { api } from './api.js';
import { h, fill, throttle, badge, heldBadge, progress } from './util.js';

/** Parses Prometheus text into { name or name{labels}: value }. */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

function card(label, value, dot, href, id) {
  const inner = [h('div', { class: 'label' }, dot ? h('span', { class: 'dot ' + dot }) : null, label),
    h('div', { class: 'value', id }, String(value))];
  return href ? h('a', { class: 'card', href }, inner) : h('div', { class: 'card' }, inner);
}

const NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const k of kids) el.append(typeof k === 'string' ? document.createTextNode(k) : k);
  return el;
}

/** Stacked bars of succeeded (green) and failed (red) attempts per minute. */
function chart(tl) {
  const W = 720;
  const H = 220;
  const L = 36;
  const B = 24;
  const T = 10;
  const R = 8;
  const mins = tl.minutes;
  const max = Math.max(1, ...mins.map((m) => m.succeeded + m.failed));
  // An even top, so that the middle tick is a whole number too (no "0, 1, 1" at a top of 1).
  const nice = max <= 4 ? 2 * Math.ceil(max / 2) : Math.ceil(max / 10) * 10;
  const bw = (W - L - R) / mins.length;
  const y = (v) => T + (H - T - B) * (1 - v / nice);
  const total = mins.reduce((a, m) => [a[0] + m.succeeded, a[1] + m.failed], [0, 0]);
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-title chart-desc' },
    svg('title', { id: 'chart-title' }, 'Task attempts ended per minute, last hour'),
    svg('desc', { id: 'chart-desc' }, `${total[0]} succeeded and ${total[1]} failed in the last hour`));
  for (const v of [0, nice / 2, nice]) {
    g.append(svg('line', { class: 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    g.append(svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, String(Math.round(v))));
  }
  mins.forEach((m, i) => {
    const x = L + i * bw + 1;
    const w = Math.max(1, bw - 2);
    const tip = `${new Date(m.time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false })}: ${m.succeeded} succeeded, ${m.failed} failed`;
    if (m.succeeded) {
      g.append(svg('rect', { class: 'ok', x, y: y(m.succeeded), width: w, height: y(0) - y(m.succeeded), rx: 1.5 }, svg('title', {}, tip)));
    }
    if (m.failed) {
      const top = m.succeeded + m.failed;
      g.append(svg('rect', { class: 'bad', x, y: y(top), width: w, height: y(m.succeeded) - y(top), rx: 1.5 }, svg('title', {}, tip)));
    }
  });
  [[0, '−60 min'], [30, '−30 min'], [59, 'now']].forEach(([i, t]) => {
    g.append(svg('text', { x: L + i * bw + bw / 2, y: H - 6, 'text-anchor': i === 0 ? 'start' : i === 59 ? 'end' : 'middle' }, t));
  });
  return h('div', { class: 'chart', id: 'timeline-chart', 'data-succeeded': total[0], 'data-failed': total[1] }, g,
    h('div', { class: 'legend' },
      h('span', {}, h('span', { class: 'dot succeeded' }), `Succeeded (${total[0]})`),
      h('span', {}, h('span', { class: 'dot failed' }), `Failed, timed out or lost (${total[1]})`)));
}

export async function render(main, ctx) {
  const cards = h('div', { class: 'cards', id: 'overview-cards' });
  const chartBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const recent = h('div', { class: 'table-wrap' });
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Overview'), h('div', { class: 'sub' }, 'The cluster at a glance, updated live.')),
      h('div', { class: 'actions' }, h('a', { class: 'btn primary', href: '#/submit' }, 'Submit a job'))),
    cards,
    h('div', { class: 'grid2' },
      h('section', { class: 'panel', 'aria-labelledby': 'chart-h' }, h('h2', { id: 'chart-h' }, 'Tasks finished per minute — last hour'), chartBox),
      h('section', { class: 'panel flush', 'aria-labelledby': 'recent-h' }, h('h2', { id: 'recent-h' }, 'Recent jobs'), recent)));

  async function load() {
    const [metrics, tl, page] = await Promise.all([
      api('/metrics', { signal: ctx.signal }).then(parseMetrics),
      api('/v1/stats/timeline', { signal: ctx.signal }),
      api('/v1/jobs?limit=6', { signal: ctx.signal }),
    ]);
    const m = (k) => metrics[k] ?? 0;
    fill(cards,
      ['pending', 'running', 'succeeded', 'failed', 'killed'].map((s) =>
        card(s[0].toUpperCase() + s.slice(1) + ' jobs', m(`gaffer_jobs{state="${s}"}`), s, `#/jobs?state=${s}`, 'count-' + s)),
      card('Queue depth', m('gaffer_queue_depth'), 'queue', null, 'queue-depth'),
      card('Running tasks', m('gaffer_tasks_running'), 'running', null, 'running-tasks'),
      card('Nodes ready', m('gaffer_nodes_ready'), 'ready', '#/nodes', 'nodes-ready'),
      card('Nodes down', m('gaffer_nodes_down'), 'down', '#/nodes', 'nodes-down'));
    fill(chartBox, chart(tl));
    fill(recent, page.jobs.length
      ? h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'State'), h('th', {}, 'Tasks'))),
        h('tbody', {}, page.jobs.map((j) => h('tr', {},
          h('td', { class: 'name-cell' }, h('a', { href: '#/jobs/' + j.id }, j.name), h('div', { class: 'muted small mono' }, j.id)),
          h('td', {}, h('span', { class: 'state-box' }, badge(j.state), j.held ? heldBadge() : null)),
          h('td', { class: 'narrow' }, progress(j.tasks, j.state))))))
      : h('p', { class: 'empty' }, 'No jobs yet. ', h('a', { href: '#/submit' }, 'Submit one.')));
  }
  await load();
  const refresh = throttle(() => load().catch(() => {}), 1500);
  ctx.onEvent(refresh);
  ctx.every(10000, refresh);
}
