// Nodes: state, labels, images, CPU and memory use, running tasks, heartbeat age; drain and
// enable. Below them, the cluster's images (the server's catalog and node-only ones).

import { api } from './api.js';
import { h, fill, badge, bar, fmtBytes, fmtDuration, confirmDialog, toast, keepFocus } from './util.js';

/** A bar of what gaffer reserved of what the node offers; `extra` elements follow the figures. */
function meter(used, total, fmt, ...extra) {
  const f = total > 0 ? used / total : 0;
  return h('div', { class: 'meter' },
    bar([[f, f > 0.9 ? 's-high' : 's-use']], `${fmt(used)} of ${fmt(total)} allocated`),
    h('div', { class: 'txt' }, `${fmt(used)} / ${fmt(total)}`, extra.filter(Boolean).map((e) => [' · ', e])));
}

/** Memory: reserved of offered; "free" is what gaffer can still place there (offered minus
 * reserved: `memory_available`, as `gaffer nodes` shows it), the host's own free memory (what
 * the agent measured) is shown apart. */
function memoryMeter(n) {
  const free = n.memory_available ?? Math.max(0, n.memory_total - n.memory_allocated);
  const m = meter(n.memory_allocated, n.memory_total, fmtBytes,
    h('span', { class: 'mem-free', title: 'what the node offers minus what its tasks reserved' }, `${fmtBytes(free)} free`));
  m.append(h('div', { class: 'txt mem-host-free', title: 'free memory of the host, as its agent last measured it' }, `host free ${fmtBytes(n.memory_free)}`));
  return m;
}

const cpu = (v) => (Math.round(v * 100) / 100).toString();

export async function render(main, ctx) {
  const body = h('tbody', { id: 'nodes-body' });
  const imagesBody = h('tbody', { id: 'images-body' });
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Nodes'), h('div', { class: 'sub' }, 'Worker nodes and what they hold; refreshed every 2 seconds.'))),
    h('section', { class: 'panel flush', 'aria-label': 'Nodes' },
      h('div', { class: 'table-wrap' },
        h('table', { id: 'nodes-table' },
          h('thead', {}, h('tr', {},
            h('th', { scope: 'col' }, 'Node'), h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col', class: 'hide-sm' }, 'Labels'),
            h('th', { scope: 'col', class: 'hide-sm' }, 'Images'),
            h('th', { scope: 'col' }, 'CPU'), h('th', { scope: 'col' }, 'Memory'), h('th', { scope: 'col', class: 'num' }, 'Tasks'),
            h('th', { scope: 'col', class: 'hide-sm' }, 'Heartbeat'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
          body))),
    h('section', { class: 'panel flush', 'aria-labelledby': 'images-h' },
      h('h2', { id: 'images-h' }, 'Images'),
      h('div', { class: 'table-wrap' },
        h('table', { id: 'images-table' },
          h('thead', {}, h('tr', {},
            h('th', { scope: 'col' }, 'Image'), h('th', { scope: 'col', class: 'num' }, 'Size'), h('th', { scope: 'col', class: 'hide-sm' }, 'Digest'),
            h('th', { scope: 'col', class: 'hide-sm' }, 'Format'), h('th', { scope: 'col' }, 'Held by'))),
          imagesBody))));

  async function act(n, what) {
    let path;
    if (what === 'drain') {
      const mig = h('input', { type: 'checkbox', id: 'drain-migrate' });
      const ok = await confirmDialog(`Drain ${n.name}?`, 'No new tasks will be placed on this node. Running tasks finish unless you move them.', 'Drain',
        h('label', { class: 'check', for: 'drain-migrate' }, mig, 'Also move its running tasks elsewhere (they are killed and re-queued)'));
      if (!ok) return;
      path = `/v1/nodes/${encodeURIComponent(n.name)}/drain?migrate=${mig.checked}`;
    } else {
      path = `/v1/nodes/${encodeURIComponent(n.name)}/enable`;
    }
    try {
      await api(path, { method: 'POST' });
      toast(`${n.name}: ${what === 'drain' ? 'draining' : 'enabled'}`);
    } catch (e) {
      toast(e.message, 'error');
    }
    load().catch(() => {});
  }

  async function load() {
    const nodes = await api('/v1/nodes', { signal: ctx.signal });
    if (!nodes.length) {
      fill(body, h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No node has joined yet. Start one with ', h('code', {}, 'gaffer agent --server URL'), '.')));
      return;
    }
    keepFocus(body, () => fill(body, nodes.map((n) => h('tr', { 'data-node': n.name, 'data-state': n.state },
      h('td', {}, h('strong', {}, n.name), n.address ? h('div', { class: 'muted small mono' }, n.address) : null,
        n.subnet ? h('div', { class: 'muted small mono', title: 'subnet of the bridge network' }, 'containers ' + n.subnet) : null),
      h('td', {}, badge(n.state)),
      h('td', { class: 'hide-sm' }, Object.keys(n.labels || {}).length
        ? Object.entries(n.labels).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)) : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'hide-sm' }, (n.images || []).length
        ? n.images.map((i) => h('span', { class: 'chip mono', title: (n.image_digests || {})[i] || 'imported or pulled on the node' }, i)) : h('span', { class: 'muted' }, '—')),
      h('td', {}, meter(n.cpus_allocated, n.cpus_total, cpu)),
      h('td', {}, memoryMeter(n)),
      h('td', { class: 'num' }, String(n.running_tasks)),
      h('td', { class: 'hide-sm nowrap' + (n.state === 'down' ? ' muted' : '') }, (n.heartbeat_age_ms < 1000 ? n.heartbeat_age_ms + ' ms' : fmtDuration(n.heartbeat_age_ms)) + ' ago'),
      h('td', { class: 'nowrap' }, n.state === 'ready'
        ? h('button', { class: 'btn small', type: 'button', 'aria-label': `Drain ${n.name}`, onclick: () => act(n, 'drain') }, 'Drain')
        : h('button', { class: 'btn small', type: 'button', 'aria-label': `Enable ${n.name}`, onclick: () => act(n, 'enable') }, 'Enable'))))));
  }
  async function loadImages() {
    const images = await api('/v1/images', { signal: ctx.signal });
    if (!images.length) {
      fill(imagesBody, h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No images yet. Add one with ', h('code', {}, 'gaffer image import NAME FILE'), '.')));
      return;
    }
    const held = (i) => [
      ...i.nodes.map((n) => h('span', { class: 'chip' }, n)),
      ...(i.other_nodes || []).map((n) => h('span', { class: 'chip muted', title: 'holds another image of this name; fetches this one when a task needs it' }, n + ' (other)')),
    ];
    keepFocus(imagesBody, () => fill(imagesBody, images.map((i) => h('tr', { 'data-image': i.name },
      h('td', {}, h('strong', { class: 'mono' }, i.name), i.digest ? null : h('div', { class: 'muted small' }, 'node only (not in the catalog)')),
      h('td', { class: 'num nowrap' }, i.size != null ? fmtBytes(i.size) : '—'),
      h('td', { class: 'hide-sm mono small', title: i.digest || '' }, i.digest ? i.digest.slice(0, 19) : '—'),
      h('td', { class: 'hide-sm' }, i.format || '—'),
      h('td', {}, held(i).length ? held(i) : h('span', { class: 'muted' }, 'no node yet (fetched when a task needs it)'))))));
  }
  await Promise.all([load(), loadImages()]);
  ctx.every(2000, () => {
    load().catch(() => {});
    loadImages().catch(() => {});
  });
}
