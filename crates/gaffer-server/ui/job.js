// Job detail: summary and actions, tasks with their attempts, a live log viewer, output files,
// the spec, and the job's event timeline (all live).

import { api, download, followEvents } from './api.js';
import { h, fill, badge, heldBadge, withCode, quoteWord, progress, fmtBytes, displaySpec, fmtDuration, fmtTime, timeAgo, throttle, confirmDialog, toast, keepFocus, FINAL_JOB } from './util.js';

const TASKS_PAGE = 100;
const LOG_WINDOW = 256 * 1024; // characters shown at first
const LOG_MORE = 1024 * 1024; // characters added by "load earlier"
const LOG_KEEP = 64 * 1024 * 1024; // characters kept in memory at most

/** A task's log: streams `/logs?follow=true`, keeps the text, shows its tail. */
class LogViewer {
  constructor(jobId, signal) {
    this.jobId = jobId;
    this.pageSignal = signal;
    this.task = 0;
    this.attempt = null; // null: the latest
    this.shown = 0; // the newest attempt known when the log was opened
    this.stream = 'stdout';
    this.abort = null;
    this.text = '';
    this.dropped = 0;
    this.window = LOG_WINDOW;
    this.pre = h('pre', { class: 'log', id: 'log', tabindex: '0', 'aria-label': 'Task log', 'aria-live': 'off' });
    this.more = h('button', { class: 'btn small log-more', type: 'button', id: 'log-earlier', hidden: true }, 'Load earlier');
    this.status = h('span', { class: 'log-status', id: 'log-status', role: 'status' });
    this.more.addEventListener('click', () => {
      this.window += LOG_MORE;
      const el = this.pre;
      const before = el.scrollHeight - el.scrollTop;
      this.draw();
      el.scrollTop = el.scrollHeight - before;
    });
    this.frame = 0;
    signal.addEventListener('abort', () => this.stop());
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  draw() {
    this.frame = 0;
    const el = this.pre;
    const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    const hidden = Math.max(0, this.text.length - this.window);
    el.textContent = hidden ? this.text.slice(hidden) : this.text;
    this.more.hidden = !(hidden || this.dropped);
    this.more.disabled = !hidden;
    this.more.textContent = hidden
      ? `Load earlier (${fmtBytes(hidden)} hidden)`
      : `Earliest ${fmtBytes(this.dropped)} no longer kept in this tab`;
    if (atEnd) el.scrollTop = el.scrollHeight;
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  async open() {
    this.stop();
    const abort = new AbortController();
    this.abort = abort;
    this.pageSignal.addEventListener('abort', () => abort.abort());
    this.text = '';
    this.dropped = 0;
    this.window = LOG_WINDOW;
    this.pre.textContent = '';
    this.pre.dataset.done = 'false';
    this.more.hidden = true;
    const q = new URLSearchParams({ task: String(this.task), stream: this.stream, follow: 'true' });
    if (this.attempt) q.set('attempt', String(this.attempt));
    this.status.textContent = 'Connecting…';
    try {
      const r = await api(`/v1/jobs/${this.jobId}/logs?${q}`, { raw: true, signal: abort.signal });
      this.status.textContent = 'Following…';
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.text += dec.decode(value, { stream: true });
        if (this.text.length > LOG_KEEP) {
          const cut = this.text.length - LOG_KEEP / 2;
          this.dropped += cut;
          this.text = this.text.slice(cut);
        }
        this.schedule();
      }
      this.text += dec.decode();
      this.draw();
      this.pre.dataset.done = 'true';
      this.status.textContent = `End of log · ${fmtBytes(this.text.length + this.dropped)}`;
      if (!this.text.length) this.pre.textContent = '(empty)';
    } catch (e) {
      if (e.name === 'AbortError') return;
      this.draw();
      this.status.textContent = 'Log unavailable: ' + e.message;
    }
  }
}

/** Where an event happened, as `gaffer events` writes it: `j-000010`, `j-000010.0` (a task)
 * or `j-000010.0#1` (an attempt). */
function eventWhere(ev) {
  if (ev.task === undefined || ev.task === null) return ev.job;
  return ev.attempt ? `${ev.job}.${ev.task}#${ev.attempt}` : `${ev.job}.${ev.task}`;
}

/** An attempt's address and port mappings, e.g. `10.88.0.2 18080→80/tcp`. */
function address(a) {
  const ports = (a.ports || []).map((p) => `${p.host}→${p.container}/${p.protocol || 'tcp'}`);
  return [a.ip, ...ports].filter(Boolean).join(' ');
}

/** The attempts table's columns: [label, kind]; Address only when some attempt has one. */
function columns(net) {
  return [['Task'], ['Attempt', 'num'], ['State'], ['Node'], net ? ['Address'] : null, ['Started'], ['Ended'], ['Exit'], ['Reason'], ['Max memory', 'num'], ['CPU time', 'num'], ['Log', 'sr']].filter(Boolean);
}

// A replica's hostname, as the server makes it (gaffer_api::cluster::hostname).
function replicaName(job, index) {
  const suffix = `-${index}`;
  const stem = [...(job.name || '')].map((c) => /[A-Za-z0-9-]/.test(c) ? c.toLowerCase() : '-').slice(0, 63 - suffix.length).join('');
  return stem + suffix;
}

function attemptRows(t, viewer, onLogs, net, name) {
  const taskCell = () => h('td', { class: 'mono' }, String(t.index), name ? h('div', { class: 'muted small replica-name' }, name(t.index)) : null);
  const logBtn = (a) => h('button', {
    class: 'btn small', type: 'button', 'aria-label': `Show log of task ${t.index}${a ? ' attempt ' + a.attempt : ''}`,
    onclick: () => onLogs(t.index, a ? a.attempt : null),
  }, 'Log');
  if (!t.attempts.length) {
    return [h('tr', { 'data-task': t.index },
      taskCell(), h('td', {}, '—'), h('td', {}, badge(t.state)),
      h('td', { colspan: net ? 8 : 7, class: 'muted' }, t.not_before ? `retry after ${fmtTime(t.not_before)}` : 'not started'),
      h('td', {}, ''))];
  }
  return t.attempts.map((a, i) => {
    const dur = a.started_at ? (a.ended_at || Date.now()) - a.started_at : null;
    const exit = a.signal ? `signal ${a.signal}` : a.exit_code !== undefined && a.exit_code !== null ? String(a.exit_code) : '—';
    return h('tr', { 'data-task': t.index, 'data-attempt': a.attempt, class: i ? 'more-attempt' : '' },
      i === 0 ? taskCell() : h('td', { class: 'mono' }, ''),
      h('td', { class: 'num' }, String(a.attempt)),
      h('td', {}, badge(a.state), a.ready === true ? h('span', { class: 'chip ready', title: 'its readiness check passes: the service port sends connections here' }, 'ready')
        : a.ready === false ? h('span', { class: 'chip muted not-ready' }, 'not ready') : null),
      h('td', { class: 'mono small' }, a.node || '—'),
      net ? h('td', { class: 'mono small addr' }, address(a) || '—') : null,
      h('td', { class: 'nowrap small' }, fmtTime(a.started_at)),
      h('td', { class: 'nowrap small' }, a.ended_at ? fmtTime(a.ended_at) : a.started_at ? 'running' : '—', dur !== null ? h('div', { class: 'muted' }, fmtDuration(dur)) : null),
      h('td', { class: 'mono' }, exit),
      h('td', { class: 'small' }, a.message || ''),
      h('td', { class: 'nowrap small num' }, fmtBytes(a.max_rss_bytes)),
      h('td', { class: 'nowrap small num' }, a.cpu_secs !== undefined && a.cpu_secs !== null ? a.cpu_secs.toFixed(2) + 's' : '—'),
      h('td', {}, logBtn(a)));
  });
}

/** What the job waits for before it starts: its dependencies by kind, and `singleton`. */
function dependencies(s, name) {
  const kinds = [['ok', 'after success of', s.depends_on], ['any', 'after the end of', s.after_any], ['not_ok', 'after failure of', s.after_not_ok]];
  const parts = kinds.filter(([, , ids]) => ids?.length).map(([kind, label, ids]) => h('span', { class: 'dep', 'data-kind': kind }, label, ' ',
    ids.map((d, i) => [i ? ', ' : '', h('a', { href: '#/jobs/' + d, class: 'mono' }, d)])));
  if (s.singleton) {
    parts.push(h('span', { class: 'dep', 'data-kind': 'singleton' }, 'singleton: after every earlier job named ', h('code', {}, name), ' has ended'));
  }
  return parts.length ? parts.map((p, i) => [i ? ' · ' : '', p]) : null;
}

/** Where a task's logs also go on its node (`stdout_file`, `stderr_file`). */
function logFiles(s) {
  if (!s.stdout_file && !s.stderr_file) return null;
  const path = (p) => h('code', {}, p);
  const files = s.stdout_file && s.stderr_file
    ? ['stdout → ', path(s.stdout_file), ' · stderr → ', path(s.stderr_file)]
    : s.stdout_file ? ['stdout and stderr → ', path(s.stdout_file)] : ['stderr → ', path(s.stderr_file)];
  return [files, h('div', { class: 'muted small' }, 'On the node that runs each task (%j job number, %a array id, %x name), besides the log below.')];
}

/** Copies `text` to the clipboard; true when it worked. */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h('textarea', { style: { position: 'fixed', top: '0', left: '0', opacity: '0' }, 'aria-hidden': 'true' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

/** The batch script stored with a job: its name and arguments, its body, copy and download. */
function scriptPanel(s) {
  const sc = s.script;
  // A data: URL (the page's CSP allows no fetch of blob: URLs, and nothing to revoke).
  const url = 'data:text/plain;charset=utf-8,' + encodeURIComponent(sc.body);
  const lines = sc.body.split('\n').length - (sc.body.endsWith('\n') ? 1 : 0);
  const args = (s.command || []).map(quoteWord).join(' ');
  const copy = h('button', { class: 'btn small', type: 'button', id: 'script-copy' }, 'Copy');
  copy.addEventListener('click', async () => {
    const ok = await copyText(sc.body);
    copy.dataset.copied = String(ok);
    toast(ok ? `Copied ${sc.name}` : 'Cannot copy here: select the script and copy it, or download it', ok ? '' : 'error');
  });
  return h('section', { class: 'panel', id: 'job-script', 'aria-labelledby': 'script-h' },
    h('div', { class: 'panel-head' },
      h('h2', { id: 'script-h' }, 'Script ', h('span', { class: 'mono', id: 'script-name' }, sc.name)),
      h('div', { class: 'actions' }, copy,
        h('a', { class: 'btn small', id: 'script-download', href: url, download: sc.name }, 'Download'))),
    h('p', { class: 'muted small', id: 'script-info' }, `${lines} line${lines === 1 ? '' : 's'} · ${fmtBytes(new Blob([sc.body]).size)} · stored with the job; each task runs `,
      h('code', {}, sc.name + (args ? ' ' + args : '')), args ? '' : ' (no arguments)'),
    h('details', { id: 'script-details', open: lines <= 80 },
      h('summary', {}, 'Show the script'),
      h('pre', { class: 'spec script', id: 'script-body', tabindex: '0', 'aria-label': 'Script ' + sc.name }, sc.body)));
}

export async function render(main, ctx) {
  const id = ctx.id;
  let job = await api(`/v1/jobs/${encodeURIComponent(id)}?tasks_limit=${TASKS_PAGE}`, { signal: ctx.signal });
  let tasksFrom = 0;

  const title = h('h1', { id: 'job-title' });
  const stateBox = h('span', { id: 'job-state', class: 'state-box' });
  const actions = h('div', { class: 'actions' });
  const actionError = h('div', { id: 'job-action-error', role: 'alert' });
  const reason = h('div');
  const summary = h('dl', { class: 'kv' });
  const tasksHead = h('tr');
  const tasksBody = h('tbody', { id: 'tasks-body' });
  const tasksPager = h('div', { class: 'pager' });
  const outputs = h('div', { id: 'outputs' });
  const events = h('ol', { class: 'timeline', id: 'events', 'aria-label': 'Events' });
  const viewer = new LogViewer(job.id, ctx.signal);

  const taskInput = h('input', { type: 'number', id: 'log-task', min: 0, max: Math.max(0, job.tasks.total - 1), value: 0, 'aria-label': 'Task index' });
  const attemptSel = h('select', { id: 'log-attempt', 'aria-label': 'Attempt' }, h('option', { value: '' }, 'latest'));
  const streamSeg = h('div', { class: 'seg', role: 'radiogroup', 'aria-label': 'Stream' },
    ['stdout', 'stderr'].map((s) => h('label', {}, h('input', { type: 'radio', name: 'log-stream', value: s, id: 'stream-' + s, checked: s === 'stdout' }), h('span', {}, s))));

  function fillAttempts() {
    const t = job.task_list.find((x) => x.index === viewer.task);
    const keep = attemptSel.value;
    fill(attemptSel, h('option', { value: '' }, 'latest'), (t ? t.attempts : []).map((a) => h('option', { value: a.attempt }, `attempt ${a.attempt}`)));
    attemptSel.value = [...attemptSel.options].some((o) => o.value === keep) ? keep : '';
  }

  function openLog(task, attempt) {
    const t = job.task_list.find((x) => x.index === task);
    viewer.task = task;
    viewer.attempt = attempt;
    viewer.shown = t && t.attempts.length ? t.attempts[t.attempts.length - 1].attempt : 0;
    taskInput.value = String(task);
    fillAttempts();
    attemptSel.value = attempt ? String(attempt) : '';
    viewer.open();
  }

  taskInput.addEventListener('change', () => {
    const n = Math.max(0, Math.min(job.tasks.total - 1, Number(taskInput.value) || 0));
    openLog(n, null);
  });
  attemptSel.addEventListener('change', () => openLog(viewer.task, attemptSel.value ? Number(attemptSel.value) : null));
  streamSeg.addEventListener('change', (e) => {
    viewer.stream = e.target.value;
    viewer.open();
  });

  async function act(kind) {
    try {
      if (kind === 'kill') {
        if (!(await confirmDialog(`Kill ${job.id}?`, 'Pending tasks are cancelled; running ones get SIGTERM, then SIGKILL after the grace period.', 'Kill job'))) return;
        const r = await api(`/v1/jobs/${job.id}/kill`, { method: 'POST' });
        toast(r && r.state === 'killing' ? `Killing ${job.id}: its running tasks are stopping` : `${job.id} is ${String(r?.state || 'killed').replace(/_/g, ' ')}`);
      } else if (kind === 'hold' || kind === 'release') {
        const r = await api(`/v1/jobs/${job.id}/${kind}`, { method: 'POST' });
        job = { ...job, held: r.held, state: r.state || job.state };
        drawHead();
        toast(r.held ? `${job.id} is held: no task of it starts until it is released` : `${job.id} released: its tasks may start`);
        // The button pressed is gone: keep the keyboard on the one that undoes it.
        const other = actions.querySelector(kind === 'hold' ? '#btn-release' : '#btn-hold');
        if (!other.hidden) other.focus();
      } else if (kind === 'retry') {
        const r = await api(`/v1/jobs/${job.id}/retry`, { method: 'POST' });
        toast(`${r.retried} task(s) re-queued`);
      } else if (kind === 'delete') {
        const active = !FINAL_JOB.includes(job.state);
        if (!(await confirmDialog(`Delete ${job.id}?`, active ? 'The job is still active: it is killed first. Its history, logs and outputs are deleted.' : 'Its history, logs and outputs are deleted.', 'Delete'))) return;
        await api(`/v1/jobs/${job.id}${active ? '?force=true' : ''}`, { method: 'DELETE' });
        toast(`Deleted ${job.id}`);
        location.hash = '#/jobs';
        return;
      }
      fill(actionError);
    } catch (e) {
      const what = { kill: 'Kill', retry: 'Retry', delete: 'Delete', hold: 'Hold', release: 'Release' }[kind];
      fill(actionError, h('div', { class: 'callout error' }, h('strong', {}, `${what} failed: `), e.message));
      toast(e.message, 'error');
    }
    refresh();
  }

  function drawHead() {
    title.textContent = job.name;
    const final = FINAL_JOB.includes(job.state);
    fill(stateBox, badge(job.state), job.held ? heldBadge() : null,
      job.kill_requested && !final ? h('span', { class: 'muted small' }, 'kill requested: its tasks are stopping') : null);
    const retryable = job.tasks.failed > 0 || job.task_list.some((t) => ['failed', 'timed_out', 'oom_killed', 'lost'].includes(t.state));
    // The buttons are made once and updated in place, so keyboard focus stays on them.
    if (!actions.firstChild) {
      fill(actions,
        h('button', { class: 'btn', type: 'button', id: 'btn-hold', onclick: () => act('hold'), title: 'No task that has not started starts until it is released (running ones go on)' }, 'Hold'),
        h('button', { class: 'btn', type: 'button', id: 'btn-release', onclick: () => act('release'), title: 'Let its tasks start' }, 'Release'),
        h('button', { class: 'btn danger', type: 'button', id: 'btn-kill', onclick: () => act('kill') }, 'Kill'),
        h('button', { class: 'btn', type: 'button', id: 'btn-retry', onclick: () => act('retry') }, 'Retry failed tasks'),
        h('a', { class: 'btn', id: 'btn-resubmit', href: '#/submit?from=' + job.id }, 'Resubmit'),
        h('button', { class: 'btn danger', type: 'button', id: 'btn-delete', onclick: () => act('delete') }, 'Delete'));
    }
    actions.querySelector('#btn-kill').disabled = final;
    actions.querySelector('#btn-retry').disabled = !retryable;
    actions.querySelector('#btn-hold').hidden = final || !!job.held;
    actions.querySelector('#btn-release').hidden = final || !job.held;
    fill(reason, job.pending_reason ? h('div', { class: 'callout warn', role: 'status', id: 'job-reason' }, 'Waiting: ', withCode(job.pending_reason))
      : job.held && !final ? h('div', { class: 'callout warn', role: 'status', id: 'job-reason' }, 'Held: its running tasks go on; no other task starts until it is released.')
        : null);
    const s = job.spec;
    const args = (s.command || []).map(quoteWord).join(' ');
    const run = s.script ? ['script ', h('code', {}, s.script.name), args ? [' ', h('code', {}, args)] : ' (no arguments)']
      : s.shell ? ['sh -c ', h('code', {}, s.shell)] : h('code', {}, (s.command || []).join(' '));
    const deps = dependencies(s, job.name);
    const files = logFiles(s);
    const slurmLast = s.slurm ? (s.slurm.array_first || 0) + (job.tasks.total - 1) * (s.slurm.array_step || 1) : 0;
    const end = job.finished_at || (final ? null : Date.now());
    fill(summary,
      h('dt', {}, 'ID'), h('dd', { class: 'mono' }, job.id),
      h('dt', {}, 'Tasks'), h('dd', { id: 'job-progress' }, progress(job.tasks, job.state)),
      s.max_running ? [h('dt', {}, 'At once'), h('dd', { id: 'job-max-running' }, `at most ${s.max_running} task${s.max_running === 1 ? '' : 's'} at once`)] : null,
      h('dt', {}, 'Runs'), h('dd', { id: 'job-runs' }, run),
      deps ? [h('dt', {}, 'Waits for'), h('dd', { id: 'job-deps' }, deps)] : null,
      h('dt', {}, 'Submitted'), h('dd', {}, fmtTime(job.created_at), ' (', timeAgo(job.created_at), ')', s.hold ? ' · on hold' : null),
      s.submit_dir ? [h('dt', {}, 'Submitted from'), h('dd', { id: 'job-submit-dir' }, h('code', {}, s.submit_dir))] : null,
      files ? [h('dt', {}, 'Log files'), h('dd', { id: 'job-log-files' }, files)] : null,
      s.slurm ? [h('dt', {}, 'Slurm'), h('dd', { id: 'job-slurm' }, 'SLURM_ARRAY_TASK_ID ', h('span', { class: 'mono' },
        job.tasks.total > 1 ? `${s.slurm.array_first || 0}–${slurmLast}${(s.slurm.array_step || 1) > 1 ? ' step ' + s.slurm.array_step : ''}` : String(s.slurm.array_first || 0)))] : null,
      h('dt', {}, 'Finished'), h('dd', {}, job.finished_at ? fmtTime(job.finished_at) : '—'),
      h('dt', {}, 'Duration'), h('dd', {}, end ? fmtDuration(end - job.created_at) : '—'),
      h('dt', {}, 'Resources'), h('dd', { id: 'job-resources' }, `${s.resources?.cpus ?? 1} CPU`, s.resources?.memory ? ` · ${fmtBytes(s.resources.memory)} memory` : '',
        s.timeout ? ` · timeout ${s.timeout}` : '', s.retries ? ` · ${s.retries} retries` : ''),
      s.image ? [h('dt', {}, 'Container'), h('dd', { id: 'job-container' }, h('span', { class: 'mono' }, s.image),
        s.user ? [' · user ', h('span', { class: 'mono' }, s.user)] : null,
        s.resources?.pids ? ` · at most ${s.resources.pids} processes` : null,
        s.kill_grace ? ` · kill grace ${s.kill_grace}` : null,
        s.mounts?.length ? [' · mounts ', h('span', { class: 'mono' }, s.mounts.map((m) => `${m.host}:${m.container}${m.read_only ? ':ro' : ''}`).join(', '))] : null)] : null,
      s.network || s.ports?.length ? [h('dt', {}, 'Network'), h('dd', { id: 'job-network' }, s.network || 'bridge',
        s.ports?.length ? [' · ports ', h('span', { class: 'mono' }, s.ports.map((p) => `${p.host ? p.host + ':' : ''}${p.container}/${p.protocol || 'tcp'}`).join(', '))] : null)] : null,
      s.replicas ? [h('dt', {}, 'Replicas'), h('dd', { id: 'job-replicas' }, `${s.replicas}, placed and started together, restart ${s.restart || 'group'}: `,
        h('span', { class: 'mono' }, `${replicaName(job, 0)} … ${replicaName(job, s.replicas - 1)}`))] : null,
      s.shared_dir ? [h('dt', {}, 'Shared'), h('dd', { id: 'job-shared' }, h('code', {}, s.shared_dir), ': one directory for every replica (on one node unless the agents share --storage-dir)')] : null,
      s.service ? [h('dt', {}, 'Service'), h('dd', { id: 'job-service' }, `every node's port ${s.service.host} → port ${s.service.port} of a ready replica`,
        s.ready_cmd ? [' (ready: ', h('code', {}, s.ready_cmd), ')'] : null)] : null);
  }

  function drawTasks() {
    const net = job.task_list.some((t) => t.attempts.some((a) => a.ip || a.ports?.length));
    if (tasksHead.dataset.net !== String(net)) {
      tasksHead.dataset.net = String(net);
      fill(tasksHead, columns(net).map(([c, k]) =>
        h('th', { scope: 'col', class: k === 'num' ? 'num' : '' }, k === 'sr' ? h('span', { class: 'sr-only' }, c) : c)));
    }
    keepFocus(tasksBody, () => fill(tasksBody, job.task_list.flatMap((t) => attemptRows(t, viewer, openLog, net, job.spec.replicas ? (i) => replicaName(job, i) : null))));
    const total = job.tasks.total;
    if (total > TASKS_PAGE) {
      const prev = h('button', { class: 'btn small', type: 'button', disabled: tasksFrom === 0 }, '← Previous');
      const nxt = h('button', { class: 'btn small', type: 'button', disabled: tasksFrom + TASKS_PAGE >= total }, 'Next →');
      prev.onclick = () => { tasksFrom = Math.max(0, tasksFrom - TASKS_PAGE); refresh(); };
      nxt.onclick = () => { tasksFrom += TASKS_PAGE; refresh(); };
      fill(tasksPager, h('span', { class: 'muted small' }, `tasks ${tasksFrom}–${Math.min(total, tasksFrom + TASKS_PAGE) - 1} of ${total}`), prev, nxt);
    } else {
      tasksPager.hidden = true;
    }
    fillAttempts();
  }

  let outputsShown = '';
  async function drawOutputs() {
    const files = await api(`/v1/jobs/${job.id}/outputs`, { signal: ctx.signal });
    const key = JSON.stringify(files);
    if (key === outputsShown) return;
    outputsShown = key;
    fill(outputs, files.length
      ? h('ul', { class: 'files' }, files.map((f) => {
        const url = `/v1/jobs/${job.id}/outputs/${f.task}/${f.path.split('/').map(encodeURIComponent).join('/')}?attempt=${f.attempt}`;
        const name = f.path.split('/').pop();
        return h('li', {}, h('a', {
          href: url, download: name, class: 'mono',
          onclick: (e) => { e.preventDefault(); download(url, name).catch((err) => toast(err.message, 'error')); },
        }, f.path), h('span', { class: 'muted small' }, ` · task ${f.task} · ${fmtBytes(f.size)}`));
      }))
      : h('p', { class: 'muted' }, job.spec.outputs?.length ? 'No output files (yet).' : 'This job keeps no output files.'));
  }

  async function refresh() {
    try {
      job = await api(`/v1/jobs/${job.id}?tasks_from=${tasksFrom}&tasks_limit=${TASKS_PAGE}`, { signal: ctx.signal });
    } catch (e) {
      if (e.status === 404) {
        fill(main, h('div', { class: 'callout' }, `Job ${id} no longer exists. `, h('a', { href: '#/jobs' }, 'Back to jobs')));
      }
      return;
    }
    drawHead();
    drawTasks();
    if (job.spec.outputs?.length) drawOutputs().catch(() => {});
  }

  // Arriving from the submit form: say so once (a reload does not repeat it).
  const note = ctx.params.has('submitted')
    ? h('div', { class: 'callout ok', role: 'status', id: 'submitted-note' }, 'Submitted ', h('a', { href: '#/jobs/' + job.id, class: 'mono' }, job.id), '. ',
      h('a', { href: '#/jobs?new=' + job.id }, 'Show it in the job list'), ' · ', h('a', { href: '#/submit' }, 'Submit another'))
    : null;
  if (note) history.replaceState(null, '', '#/jobs/' + encodeURIComponent(job.id));

  fill(main,
    note,
    h('div', { class: 'page-head' },
      h('div', {}, h('div', { class: 'sub' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('span', { class: 'mono' }, job.id)),
        h('div', { style: { display: 'flex', gap: '.75rem', alignItems: 'center', flexWrap: 'wrap' } }, title, stateBox)),
      actions),
    actionError,
    reason,
    h('div', { class: 'grid2' },
      h('section', { class: 'panel', 'aria-labelledby': 'sum-h' }, h('h2', { id: 'sum-h' }, 'Summary'), summary),
      h('section', { class: 'panel', 'aria-labelledby': 'out-h' }, h('h2', { id: 'out-h' }, 'Output files'), outputs)),
    h('div', { style: { height: '1.25rem' } }),
    job.spec.script ? scriptPanel(job.spec) : null,
    h('section', { class: 'panel flush', 'aria-labelledby': 'tasks-h' }, h('h2', { id: 'tasks-h' }, 'Tasks and attempts'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'tasks-table' },
        h('thead', {}, tasksHead),
        tasksBody)),
      tasksPager),
    h('section', { class: 'panel', 'aria-labelledby': 'log-h' }, h('h2', { id: 'log-h' }, 'Log'),
      h('div', { class: 'log-tools' },
        h('label', { class: 'check', for: 'log-task' }, 'Task'), taskInput,
        attemptSel, streamSeg, viewer.status),
      viewer.more, viewer.pre),
    h('div', { class: 'grid2' },
      h('section', { class: 'panel', 'aria-labelledby': 'ev-h' }, h('h2', { id: 'ev-h' }, 'Events'), events),
      h('section', { class: 'panel', 'aria-labelledby': 'spec-h' }, h('h2', { id: 'spec-h' }, 'Spec'),
        h('pre', { class: 'spec', id: 'spec' }, JSON.stringify(displaySpec(job.spec), null, 2)))));

  drawHead();
  drawTasks();
  drawOutputs().catch(() => {});
  openLog(0, null);

  const throttled = throttle(refresh, 400);
  followEvents({
    after: 0,
    job: job.id,
    signal: ctx.signal,
    onEvent: (ev) => {
      const where = eventWhere(ev);
      events.append(h('li', { 'data-to': ev.to, 'data-where': where },
        h('time', { datetime: new Date(ev.time).toISOString(), title: new Date(ev.time).toLocaleString() }, fmtTime(ev.time)),
        h('div', { class: 'what' }, h('span', { class: 'muted small mono where' }, where), ev.from ? [badge(ev.from), '→'] : null, badge(ev.to),
          ev.detail ? h('span', { class: 'small' }, ev.detail) : null)));
      events.scrollTop = events.scrollHeight;
      // A newer attempt of the task whose latest log is shown: follow that one.
      if (ev.task === viewer.task && viewer.attempt === null && ev.attempt && ev.attempt > viewer.shown) {
        viewer.shown = ev.attempt;
        viewer.open();
      }
      throttled();
    },
  });
  ctx.every(5000, () => {
    if (!FINAL_JOB.includes(job.state)) throttled();
  });
}
