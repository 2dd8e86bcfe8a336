// Submit: a form with every field of a job spec, and a tab to paste JSON or TOML (one spec or a
// list). Server field errors are shown next to their field; the form keeps what was typed.

import { api, ApiError } from './api.js';
import { h, fill, fmtBytes, displaySpec, quoteWord } from './util.js';

// Form state survives leaving the page (kept while the tab lives).
let draft = null;

// Text inputs: id, label, hint.
const FIELDS = [
  ['name', 'Name', 'Shown in listings; default: the program name.'],
  ['workdir', 'Working directory', 'Absolute; default: a fresh directory per attempt.'],
  ['cpus', 'CPUs', 'Reserved per task, e.g. 0.5 (default 1).'],
  ['memory', 'Memory', 'Reserved per task, e.g. 256M, 2G.'],
  ['timeout', 'Timeout', 'Per attempt, e.g. 30s, 5m, 2h.'],
  ['kill_grace', 'Kill grace', 'SIGTERM → SIGKILL delay when killed or timed out, e.g. 30s (default 5s).'],
  ['array', 'Array size', 'Number of tasks (GAFFER_TASK_INDEX); N%K also sets Max running to K.'],
  ['max_running', 'Max running', 'Arrays: at most this many tasks at once (default: no limit).'],
  ['replicas', 'Replicas', 'A cluster job: N replicas placed and started together, named NAME-0 …; not with Array size.'],
  ['retries', 'Retries', 'Extra attempts after a failure.'],
  ['retry_backoff', 'Retry back-off', 'First delay, doubling (default 1s).'],
  ['priority', 'Priority', 'Higher runs first (default 0).'],
];
const CONTAINER_FIELDS = [
  ['image', 'Image', 'Container image (see Nodes → Images); empty runs a host process.'],
  ['user', 'User', 'Run as UID[:GID], e.g. 1000:1000 (default: the image\'s user, else 65534).'],
  ['pids', 'Process limit', 'At most this many processes in the container.'],
];

// Spec fields the form shows; any other field of a loaded spec is kept as it was (and listed).
const FORM_KEYS = new Set(['name', 'image', 'workdir', 'timeout', 'kill_grace', 'retry_backoff', 'retries', 'array', 'replicas',
  'priority', 'resources', 'strategy', 'depends_on', 'network', 'ports', 'env', 'constraints', 'outputs', 'shell', 'command',
  'user', 'mounts', 'max_running', 'after_any', 'after_not_ok', 'singleton', 'hold', 'stdout_file', 'stderr_file']);
// Text fields copied as they are between the form and the spec.
const TEXT_KEYS = ['name', 'image', 'workdir', 'timeout', 'kill_grace', 'retry_backoff', 'user', 'stdout_file', 'stderr_file'];
// Lists of job ids: the kinds of dependency.
const DEP_KEYS = ['depends_on', 'after_any', 'after_not_ok'];
// The server's advice to the CLI and API on a spec no node could run now; the form's own
// checkbox says it instead.
const UNPLACEABLE_TIP = /\s*\(to wait for such a node:[^)]*allow.unplaceable[^)]*\)\s*$/;

const AREAS = [
  ['env', 'Environment', 'NAME=VALUE, one per line.', 'LANG=C.UTF-8'],
  ['outputs', 'Output files', 'Globs relative to the working directory, one per line.', 'results/*.csv'],
  ['constraints', 'Node constraints', 'Node labels NAME=VALUE, one per line.', 'zone=a'],
];

/** Splits a command line into argv words (quotes and backslashes as in a shell). */
export function splitWords(s) {
  const out = [];
  let cur = '';
  let any = false;
  let q = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q) {
      if (c === q) q = null;
      else if (c === '\\' && q === '"' && i + 1 < s.length) cur += s[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      q = c;
      any = true;
    } else if (c === '\\' && i + 1 < s.length) {
      cur += s[++i];
      any = true;
    } else if (/\s/.test(c)) {
      if (any || cur) out.push(cur);
      cur = '';
      any = false;
    } else cur += c;
  }
  if (any || cur) out.push(cur);
  return out;
}

/** A number when the text is one, else the text (the server then names the field). */
function num(v) {
  const t = v.trim();
  return t !== '' && !Number.isNaN(Number(t)) ? Number(t) : t;
}

function pairs(text, field, errs) {
  const out = {};
  text.split('\n').forEach((line, i) => {
    const l = line.trim();
    if (!l) return;
    const k = l.indexOf('=');
    if (k <= 0) errs.push({ field, message: `line ${i + 1}: expected NAME=VALUE, got \`${l}\`` });
    else out[l.slice(0, k).trim()] = l.slice(k + 1);
  });
  return out;
}

/** Ports of a bridge container: `HOST:CONTAINER[/tcp|udp]` or `CONTAINER` (the server picks the
 * host port), separated by commas or spaces. Numbers out of range go to the server, which names
 * them. */
function portList(text, errs) {
  const out = [];
  for (const w of text.split(/[\s,]+/).filter(Boolean)) {
    const m = /^(?:(\d+):)?(\d+)(?:\/(tcp|udp))?$/i.exec(w);
    if (!m) {
      errs.push({ field: 'ports', message: `\`${w}\`: expected HOST:CONTAINER[/tcp|udp] or CONTAINER` });
      continue;
    }
    const p = {};
    if (m[1] !== undefined) p.host = Number(m[1]);
    p.container = Number(m[2]);
    p.protocol = (m[3] || 'tcp').toLowerCase();
    out.push(p);
  }
  return out;
}

/** A spec's ports as the form writes them. */
function portText(ports) {
  return (ports || []).map((p) => `${p.host ? p.host + ':' : ''}${p.container}${p.protocol === 'udp' ? '/udp' : ''}`).join(', ');
}

/** Host directories bound into a container, one `HOST:CONTAINER[:ro]` a line. Paths are
 * checked by the server, which names them. */
function mountList(text, errs) {
  const out = [];
  text.split('\n').forEach((line, i) => {
    const l = line.trim();
    if (!l) return;
    const p = l.split(':');
    if (p.length < 2 || p.length > 3 || !p[0] || !p[1] || (p.length === 3 && !['ro', 'rw'].includes(p[2]))) {
      errs.push({ field: 'mounts', message: `line ${i + 1}: \`${l}\` is not HOST:CONTAINER[:ro] (e.g. /srv/data:/data:ro)` });
      return;
    }
    const m = { host: p[0], container: p[1] };
    if (p[2] === 'ro') m.read_only = true;
    out.push(m);
  });
  return out;
}

/** A spec's mounts as the form writes them. */
function mountText(mounts) {
  return (mounts || []).map((m) => `${m.host}:${m.container}${m.read_only ? ':ro' : ''}`).join('\n');
}

/** The input id that shows an error about `field` (a server path such as resources.memory). */
function inputFor(field) {
  const f = field.replace(/\[\d+\]$/, '');
  if (f === 'command' || f === 'shell') return 'run';
  if (f.startsWith('resources.')) return f.slice('resources.'.length);
  if (f.startsWith('env')) return 'env';
  if (f.startsWith('constraints')) return 'constraints';
  if (f.startsWith('outputs')) return 'outputs';
  for (const k of DEP_KEYS) if (f.startsWith(k)) return k;
  if (f.startsWith('ports')) return 'ports';
  if (f.startsWith('mounts')) return 'mounts';
  return f;
}

/** Where a submission lands: the new job's page, or the job list when it made several. */
function landing(ids) {
  return ids.length === 1 ? `#/jobs/${encodeURIComponent(ids[0])}?submitted=1` : '#/jobs?new=' + ids.join(',');
}

export async function render(main, ctx) {
  const from = ctx.params.get('from');
  let submitted = false;
  let tab = ctx.params.get('tab') === 'paste' ? 'paste' : 'form';

  const inputs = {};
  const errors = {};
  const field = (id, label, hint, el) => {
    el.id = 'f-' + id;
    el.name = id;
    el.setAttribute('aria-describedby', `hint-${id} err-${id}`);
    inputs[id] = el;
    errors[id] = h('p', { class: 'field-error', id: 'err-' + id, role: 'alert' });
    return h('div', { class: 'field', 'data-field': id }, h('label', { for: 'f-' + id }, label), el,
      hint ? h('div', { class: 'hint', id: 'hint-' + id }, hint) : null, errors[id]);
  };
  const check = (id, label, hint) => {
    const el = h('input', { type: 'checkbox', id: 'f-' + id, name: id, 'aria-describedby': `hint-${id} err-${id}` });
    inputs[id] = el;
    errors[id] = h('p', { class: 'field-error', id: 'err-' + id, role: 'alert' });
    return h('div', { class: 'field check-field', 'data-field': id }, h('label', { class: 'check', for: 'f-' + id }, el, label),
      hint ? h('div', { class: 'hint', id: 'hint-' + id }, hint) : null, errors[id]);
  };
  const idList = (placeholder) => h('input', { type: 'text', placeholder, autocomplete: 'off', spellcheck: 'false' });

  const mode = h('div', { class: 'seg', role: 'radiogroup', 'aria-label': 'How to run' },
    h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'shell', id: 'mode-shell', checked: true }), h('span', {}, 'Shell line (sh -c)')),
    h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'command', id: 'mode-command' }), h('span', {}, 'Command (argv)')));
  const runInput = h('textarea', { rows: 2, placeholder: "for i in 1 2 3; do echo $i; sleep 1; done", spellcheck: 'false' });
  const strategy = h('select', {},
    h('option', { value: '' }, 'Server default (most free memory)'),
    h('option', { value: 'binpack' }, 'binpack'), h('option', { value: 'spread' }, 'spread'), h('option', { value: 'most_free_memory' }, 'most_free_memory'));
  const depends = idList('j-000001, j-000002');
  // A batch script carried from a loaded job: the command line holds its arguments.
  const scriptNote = h('div', { id: 'script-note' });
  const network = h('select', {},
    h('option', { value: '' }, 'Default (bridge where the node has one)'),
    h('option', { value: 'host' }, 'host'), h('option', { value: 'none' }, 'none'), h('option', { value: 'bridge' }, 'bridge'));
  const portsInput = h('input', { type: 'text', placeholder: '18080:80, 53:53/udp, 9000', autocomplete: 'off', spellcheck: 'false' });
  const mountsInput = h('textarea', { rows: 2, placeholder: '/srv/data:/data:ro', spellcheck: 'false' });
  // The cluster's images, offered as the image field's suggestions.
  const imageOptions = h('datalist', { id: 'image-options' });
  api('/v1/images', { signal: ctx.signal })
    .then((images) => fill(imageOptions, images.map((i) => h('option', { value: i.name },
      i.digest ? `in the catalog · ${i.nodes.length} node(s) hold it` : `on ${i.nodes.join(', ')} only`))))
    .catch(() => {});

  const banner = h('div', { id: 'submit-error', role: 'alert' });
  const submitBtn = h('button', { class: 'btn primary', type: 'submit', id: 'submit-btn' }, 'Submit job');
  // Fields of a loaded spec the form does not show (see FORM_KEYS).
  let carried = {};
  const carriedNote = h('div', { class: 'hint', id: 'carried-fields' });
  const text = (id, label, hint) => field(id, label, hint, h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', list: id === 'image' ? 'image-options' : null }));
  const form = h('form', { id: 'submit-form', class: 'panel', novalidate: true },
    h('fieldset', {}, h('legend', {}, 'What to run'),
      mode,
      scriptNote,
      field('run', 'Command line', 'Shell: one line for /bin/sh -c. Command: program and arguments, split like a shell would (quotes work).', runInput)),
    h('fieldset', {}, h('legend', {}, 'Job'),
      h('div', { class: 'form-grid' },
        FIELDS.map(([id, label, hint]) => text(id, label, hint)),
        field('strategy', 'Placement', 'How to choose among nodes that fit.', strategy))),
    h('fieldset', { id: 'start-fields' }, h('legend', {}, 'When to start'),
      h('div', { class: 'form-grid' },
        field('depends_on', 'Run after success of', 'Job ids that must succeed first (comma-separated); if one fails, this one fails too.', depends),
        field('after_any', 'Run after the end of', 'Job ids that must end first, however they end.', idList('j-000003')),
        field('after_not_ok', 'Run after failure of', 'Job ids that must end without success first; if one succeeds, this one fails.', idList('j-000004')),
        check('singleton', 'Singleton', 'Start only once every earlier job of the same name has ended.'),
        check('hold', 'Submit on hold', 'No task starts until it is released (Release on the job page, gaffer release).'))),
    h('fieldset', { id: 'container-fields' }, h('legend', {}, 'Container'),
      h('div', { class: 'form-grid' },
        CONTAINER_FIELDS.map(([id, label, hint]) => text(id, label, hint)),
        imageOptions,
        field('network', 'Network', 'Containers only: bridge (an address of its own; the default on nodes that offer it), host or none (loopback only).', network),
        field('ports', 'Ports', 'Bridge containers: HOST:CONTAINER[/udp], or CONTAINER for any free host port; comma-separated.', portsInput),
        field('mounts', 'Mounts', 'Host directories, HOST:CONTAINER[:ro], one per line; only where the agent allows HOST (--allow-mount).', mountsInput))),
    h('fieldset', {}, h('legend', {}, 'Environment, outputs and placement'),
      h('div', { class: 'form-grid' },
        AREAS.map(([id, label, hint, ph]) => field(id, label, hint, h('textarea', { rows: 3, placeholder: ph, spellcheck: 'false' }))),
        text('stdout_file', 'Stdout file', 'Host processes: also write each task\'s stdout (and stderr, without a stderr file) to this absolute path on its node; %j job number, %a array id, %x name.'),
        text('stderr_file', 'Stderr file', 'Host processes: also write each task\'s stderr here.'))),
    check('allow_unplaceable', 'Allow unplaceable', 'Accept it even when no node could run it now (too many CPUs or too much memory, labels or an image no node has); it waits for such a node.'),
    carriedNote,
    h('div', { class: 'form-actions' }, submitBtn,
      h('button', { class: 'btn', type: 'button', id: 'to-json', onclick: () => { paste.value = JSON.stringify(build([]), null, 2); pasteAllow.checked = inputs.allow_unplaceable.checked; show('paste'); } }, 'Edit as JSON'),
      h('button', { class: 'btn ghost', type: 'reset', id: 'reset-btn', onclick: () => { carried = {}; fill(carriedNote); fill(scriptNote); } }, 'Clear')));

  const paste = h('textarea', { id: 'f-paste', name: 'paste', rows: 18, spellcheck: 'false', 'aria-describedby': 'paste-hint',
    placeholder: '{"name": "hello", "shell": "echo hello"}\n\nor a list: [{...}, {...}]\n\nor TOML:\nname = "hello"\nshell = "echo hello"\n\n[[jobs]] for a list' });
  const fmt = h('div', { class: 'seg', role: 'radiogroup', 'aria-label': 'Format' },
    ['auto', 'json', 'toml'].map((f) => h('label', {}, h('input', { type: 'radio', name: 'fmt', value: f, id: 'fmt-' + f, checked: f === 'auto' }), h('span', {}, f === 'auto' ? 'Detect' : f.toUpperCase()))));
  const pasteErr = h('div', { id: 'paste-error', role: 'alert' });
  const pasteAllow = h('input', { type: 'checkbox', id: 'paste-allow_unplaceable', name: 'allow_unplaceable' });
  const pasteForm = h('form', { id: 'paste-form', class: 'panel', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'f-paste' }, 'Job spec (JSON or TOML)'), fmt, paste,
      h('div', { class: 'hint', id: 'paste-hint' }, 'One spec, a list of specs, or {"jobs": [...]} ([[jobs]] in TOML). A list is stored all or nothing.')),
    h('div', { class: 'field check-field' }, h('label', { class: 'check', for: 'paste-allow_unplaceable' }, pasteAllow, 'Allow unplaceable'),
      h('div', { class: 'hint' }, 'Accept specs that no node could run now; they wait for such a node.')),
    pasteErr,
    h('div', { class: 'form-actions' }, h('button', { class: 'btn primary', type: 'submit', id: 'paste-submit' }, 'Submit')));

  const tabForm = h('button', { type: 'button', role: 'tab', id: 'tab-form', 'aria-controls': 'submit-form' }, 'Form');
  const tabPaste = h('button', { type: 'button', role: 'tab', id: 'tab-paste', 'aria-controls': 'paste-form' }, 'Paste JSON / TOML');
  function show(which) {
    tab = which;
    tabForm.setAttribute('aria-selected', String(which === 'form'));
    tabPaste.setAttribute('aria-selected', String(which === 'paste'));
    tabForm.tabIndex = which === 'form' ? 0 : -1;
    tabPaste.tabIndex = which === 'paste' ? 0 : -1;
    form.hidden = which !== 'form';
    pasteForm.hidden = which !== 'paste';
  }
  tabForm.onclick = () => show('form');
  tabPaste.onclick = () => show('paste');
  const tabs = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'How to give the spec' }, tabForm, tabPaste);
  tabs.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
      show(tab === 'form' ? 'paste' : 'form');
      (tab === 'form' ? tabForm : tabPaste).focus();
    }
  });

  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, from ? `Resubmit ${from}` : 'Submit a job'),
      h('div', { class: 'sub' }, 'Everything `gaffer submit` can set. Empty fields take their defaults.'))),
    banner, tabs, form, pasteForm);
  show(tab);

  const modeValue = () => form.querySelector('input[name=mode]:checked').value;
  function setMode(m) {
    form.querySelector(`#mode-${m}`).checked = true;
  }

  /** The spec from the form; client-side problems go to `errs`. */
  function build(errs) {
    const v = (id) => inputs[id].value.trim();
    const spec = {};
    const run = inputs.run.value;
    if (modeValue() === 'shell') {
      if (run.trim()) spec.shell = run.trim();
    } else if (run.trim()) spec.command = splitWords(run.trim());
    for (const k of TEXT_KEYS) if (v(k)) spec[k] = v(k);
    for (const k of ['retries', 'replicas', 'priority']) if (v(k)) spec[k] = num(v(k));
    // N%K: an array of N tasks, at most K at once (as gaffer submit --array N%K).
    const throttled = /^(\d+)\s*%\s*(\d+)$/.exec(v('array'));
    if (throttled) {
      spec.array = Number(throttled[1]);
      spec.max_running = Number(throttled[2]);
    } else if (v('array')) spec.array = num(v('array'));
    if (v('max_running')) spec.max_running = num(v('max_running'));
    const res = {};
    if (v('cpus')) res.cpus = num(v('cpus'));
    if (v('memory')) res.memory = num(v('memory'));
    if (v('pids')) res.pids = num(v('pids'));
    if (Object.keys(res).length) spec.resources = res;
    if (strategy.value) spec.strategy = strategy.value;
    for (const k of DEP_KEYS) {
      const ids = inputs[k].value.split(/[\s,]+/).filter(Boolean);
      if (ids.length) spec[k] = ids;
    }
    if (inputs.singleton.checked) spec.singleton = true;
    if (inputs.hold.checked) spec.hold = true;
    if (network.value) spec.network = network.value;
    const ports = portList(portsInput.value, errs);
    if (ports.length) spec.ports = ports;
    const mounts = mountList(mountsInput.value, errs);
    if (mounts.length) spec.mounts = mounts;
    const env = pairs(inputs.env.value, 'env', errs);
    if (Object.keys(env).length) spec.env = env;
    const cons = pairs(inputs.constraints.value, 'constraints', errs);
    if (Object.keys(cons).length) spec.constraints = cons;
    const outs = inputs.outputs.value.split('\n').map((s) => s.trim()).filter(Boolean);
    if (outs.length) spec.outputs = outs;
    return { ...carried, ...spec };
  }

  /** Puts a spec into the form. */
  function load(spec) {
    form.reset();
    carried = Object.fromEntries(Object.entries(spec).filter(([k]) => !FORM_KEYS.has(k)));
    const keys = Object.keys(carried);
    fill(carriedNote, keys.length ? ['Also submitted as loaded (change them with Edit as JSON): ', h('code', {}, keys.join(', '))] : null);
    fill(scriptNote, spec.script ? h('div', { class: 'callout' }, 'Runs the batch script ', h('code', {}, spec.script.name),
      ' stored with the job (submitted as loaded); the command line holds its arguments.') : null);
    if (spec.shell !== undefined) {
      setMode('shell');
      inputs.run.value = spec.shell;
    } else {
      setMode('command');
      inputs.run.value = (spec.command || []).map(quoteWord).join(' ');
    }
    for (const k of [...TEXT_KEYS, 'array', 'replicas', 'max_running']) inputs[k].value = spec[k] ?? '';
    for (const k of DEP_KEYS) inputs[k].value = (spec[k] || []).join(', ');
    inputs.singleton.checked = !!spec.singleton;
    inputs.hold.checked = !!spec.hold;
    inputs.retries.value = spec.retries ? String(spec.retries) : '';
    inputs.priority.value = spec.priority ? String(spec.priority) : '';
    inputs.cpus.value = spec.resources?.cpus ?? '';
    inputs.memory.value = fmtBytes(spec.resources?.memory, { exact: true });
    inputs.pids.value = spec.resources?.pids ?? '';
    strategy.value = spec.strategy || '';
    network.value = spec.network || '';
    portsInput.value = portText(spec.ports);
    mountsInput.value = mountText(spec.mounts);
    inputs.env.value = Object.entries(spec.env || {}).map(([k, x]) => `${k}=${x}`).join('\n');
    inputs.constraints.value = Object.entries(spec.constraints || {}).map(([k, x]) => `${k}=${x}`).join('\n');
    inputs.outputs.value = (spec.outputs || []).join('\n');
  }

  function clearErrors() {
    for (const id of Object.keys(errors)) {
      errors[id].textContent = '';
      inputs[id].removeAttribute('aria-invalid');
    }
    fill(banner);
  }

  /** Shows errors next to their fields; the rest in the banner. Focuses the first bad field
   * (in the form's order, whatever the order of the errors). */
  function showErrors(message, list) {
    const general = [];
    let unplaceable = false;
    for (const e0 of list) {
      let e = e0;
      if (UNPLACEABLE_TIP.test(e.message || '')) {
        unplaceable = true;
        e = { ...e, message: e.message.replace(UNPLACEABLE_TIP, ' (to wait for such a node, tick Allow unplaceable below)') };
      }
      const id = inputFor(e.field || '');
      if (errors[id]) {
        errors[id].textContent = (errors[id].textContent ? errors[id].textContent + ' ' : '') + e.message;
        inputs[id].setAttribute('aria-invalid', 'true');
      } else {
        general.push(e.field ? `${e.field}: ${e.message}` : e.message);
      }
    }
    if (unplaceable) {
      message = (message || '').replace(new RegExp(UNPLACEABLE_TIP.source.replace(/\$$/, ''), 'g'), '');
      errors.allow_unplaceable.textContent = 'No node could run it now: tick Allow unplaceable to submit it anyway (it waits for such a node).';
    }
    fill(banner, h('div', { class: 'callout error' }, h('strong', {}, message || 'The job was not submitted.'),
      general.length ? h('ul', {}, general.map((g) => h('li', {}, g))) : null));
    const first = form.querySelector('[aria-invalid=true]');
    if (first) first.focus();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    const errs = [];
    const spec = build(errs);
    if (!spec.shell && !spec.command && !spec.script) errs.push({ field: 'command', message: 'Enter something to run.' });
    if (errs.length) {
      showErrors('Please fix the highlighted fields.', errs);
      return;
    }
    submitBtn.disabled = true;
    try {
      const q = inputs.allow_unplaceable.checked ? '?allow_unplaceable=true' : '';
      const r = await api('/v1/jobs' + q, { method: 'POST', body: spec });
      submitted = true;
      location.hash = landing(r.ids);
    } catch (err) {
      if (err instanceof ApiError) showErrors(err.message, err.fields.length ? err.fields : []);
      else showErrors(String(err), []);
    } finally {
      submitBtn.disabled = false;
    }
  });
  form.addEventListener('reset', () => setTimeout(clearErrors));

  pasteForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    fill(pasteErr);
    paste.removeAttribute('aria-invalid');
    const text = paste.value;
    let f = pasteForm.querySelector('input[name=fmt]:checked').value;
    if (f === 'auto') f = /^\s*[[{]/.test(text) && !/^\s*\[\[/.test(text) ? 'json' : 'toml';
    try {
      const q = pasteAllow.checked ? '?allow_unplaceable=true' : '';
      const r = await api('/v1/jobs' + q, { method: 'POST', body: text, contentType: f === 'json' ? 'application/json' : 'application/toml' });
      submitted = true;
      location.hash = landing(r.ids);
    } catch (err) {
      paste.setAttribute('aria-invalid', 'true');
      const list = err.fields || [];
      fill(pasteErr, h('div', { class: 'callout error' }, h('strong', {}, err.message),
        list.length > 1 || (list.length === 1 && list[0].index !== undefined)
          ? h('ul', {}, list.map((x) => h('li', {}, `${x.index !== undefined && x.index !== null ? `job ${x.index}: ` : ''}${x.field ? x.field + ': ' : ''}${x.message}`)))
          : null));
    }
  });

  if (from) {
    const j = await api(`/v1/jobs/${encodeURIComponent(from)}?tasks_limit=1`, { signal: ctx.signal });
    load(j.spec);
    paste.value = JSON.stringify(displaySpec(j.spec), null, 2);
  } else if (draft) {
    for (const [id, val] of Object.entries(draft.fields)) {
      if (!inputs[id]) continue;
      if (inputs[id].type === 'checkbox') inputs[id].checked = val === true;
      else inputs[id].value = val;
    }
    setMode(draft.mode);
    strategy.value = draft.strategy;
    depends.value = draft.depends;
    paste.value = draft.paste;
  }
  // Keep what was typed when leaving the page.
  return () => {
    if (submitted) {
      draft = null;
      return;
    }
    const fields = {};
    for (const [id, el] of Object.entries(inputs)) fields[id] = el.type === 'checkbox' ? el.checked : el.value;
    draft = { fields, mode: modeValue(), strategy: strategy.value, depends: depends.value, paste: paste.value };
  };
}
