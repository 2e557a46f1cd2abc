// orpod's web page: the queue, a page per job with live charts, and a compare view, all drawn
// from the v1 API. Text that users wrote (job names, owners, reasons, log lines, samples) only
// ever reaches the page as text nodes (`el`), never as HTML. The charts are the daemon's SVGs,
// fetched with the token and shown as images (an image runs no script).
'use strict';

const METRICS = ['loss', 'nll_loss', 'rewards/accuracies', 'rewards/margins', 'log_odds_ratio',
  'logps/chosen', 'logps/rejected', 'learning_rate', 'grad_norm'];
const REFRESH_MS = 2000;
const TOKEN_KEY = 'orpod-token';

let timer = null;      // the current view's refresh
let follow = null;     // the current job page's event stream
const blobs = [];      // chart object URLs to free when the view changes

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function token() { return localStorage.getItem(TOKEN_KEY) || ''; }

/** `fetch` with the token; a non-2xx answer throws the API's message. */
async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = Object.assign({}, o.headers || {});
  if (token()) o.headers['Authorization'] = 'Bearer ' + token();
  const r = await fetch(path, o);
  if (!r.ok) {
    let message = r.status + ' ' + r.statusText;
    try { message = (await r.json()).error.message; } catch (_) { /* not the API's body */ }
    const e = new Error(message);
    e.status = r.status;
    throw e;
  }
  return r;
}
const json = async (path, opts) => (await api(path, opts)).json();

function showError(e) {
  const text = e ? (e.status === 401 ? 'This daemon needs a token: paste one above. (' + e.message + ')' : String(e.message || e)) : '';
  document.getElementById('error').textContent = text;
}

function bytes(n) {
  if (n === null || n === undefined) return '-';
  const [kib, mib, gib] = [1024, 1024 ** 2, 1024 ** 3];
  if (n >= gib) return (n / gib).toFixed(1) + ' GiB';
  if (n >= mib) return Math.round(n / mib) + ' MiB';
  return Math.max(1, Math.round(n / kib)) + ' KiB';
}
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '-';
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? h + 'h' + String(m).padStart(2, '0') + 'm' : m ? m + 'm' + String(s % 60).padStart(2, '0') + 's' : s + 's';
}
const seconds = (a, b) => (a && b) ? (Date.parse(b) - Date.parse(a)) / 1000 : null;
const stateCell = (s) => el('span', { class: 'state state-' + s }, s);
const FINISHED = ['succeeded', 'failed', 'cancelled'];

// ---- the queue -------------------------------------------------------------------------

async function queueView(main) {
  const [gpus, list] = await Promise.all([json('/v1/gpus'), json('/v1/jobs?limit=200')]);
  const devices = el('table', { id: 'devices' },
    el('tr', {}, ['device', 'name', 'total', 'used', 'promised', 'available', 'jobs'].map((h) => el('th', {}, h))),
    gpus.devices.map((d) => el('tr', { 'data-device': d.device },
      el('td', {}, d.device), el('td', {}, d.name),
      el('td', { class: 'num' }, bytes(d.total_bytes)), el('td', { class: 'num' }, bytes(d.used_bytes)),
      el('td', { class: 'num' }, bytes(d.promised_bytes)), el('td', { class: 'num' }, bytes(d.available_bytes)),
      el('td', {}, d.running_jobs.map((id) => el('a', { href: '#/jobs/' + id }, 'job ' + id + ' '))))));
  // With executor = "slurm": where training jobs run, as sinfo reports it.
  const nodes = (gpus.slurm_nodes || []).length === 0 ? '' : el('table', { id: 'slurm-nodes' },
    el('tr', {}, ['node', 'state', 'CPUs', 'memory', 'GPUs', 'in use', 'partitions', 'jobs'].map((h) => el('th', {}, h))),
    gpus.slurm_nodes.map((n) => el('tr', { 'data-node': n.name },
      el('td', {}, n.name), el('td', {}, n.state),
      el('td', { class: 'num' }, n.cpus_allocated + '/' + n.cpus_total),
      el('td', { class: 'num' }, bytes(n.memory_allocated_bytes) + ' / ' + bytes(n.memory_bytes)),
      el('td', {}, n.gres), el('td', {}, n.gres_used), el('td', {}, n.partitions.join(', ')),
      el('td', {}, n.running_jobs.map((id) => el('a', { href: '#/jobs/' + id }, 'job ' + id + ' '))))));
  const active = list.jobs.filter((j) => !FINISHED.includes(j.state));
  const done = list.jobs.filter((j) => FINISHED.includes(j.state));
  const jobRow = (j) => el('tr', { 'data-id': j.id, 'data-state': j.state },
    el('td', {}, el('a', { href: '#/jobs/' + j.id }, String(j.id))),
    el('td', { class: 'name' }, j.name), el('td', {}, j.owner), el('td', {}, stateCell(j.state)),
    el('td', { class: 'num' }, j.progress.step + '/' + j.progress.total_steps),
    el('td', { class: 'num' }, duration(j.progress.eta_s)),
    el('td', {}, j.device || '-'),
    el('td', { class: 'num' }, bytes(j.memory.estimate_bytes) + ' / ' + bytes(j.memory.peak_bytes)),
    el('td', { class: 'reason' }, j.pending_reason || (j.error ? j.error.kind + ': ' + j.error.message : '')));
  const head = (cols) => el('tr', {}, cols.map((h) => el('th', {}, h)));
  main.replaceChildren(
    el('h2', {}, 'Devices'), devices, gpus.note ? el('p', { class: 'reason' }, gpus.note) : '',
    nodes ? el('h2', {}, 'Slurm nodes') : '', nodes,
    el('h2', {}, 'Queue'),
    el('table', { id: 'queue' }, head(['id', 'name', 'owner', 'state', 'step', 'ETA', 'device', 'memory est. / peak', 'why it waits']), active.map(jobRow)),
    el('h2', {}, 'Finished'),
    el('table', { id: 'finished' }, head(['id', 'name', 'owner', 'outcome', 'step', 'took', 'device', 'memory est. / peak', 'error']),
      done.map((j) => {
        const row = jobRow(j);
        row.children[5].textContent = duration(seconds(j.started_at, j.finished_at));
        return row;
      })));
}

// ---- a job -----------------------------------------------------------------------------

/** Shows the daemon's chart of `path` in `box`, or why there is none. */
async function chartInto(box, path) {
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    blobs.push(url);
    const old = box.querySelector('img');
    const img = el('img', { src: url, alt: box.dataset.metric });
    if (old) {
      // A long run redraws its charts thousands of times: free each picture it replaces.
      old.replaceWith(img);
      URL.revokeObjectURL(old.src);
      const i = blobs.indexOf(old.src);
      if (i >= 0) blobs.splice(i, 1);
    } else {
      box.replaceChildren(img);
    }
  } catch (e) {
    box.replaceChildren(el('div', { class: 'empty' }, box.dataset.metric + ': ' + e.message));
  }
}

async function download(id, ckpt, file) {
  const blob = await (await api(`/v1/jobs/${id}/checkpoints/${encodeURIComponent(ckpt)}/files/${encodeURIComponent(file)}`)).blob();
  const a = el('a', { href: URL.createObjectURL(blob), download: file });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function samplesOf(id, c) {
  if (!c.files.some((f) => f.name === 'samples.json')) {
    return c.files.some((f) => f.name === 'sample_prompts.json') ? el('div', { class: 'sample' }, 'samples: waiting for the generation engine') : '';
  }
  try {
    const samples = await json(`/v1/jobs/${id}/checkpoints/${encodeURIComponent(c.name)}/files/samples.json`);
    return (samples.samples || samples).map((s) => el('div', { class: 'sample' },
      el('div', { class: 'prompt' }, s.prompt), el('div', { class: 'completion' }, s.completion)));
  } catch (_) { return ''; }
}

/** Follows the job's events (SSE through fetch, which can send the token) into `log`. */
async function followEvents(id, log, onEvent) {
  const ctrl = new AbortController();
  follow = ctrl;
  try {
    const r = await api(`/v1/jobs/${id}/events?follow=true`, { signal: ctrl.signal });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data) continue;
        const ev = JSON.parse(data);
        log.append(el('div', { class: 'event event-' + ev.kind }, ev.time.slice(11, 19) + ' ' + ev.message));
        while (log.childNodes.length > 300) log.firstChild.remove();
        log.scrollTop = log.scrollHeight;
        onEvent(ev);
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') log.append(el('div', { class: 'event' }, '(event stream: ' + e.message + ')'));
  }
}

async function jobView(main, id) {
  const [job, me] = await Promise.all([json('/v1/jobs/' + id), json('/v1/me')]);
  const mine = me.admin || me.user === job.owner;
  const state = el('span', { id: 'state' }, stateCell(job.state));
  const progress = el('span', { id: 'progress' });
  const reason = el('div', { id: 'reason', class: 'reason' });
  const memory = el('span', { id: 'memory' });
  const act = (verb) => el('button', {
    id: verb, onclick: async () => {
      try { await api(`/v1/jobs/${id}/${verb}`, { method: 'POST' }); showError(null); await refresh(); } catch (e) { showError(e); }
    },
  }, verb);
  const buttons = mine ? el('div', { class: 'buttons' }, act('pause'), act('resume'), act('cancel')) : '';
  const charts = el('div', { class: 'charts', id: 'charts' },
    METRICS.map((m) => el('div', { class: 'chart', 'data-metric': m, 'data-points': '0' })));
  const checkpoints = el('div', { id: 'checkpoints' });
  const log = el('pre', { id: 'log' });
  main.replaceChildren(
    el('h2', {}, 'Job ' + job.id + ': ', el('span', { class: 'name' }, job.name), ' (' + job.owner + ')'),
    el('p', {}, state, ' ', progress, ' ', el('span', { id: 'device' }, job.device || ''), ' · memory ', memory),
    reason, buttons,
    el('h2', {}, 'Charts'), mine ? charts : el('p', { class: 'reason' }, 'Only the owner and admins see what a job does.'),
    el('h2', {}, 'Checkpoints'), checkpoints,
    el('h2', {}, 'Log'), log,
    el('h2', {}, 'Job file'), el('pre', { id: 'spec' }, job.spec ? JSON.stringify(job.spec, null, 2) : '-'));
  let since = 0;
  let lastCheckpoints = '';
  async function refresh() {
    const j = await json('/v1/jobs/' + id);
    state.replaceChildren(stateCell(j.state));
    progress.textContent = `step ${j.progress.step}/${j.progress.total_steps}` +
      (j.progress.eta_s ? ', ETA ' + duration(j.progress.eta_s) : '') + (j.base_precision ? ', base ' + j.base_precision : '');
    reason.textContent = j.pending_reason || (j.error ? j.error.kind + ': ' + j.error.message : '');
    memory.textContent = 'estimate ' + bytes(j.memory.estimate_bytes) + ', peak ' + bytes(j.memory.peak_bytes);
    // Only the verbs the job's state allows.
    const allowed = { pause: ['queued', 'starting', 'running'], resume: ['paused', 'interrupted'],
      cancel: ['queued', 'starting', 'running', 'pausing', 'paused', 'interrupted'] };
    for (const [verb, states] of Object.entries(allowed)) {
      const b = document.getElementById(verb);
      if (b) b.hidden = !states.includes(j.state);
    }
    if (!mine) return;
    const fresh = await json(`/v1/jobs/${id}/metrics?since=${since}`);
    if (fresh.length) {
      since = fresh[fresh.length - 1].step;
      for (const box of charts.children) {
        const m = box.dataset.metric;
        const n = fresh.filter((r) => m in r.metrics || ('eval_' + m) in r.metrics ||
          (m === 'learning_rate' && r.learning_rate !== null) || (m === 'grad_norm' && r.grad_norm !== null)).length;
        if (!n) continue;
        box.dataset.points = String(Number(box.dataset.points) + n);
        chartInto(box, `/v1/jobs/${id}/charts/${encodeURIComponent(m)}.svg`);
      }
    }
    const ckpts = await json(`/v1/jobs/${id}/checkpoints`);
    // Samples come after their checkpoint (the daemon answers them when memory allows),
    // maybe after the job has ended: keep refreshing until every one has its answers.
    const has = (c, name) => c.files.some((f) => f.name === name);
    const unanswered = ckpts.some((c) => has(c, 'sample_prompts.json') && !has(c, 'samples.json'));
    const key = JSON.stringify(ckpts.map((c) => [c.name, c.modified_at, has(c, 'samples.json')]));
    if (key !== lastCheckpoints) {
      lastCheckpoints = key;
      const rows = [];
      for (const c of ckpts) {
        rows.push(el('div', { class: 'checkpoint', 'data-name': c.name }, el('strong', {}, c.name), ' ',
          c.files.map((f) => el('button', { onclick: () => download(id, c.name, f.name).catch(showError) }, f.name + ' (' + bytes(f.size_bytes) + ')')),
          await samplesOf(id, c)));
      }
      checkpoints.replaceChildren(...(rows.length ? rows : ['none yet']));
    }
    if (FINISHED.includes(j.state) && !unanswered && timer) { clearInterval(timer); timer = null; }
  }
  await refresh();
  if (mine) followEvents(id, log, () => {});
  timer = setInterval(() => refresh().catch(showError), REFRESH_MS);
}

// ---- compare ---------------------------------------------------------------------------

async function compareView(main, query) {
  const params = new URLSearchParams(query);
  const list = await json('/v1/jobs?limit=200');
  const picked = new Set((params.get('jobs') || '').split(',').filter(Boolean));
  const metric = params.get('metric') || 'loss';
  const select = el('select', { id: 'metric' }, METRICS.map((m) => el('option', m === metric ? { selected: '' } : {}, m)));
  const boxes = list.jobs.filter((j) => j.spec).map((j) => el('label', { class: 'pick' },
    el('input', Object.assign({ type: 'checkbox', value: j.id }, picked.has(String(j.id)) ? { checked: '' } : {})),
    ' ' + j.id + ' ', el('span', { class: 'name' }, j.name), ' (' + j.state + ') '));
  const go = () => {
    const ids = [...main.querySelectorAll('input[type=checkbox]:checked')].map((c) => c.value);
    location.hash = '#/compare?' + new URLSearchParams({ jobs: ids.join(','), metric: select.value });
  };
  const chart = el('div', { class: 'chart', id: 'compare-chart', 'data-metric': metric });
  main.replaceChildren(el('h2', {}, 'Compare runs'), el('div', {}, boxes), el('p', {}, 'metric ', select, ' ', el('button', { id: 'overlay', onclick: go }, 'overlay')), chart);
  if (picked.size) await chartInto(chart, `/v1/charts/${encodeURIComponent(metric)}.svg?jobs=${[...picked].join(',')}`);
}

// ---- routing ---------------------------------------------------------------------------

async function render() {
  if (timer) { clearInterval(timer); timer = null; }
  if (follow) { follow.abort(); follow = null; }
  while (blobs.length) URL.revokeObjectURL(blobs.pop());
  const main = document.getElementById('main');
  const hash = location.hash.slice(1) || '/';
  try {
    const me = await json('/v1/me');
    document.getElementById('who').textContent = me.open ? '' : 'signed in as ' + me.user;
    showError(null);
    let m;
    if ((m = hash.match(/^\/jobs\/(\d+)$/))) await jobView(main, m[1]);
    else if (hash.startsWith('/compare')) await compareView(main, hash.split('?')[1] || '');
    else {
      await queueView(main);
      timer = setInterval(() => queueView(main).catch(showError), REFRESH_MS);
    }
  } catch (e) {
    showError(e);
  }
}

document.getElementById('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = document.getElementById('token').value.trim();
  if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  document.getElementById('token').value = '';
  render();
});
window.addEventListener('hashchange', render);
render();
