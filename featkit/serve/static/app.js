// featkit workbench: the page. It calls only the JSON API documented in the README.
import createScatterplot from '/static/vendor/regl-scatterplot.esm.js';

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const testid = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

// 20 distinguishable colours (Tableau 20 order, darker first), then "other" and "unknown".
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf',
  '#bcbd22', '#393b79', '#aec7e8', '#ffbb78', '#98df8a', '#ff9896', '#c5b0d5', '#c49c94', '#f7b6d2',
  '#9edae5', '#dbdb8d', '#637939'];
const OTHER = '#8d8d8d';
const UNKNOWN = '#d9d9d9';
const VIRIDIS = ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58',
  '#b5de2b', '#fde725'];
const TOP_N = PALETTE.length;
const OTHER_KEY = Symbol('other');  // legend entries that are not one class
const UNKNOWN_KEY = Symbol('unknown');

const state = {
  meta: null, key: null, task: null, color: 'label', items: null, row: new Map(),
  categories: null, selection: [], lassoing: false, detail: null, filtered: null,
  review: { queue: null, data: null, focus: 0 }, clusters: new Map(),
};
const timings = {};
window.featkit = { state, timings };

// -- the JSON API --------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
  if (!response.ok) throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  return body;
}
const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== '')).toString();
const imageUrl = (id, thumb = false) => `/images/${id.split('/').map(encodeURIComponent).join('/')}${thumb ? '?thumb=1' : ''}`;

function toast(message, kind = 'info') {
  const el = testid('toast');
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, kind === 'error' ? 8000 : 3000);
}
const fail = (err) => toast(err.message || String(err), 'error');

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function thumb(id, caption, attrs = {}) {
  return el('figure', { class: 'thumb', 'data-id': id, title: id, ...attrs },
    el('img', { src: imageUrl(id, true), loading: 'lazy', alt: id }),
    el('figcaption', { text: caption }));
}

// -- the map ---------------------------------------------------------------------------
const canvas = $('#canvas');
const mapEl = testid('map');
const scatter = createScatterplot({
  canvas, width: mapEl.clientWidth, height: mapEl.clientHeight,
  pointSize: 4, pointSizeSelected: 2, pointOutlineWidth: 2, opacityInactiveScale: 0.3,
  backgroundColor: '#ffffff', lassoColor: '#1f77b4', lassoClearEvent: 'deselect', showReticle: true,
  reticleColor: [0.2, 0.2, 0.2, 0.6], deselectOnDblClick: true,
});
window.featkit.scatter = scatter;
new ResizeObserver(() => scatter.set({ width: mapEl.clientWidth, height: mapEl.clientHeight })).observe(mapEl);

let mouse = [0, 0];
canvas.addEventListener('mousemove', (e) => { mouse = [e.offsetX, e.offsetY]; });
scatter.subscribe('pointOver', (i) => {
  const cols = state.items.columns;
  const card = testid('hover-card');
  $('img', card).src = imageUrl(cols.id[i], true);
  $('.cap', card).textContent = `${cols.id[i]} · ${valueLabel(i)}`;
  card.style.left = `${Math.min(mouse[0] + 14, mapEl.clientWidth - 220)}px`;
  card.style.top = `${Math.min(mouse[1] + 14, mapEl.clientHeight - 240)}px`;
  card.dataset.id = cols.id[i];
  card.hidden = false;
});
scatter.subscribe('pointOut', () => { testid('hover-card').hidden = true; });
scatter.subscribe('lassoEnd', () => { state.lassoing = true; });
scatter.subscribe('select', ({ points }) => {
  if (state.lassoing || points.length > 1) {
    state.lassoing = false;
    showSelection(points);
  } else if (points.length === 1) {
    showSelection([]);
    openDetail(state.items.columns.id[points[0]]).catch(fail);
  }
});
scatter.subscribe('deselect', () => showSelection([]));

function normalise(xs, ys) {
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < xs.length; i++) {
    x0 = Math.min(x0, xs[i]); x1 = Math.max(x1, xs[i]); y0 = Math.min(y0, ys[i]); y1 = Math.max(y1, ys[i]);
  }
  const scale = 1.9 / Math.max(x1 - x0, y1 - y0, 1e-9);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  return [Float32Array.from(xs, (v) => (v - cx) * scale), Float32Array.from(ys, (v) => (v - cy) * scale)];
}

async function loadItems() {
  testid('status').textContent = 'loading points…';
  mapEl.dataset.ready = '0';
  state.items = await api(`/api/items?${q({ task: state.task, key: state.key })}`);
  timings.items = performance.now();
  const cols = state.items.columns;
  state.row = new Map(cols.id.map((id, i) => [id, i]));
  [state.x, state.y] = normalise(cols.x, cols.y);
  const n = cols.id.length;
  scatter.set({ pointSize: n < 1000 ? 7 : n < 10000 ? 5 : n < 100000 ? 3 : 2 });
  testid('point-count').textContent = `${n.toLocaleString()} images · ${state.items.run ? `predictions: ${state.items.run}` : 'no fit run for this task'}`;
  await recolor();
  timings.drawn = performance.now();
  mapEl.dataset.ready = '1';
  mapEl.dataset.points = String(n);
  testid('status').textContent = '';
}

function valueOf(field, i) {
  const cols = state.items.columns;
  if (field === 'cluster') return `cluster ${state.clusters.get(state.key)[i]}`;
  if (field === 'confidence') {
    const c = cols.confidence[i];
    return c === null ? null : `${(Math.min(Math.floor(c * 10), 9) / 10).toFixed(1)}–${(Math.min(Math.floor(c * 10), 9) / 10 + 0.1).toFixed(1)}`;
  }
  if (field === 'correct') return cols.correct[i] === null ? null : cols.correct[i] ? 'correct' : 'incorrect';
  return cols[field] ? cols[field][i] : null;
}
function valueLabel(i) { return `${state.color}: ${valueOf(state.color, i) ?? 'unknown'}`; }

// Categories of the colour field: the TOP_N most frequent get colours, the rest share "other".
function categorize(field) {
  const n = state.items.columns.id.length;
  const values = new Array(n);
  const counts = new Map();
  for (let i = 0; i < n; i++) {
    const v = valueOf(field, i);
    values[i] = v;
    if (v !== null) counts.set(v, (counts.get(v) || 0) + 1);
  }
  const entries = Array.from(counts, ([label, count]) => ({ label, count }));
  // A class keeps its colour whether the map shows given labels or predictions: both follow the task's class order.
  const rank = new Map(state.meta.classes[state.task].map((c, k) => [c.label, k]));
  const order = (e) => (rank.has(e.label) ? rank.get(e.label) : rank.size);
  if (field === 'confidence') entries.sort((a, b) => a.label.localeCompare(b.label));
  else if (field === 'label' || field === 'prediction') entries.sort((a, b) => order(a) - order(b) || b.count - a.count);
  else entries.sort((a, b) => b.count - a.count || String(a.label).localeCompare(String(b.label)));
  const code = new Map();
  const byClass = field === 'label' || field === 'prediction';
  entries.forEach((e, k) => {
    const slot = byClass ? order(e) : k;
    e.code = slot < TOP_N ? slot : TOP_N;
    if (field === 'confidence') e.color = VIRIDIS[Math.round(parseFloat(e.label) * 10)];  // bin 0.4–0.5: 4
    else if (field === 'correct') e.color = e.label === 'correct' ? '#2ca02c' : '#d62728';
    else e.color = e.code < TOP_N ? PALETTE[e.code] : OTHER;
    code.set(e.label, e.code);
  });
  const codes = new Float32Array(n);
  let unknown = 0;
  for (let i = 0; i < n; i++) {
    if (values[i] === null) { codes[i] = TOP_N + 1; unknown += 1; } else codes[i] = code.get(values[i]);
  }
  const colors = new Array(TOP_N).fill(OTHER);  // colour of each code; then "other" and "unknown"
  entries.forEach((e) => { if (e.code < TOP_N) colors[e.code] = e.color; });
  colors.push(OTHER, UNKNOWN);
  return { field, entries, codes, colors, unknown, values };
}

async function recolor() {
  if (state.color === 'cluster' && !state.clusters.has(state.key)) {
    testid('status').textContent = 'clustering…';
    const result = await api(`/api/clusters?${q({ key: state.key })}`);
    state.clusters.set(state.key, result.cluster);
    testid('status').textContent = '';
  }
  if (!state.categories || state.categories.field !== state.color) testid('legend-search').value = '';
  state.categories = categorize(state.color);
  state.filtered = null;
  scatter.set({ colorBy: 'valueA', pointColor: state.categories.colors });
  await scatter.draw({ x: state.x, y: state.y, valueA: state.categories.codes }, { zDataType: 'categorical' });
  renderLegend();
}

function renderLegend() {
  const { entries, unknown, field } = state.categories;
  const term = testid('legend-search').value.trim().toLowerCase();
  const list = $('#legend ul');
  list.replaceChildren();
  const item = (label, count, color, key) => el('li', {
    'data-testid': 'legend-item', 'data-kind': key === OTHER_KEY ? 'other' : key === UNKNOWN_KEY ? 'unknown' : 'class',
    'data-label': key === OTHER_KEY || key === UNKNOWN_KEY ? null : key, class: state.filtered === key ? 'active' : null,
    onclick: () => toggleFilter(key),
  }, el('span', { class: 'swatch', style: `background:${color}` }), el('span', { class: 'name', text: label }),
  el('span', { class: 'n', text: count.toLocaleString() }));
  if (term) {
    const hits = entries.filter((e) => String(e.label).toLowerCase().includes(term));
    hits.slice(0, 100).forEach((e) => list.append(item(e.label, e.count, e.color, e.label)));
    if (hits.length > 100) list.append(el('li', { class: 'muted', text: `… ${hits.length - 100} more` }));
    if (!hits.length) list.append(el('li', { class: 'muted', text: 'no class matches' }));
    return;
  }
  entries.filter((e) => e.code < TOP_N).forEach((e) => list.append(item(e.label, e.count, e.color, e.label)));
  const rest = entries.filter((e) => e.code === TOP_N);
  if (rest.length) {
    list.append(item(`other (${rest.length} ${field === 'group' ? 'groups' : 'classes'}: search above)`,
      rest.reduce((s, e) => s + e.count, 0), OTHER, OTHER_KEY));
  }
  if (unknown) list.append(item('unknown / none', unknown, UNKNOWN, UNKNOWN_KEY));
}

function toggleFilter(key) {
  if (state.filtered === key) {
    state.filtered = null;
    scatter.unfilter();
  } else {
    const { values, entries } = state.categories;
    const rest = new Set(entries.filter((e) => e.code === TOP_N).map((e) => e.label));
    const keep = [];
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (key === UNKNOWN_KEY ? v === null : key === OTHER_KEY ? rest.has(v) : v === key) keep.push(i);
    }
    state.filtered = key;
    scatter.filter(keep);
  }
  renderLegend();
}

function showSelection(points) {
  state.selection = points.map((i) => state.items.columns.id[i]);
  testid('selection').hidden = points.length < 2;
  testid('selection-count').textContent = points.length.toLocaleString();
}

const csvCell = (v) => (/[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
testid('export-ids').addEventListener('click', () => {
  download('selection-ids.csv', ['id', ...state.selection.map(csvCell)].join('\n') + '\n');
});
testid('export-manifest').addEventListener('click', async () => {
  try {
    const response = await fetch('/api/export', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ids: state.selection }),
    });
    if (!response.ok) throw new Error((await response.json()).error);
    download('subset-manifest.csv', await response.text());
  } catch (err) { fail(err); }
});
testid('selection-clear').addEventListener('click', () => scatter.deselect());

// -- detail panel ----------------------------------------------------------------------
async function openDetail(id) {
  const data = await api(`/api/item?${q({ id, key: state.key })}`);
  state.detail = data;
  const panel = testid('detail-panel');
  testid('detail-id').textContent = id;
  testid('detail-image').src = imageUrl(id);
  testid('detail-meta').textContent = [data.group !== null ? `object ${data.group}` : null,
    data.split !== null ? `split ${data.split}` : null, data.embedded ? null : 'not embedded'].filter(Boolean).join(' · ');
  const table = testid('detail-labels');
  table.replaceChildren(el('tr', {}, el('th', { text: 'task' }), el('th', { text: 'label' }), el('th', { text: 'held-out prediction' }), el('th')));
  for (const [task, t] of Object.entries(data.tasks)) {
    const pred = t.prediction;
    let predText = '–';
    if (pred && pred.held_out) {
      predText = `${pred.predicted} (${pred.confidence.toFixed(2)}) · ` + Object.entries(pred.probabilities)
        .map(([c, p]) => `${c} ${p.toFixed(2)}`).join(', ');
    } else if (pred) predText = pred.note;
    const corrected = t.correction ? ` (was ${t.correction.old || 'unknown'}, ${t.correction.queue || 'corrected'} by ${t.correction.user || '?'})` : '';
    table.append(el('tr', { 'data-task': task },
      el('td', { text: task }),
      el('td', { 'data-testid': `detail-label-${task}`, class: t.correction ? 'corrected' : null, text: (t.label ?? 'unknown') + corrected }),
      el('td', { 'data-testid': `detail-pred-${task}`, class: 'small', text: predText }),
      el('td', {}, el('button', { 'data-testid': `detail-relabel-${task}`, text: 'relabel',
        onclick: () => relabel(id, task, 'detail').then(() => openDetail(id)).catch(fail) }))));
  }
  const group = testid('detail-group');
  group.replaceChildren(...data.same_group.map((g) => thumb(g, '', { onclick: () => openDetail(g).catch(fail) })));
  if (!data.same_group.length) group.append(el('span', { class: 'muted', text: data.group === null ? 'no group column' : 'no other photo' }));
  testid('detail-neighbors').replaceChildren(...data.neighbors.map((nb) => thumb(nb.id, nb.score.toFixed(3),
    { 'data-testid': 'neighbor', 'data-score': nb.score, onclick: () => openDetail(nb.id).catch(fail) })));
  panel.hidden = false;
  const row = state.row.get(id);
  if (row !== undefined) scatter.select([row], { preventEvent: true });
}
testid('detail-close').addEventListener('click', () => { testid('detail-panel').hidden = true; scatter.deselect({ preventEvent: true }); });
// A search: the query (an item id or an uploaded file) is kept, so the label filter can run it again.
async function search(query, label = '') {
  const params = { k: query.k, key: state.key, task: label ? state.task : null, label };
  let data;
  if (query.id) data = await api(`/api/similar?${q({ ...params, id: query.id })}`);
  else {
    const form = new FormData();
    form.append('file', query.file);
    data = await api(`/api/similar?${q(params)}`, { method: 'POST', body: form });
  }
  state.lastQuery = query;
  const box = testid('similar-results');
  $('.title', box).textContent = `similar to ${query.id || query.file.name} (${data.key}, cosine)`;
  const filter = testid('similar-label');
  filter.replaceChildren(el('option', { value: '', text: `any ${state.task}` }),
    ...state.meta.classes[state.task].map((c) => el('option', { value: c.label, text: `${state.task} = ${c.label}` })));
  filter.value = label;
  $('.grid', box).replaceChildren(...data.results.map((r) => thumb(r.id, `${r.score.toFixed(3)} · ${r.labels[state.task] ?? '–'}`, {
    'data-testid': 'similar-result', 'data-score': r.score, 'data-label': r.labels[state.task],
    onclick: () => openDetail(r.id).catch(fail),
  })));
  box.hidden = false;
  const rows = data.results.map((r) => state.row.get(r.id)).filter((r) => r !== undefined);
  if (rows.length) scatter.select(rows, { preventEvent: true });
}
testid('similar-button').addEventListener('click', () => {
  search({ id: state.detail.id, k: testid('similar-k').value }).catch(fail);
});
testid('similar-label').addEventListener('change', (e) => search(state.lastQuery, e.target.value).catch(fail));
testid('results-close').addEventListener('click', () => { testid('similar-results').hidden = true; });

testid('upload-input').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  testid('status').textContent = `embedding ${file.name}…`;
  try {
    await search({ file, k: 24 });
  } catch (err) { fail(err); } finally { testid('status').textContent = ''; event.target.value = ''; }
});

// -- corrections -----------------------------------------------------------------------
async function decide(id, task, label, queue) {
  const row = await api('/api/corrections', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id, task, label, queue }),
  });
  if (task === state.task && state.row.has(id)) {
    state.items.columns.label[state.row.get(id)] = row.new || null;
    state.items.columns.corrected[state.row.get(id)] = true;
    state.stale = true;
  }
  toast(`${task} of ${id}: ${row.old || 'unknown'} → ${row.new || 'unknown'}${row.new_class ? ' (a new class)' : ''}`);
  return row;
}

function relabel(id, task, queue) {
  const dialog = testid('relabel-dialog');
  const input = testid('relabel-input');
  $('.task', dialog).textContent = task;
  $('.id', dialog).textContent = id;
  $('#relabel-classes').replaceChildren(...state.meta.classes[task].map((c) => el('option', { value: c.label })));
  input.value = '';
  dialog.hidden = false;
  input.focus();
  return new Promise((resolve, reject) => {
    const close = () => { dialog.hidden = true; form.onsubmit = null; cancel.onclick = null; };
    const form = $('form', dialog);
    const cancel = testid('relabel-cancel');
    form.onsubmit = (e) => {
      e.preventDefault();
      close();
      decide(id, task, input.value.trim(), queue).then(resolve, reject);
    };
    cancel.onclick = () => { close(); resolve(null); };
  });
}

// -- review queues ---------------------------------------------------------------------
async function openReview(queue, task) {
  state.review.queue = queue;
  state.review.task = task;
  testid('queue-select').value = queue;
  testid('review-task').value = task;
  testid('review-view').hidden = false;
  const grid = testid('review-grid');
  grid.replaceChildren(el('div', { class: 'muted', text: `building the ${queue} queue…` }));
  let data;
  try {
    data = await api(`/api/review/${queue}?${q({ task, key: state.key })}`);
  } catch (err) {
    grid.replaceChildren(el('div', { class: 'error', 'data-testid': 'review-error', text: err.message }));
    return;
  }
  state.review.data = data;
  const note = [`${data.items.length} of ${data.total} shown`];
  if (data.threshold_source) note.push(`threshold ${data.threshold}: ${data.threshold_source}`);
  else if (data.threshold !== undefined) note.push(`cosine ≥ ${data.threshold}`);
  if (data.source) note.push(data.source);
  testid('review-note').textContent = note.join(' · ');
  grid.replaceChildren(...data.items.map((it, n) => reviewCard(it, n)));
  if (!data.items.length) grid.append(el('div', { class: 'muted', 'data-testid': 'review-empty', text: 'nothing to review here' }));
  focusCard(data.items.findIndex((it) => !it.decision));
}

function reviewCard(it, n) {
  const card = el('div', { class: 'card', 'data-testid': 'review-card', 'data-id': it.id, 'data-index': n, tabindex: -1,
    onclick: () => focusCard(n) },
  el('div', { class: 'pics' }, thumb(it.id, ''), it.other ? thumb(it.other, it.other_label ?? '') : null),
  el('div', {}, 'given ', el('b', { 'data-testid': 'review-given', text: it.given ?? 'unknown' })),
  el('div', {}, 'suggested ', el('b', { 'data-testid': 'review-suggested', text: it.suggested ?? '–' })),
  el('div', { class: 'small muted', text: `${it.score_name} ${it.score} · ${it.reason}` }),
  el('div', { class: 'decision', 'data-testid': 'review-decision', text: it.decision ? `decided: ${it.decision.new || 'unknown'}` : '' }),
  el('div', { class: 'actions' },
    el('button', { 'data-testid': 'review-accept', disabled: !it.suggested, text: 'a accept', onclick: (e) => { e.stopPropagation(); act('accept', n); } }),
    el('button', { 'data-testid': 'review-keep', text: 'k keep', onclick: (e) => { e.stopPropagation(); act('keep', n); } }),
    el('button', { 'data-testid': 'review-relabel', text: 'r relabel', onclick: (e) => { e.stopPropagation(); act('relabel', n); } }),
    el('button', { 'data-testid': 'review-unknown', text: 'u unknown', onclick: (e) => { e.stopPropagation(); act('unknown', n); } }),
    el('button', { 'data-testid': 'review-skip', text: 's skip', onclick: (e) => { e.stopPropagation(); act('skip', n); } })));
  if (it.decision) card.classList.add('done');
  return card;
}

function focusCard(n) {
  const cards = $$('[data-testid="review-card"]');
  if (!cards.length) return;
  state.review.focus = Math.max(0, Math.min(n < 0 ? 0 : n, cards.length - 1));
  cards.forEach((c, k) => c.classList.toggle('focus', k === state.review.focus));
  cards[state.review.focus].focus();
  cards[state.review.focus].scrollIntoView({ block: 'nearest' });
}

async function act(action, n = state.review.focus) {
  const it = state.review.data.items[n];
  const card = $$('[data-testid="review-card"]')[n];
  const { queue, task } = state.review;
  try {
    let row = null;
    if (action === 'accept') {
      if (!it.suggested) { toast('no suggestion here: k keeps the given label, r relabels'); return; }
      row = await decide(it.id, task, it.suggested, queue);
    } else if (action === 'keep') row = await decide(it.id, task, it.label, queue);
    else if (action === 'unknown') row = await decide(it.id, task, null, queue);
    else if (action === 'relabel') {
      row = await relabel(it.id, task, queue);
      if (!row) return;
    }
    if (row) {
      it.decision = row;
      card.classList.add('done');
      testid('review-decision', card).textContent = `decided: ${row.new || 'unknown'}`;
    }
    focusCard(n + 1);
  } catch (err) { fail(err); }
}

document.addEventListener('keydown', (e) => {
  if (testid('review-view').hidden || !testid('relabel-dialog').hidden) return;
  if (e.target.matches('input, select, textarea') || e.ctrlKey || e.metaKey || e.altKey) return;
  const actions = { a: 'accept', k: 'keep', r: 'relabel', u: 'unknown', s: 'skip', ArrowRight: 'skip' };
  if (actions[e.key]) { e.preventDefault(); act(actions[e.key]); } else if (e.key === 'ArrowLeft') { e.preventDefault(); focusCard(state.review.focus - 1); } else if (e.key === 'Escape') closeReview();
});

function closeReview() {
  testid('review-view').hidden = true;
  testid('review-open').value = '';
  if (state.stale) { state.stale = false; recolor().catch(fail); }
}
testid('review-close').addEventListener('click', closeReview);

// -- controls ----------------------------------------------------------------------------
function fillSelect(select, values, labels = values) {
  select.replaceChildren(...values.map((v, i) => el('option', { value: v, text: labels[i] })));
}

async function init() {
  const meta = await api('/api/meta');
  state.meta = meta;
  state.key = meta.key;
  state.task = meta.tasks[0];
  document.title = `${meta.collection} — featkit workbench`;
  testid('title').textContent = meta.collection;
  fillSelect(testid('key-select'), meta.keys);
  testid('key-select').value = meta.key;
  fillSelect(testid('task-select'), meta.tasks);
  const fields = meta.color_fields.filter((f) => (f !== 'group' || meta.has_group) && (f !== 'split' || meta.has_split));
  fillSelect(testid('color-select'), fields);
  fillSelect(testid('queue-select'), meta.queues);
  fillSelect(testid('review-task'), meta.tasks);
  meta.queues.forEach((queue) => testid('review-open').append(el('option', { value: queue, text: queue })));
  testid('key-select').addEventListener('change', (e) => { state.key = e.target.value; loadItems().catch(fail); });
  testid('task-select').addEventListener('change', (e) => { state.task = e.target.value; loadItems().catch(fail); });
  testid('color-select').addEventListener('change', (e) => { state.color = e.target.value; recolor().catch(fail); });
  testid('legend-search').addEventListener('input', renderLegend);
  testid('id-search').addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    const text = e.target.value.trim();
    const id = state.row.has(text) ? text : state.items.columns.id.find((i) => i.includes(text));
    if (id) openDetail(id).catch(fail); else toast(`no image id contains ${text}`, 'error');
  });
  testid('lasso-mode').addEventListener('change', (e) => {
    const mode = e.target.value;
    scatter.set(mode === 'off' ? { mouseMode: 'panZoom' } : { mouseMode: 'lasso', lassoType: mode });
  });
  testid('review-open').addEventListener('change', (e) => { if (e.target.value) openReview(e.target.value, state.task); });
  testid('queue-select').addEventListener('change', (e) => openReview(e.target.value, state.review.task));
  testid('review-task').addEventListener('change', (e) => openReview(state.review.queue, e.target.value));
  await loadItems();
  window.featkit.screenOf = (id) => {
    const [x, y] = scatter.getScreenPosition(state.row.get(id));
    const rect = canvas.getBoundingClientRect();
    return [rect.left + x, rect.top + y];
  };
}

init().catch((err) => { testid('status').textContent = `error: ${err.message}`; fail(err); });
