// HEMA3N Edge crew tablet. Plain JavaScript, no framework, no CDN: served by the daemon.
// The bearer token lives in sessionStorage (gone when the tab closes); every request carries it
// and the Territory-Id. Any 401 returns to the login screen.
'use strict';

const S = {
  token: sessionStorage.getItem('h3n.token'),
  me: null,
  territory: sessionStorage.getItem('h3n.territory'),
  stream: null,
  idleTimer: null,
  lastInput: Date.now(),
};

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const view = () => $('#view');
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' }) : '—');
const can = (p) => !!(S.me && S.me.permissions.includes(p));

function banner(msg, bad = false) {
  const b = $('#banner');
  if (!msg) { b.hidden = true; return; }
  b.textContent = msg;
  b.className = bad ? 'bad' : '';
  b.hidden = false;
}

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.code = body && body.error && body.error.code;
  }
}

// `opts.key`: send an Idempotency-Key (one per user action: a double tap stores once);
// `opts.ifMatch`: the version edited; `opts.text`: the reply is not JSON. The ETag of the reply
// is returned as `etag` on object replies.
async function api(method, path, body, opts = {}) {
  const headers = { 'Territory-Id': S.territory || '' };
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.key) headers['Idempotency-Key'] = opts.key;
  if (opts.ifMatch != null) headers['If-Match'] = `"${opts.ifMatch}"`;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  if (opts.text && r.ok) return r.text();
  const data = await r.json().catch(() => null);
  if (r.status === 401 && !path.endsWith('/auth/login')) {
    loggedOff((data && data.error && data.error.message) || 'Session ended; log in again');
    throw new HttpError(401, data);
  }
  if (!r.ok) throw new HttpError(r.status, data);
  const etag = r.headers.get('ETag');
  if (data && typeof data === 'object' && etag) Object.defineProperty(data, 'etag', { value: Number(etag.replace(/"/g, '')) });
  return data;
}

const newKey = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`);

// Runs one form submit: the button is disabled while it is in flight (a glove's double tap
// sends nothing twice), one request key per action, errors next to the form's own message slot.
async function submitOnce(form, fn) {
  const btns = form.querySelectorAll('button');
  const msg = form.querySelector('.err');
  if (form.dataset.busy) return;
  form.dataset.busy = '1';
  btns.forEach((b) => { b.disabled = true; });
  if (msg) msg.textContent = '';
  try { await fn(newKey()); }
  catch (e) {
    if (e.status === 401) return;
    const field = e.body && e.body.error && e.body.error.details && e.body.error.details.field;
    if (msg) msg.textContent = e.message + (field ? '' : '');
    else banner(e.message, true);
  } finally {
    delete form.dataset.busy;
    btns.forEach((b) => { b.disabled = false; });
  }
}

function loggedOff(msg) {
  stopStream();
  // After signing in again, the same user returns to the screen they were on.
  if (S.me && location.hash.startsWith('#/case')) {
    sessionStorage.setItem('h3n.return', JSON.stringify({ user: S.me.user.id, hash: location.hash }));
  }
  S.token = null; S.me = null;
  sessionStorage.removeItem('h3n.token');
  forgetAttachments();
  $('#bar').hidden = true;
  $('#idle-warn').hidden = true;
  // Shown by the render the hash change starts (one render, the message survives it).
  S.pending = msg;
  if (location.hash === '#/login') render(); else location.hash = '#/login';
}

// ---- idle logoff (client side mirror of the server's timer), warned one minute before ------
// Typing with an on-screen keyboard may send no keydown: input and change count too.
['pointerdown', 'keydown', 'touchstart', 'input', 'change'].forEach((e) => addEventListener(e, () => { S.lastInput = Date.now(); }, { passive: true, capture: true }));
function armIdle() {
  clearInterval(S.idleTimer);
  S.idleTimer = setInterval(() => {
    if (!S.token || !S.me) return;
    const left = S.me.idle_timeout_secs * 1000 - (Date.now() - S.lastInput);
    const warn = $('#idle-warn');
    if (left <= 0) {
      api('POST', '/api/v1/auth/logout').catch(() => {});
      loggedOff('Logged off after inactivity');
    } else if (left <= Math.min(60, S.me.idle_timeout_secs / 2) * 1000) {
      if (warn.hidden) saveDrafts();
      warn.hidden = false;
      $('#idle-left').textContent = Math.ceil(left / 1000);
    } else {
      warn.hidden = true;
    }
  }, 1000);
}
$('#stay').addEventListener('click', async () => {
  S.lastInput = Date.now();
  $('#idle-warn').hidden = true;
  try { await api('GET', '/api/v1/auth/me'); } catch (e) { /* 401 handled */ }
});

// ---- screens --------------------------------------------------------------------------------
const routes = [
  [/^#\/login$/, loginScreen],
  [/^#\/cases$/, casesScreen],
  [/^#\/new$/, newScreen],
  [/^#\/patient\/([0-9a-f-]+)$/, patientScreen],
  [/^#\/case\/([0-9a-f-]+)$/, caseScreen],
  [/^#\/handoff\/([0-9a-f-]+)$/, handoffScreen],
  [/^#\/audit(\?.*)?$/, auditScreen],
  [/^#\/grants$/, grantsScreen],
  [/^#\/review$/, reviewScreen],
  [/^#\/compliance$/, complianceScreen],
];

async function render() {
  stopStream();
  banner(null);
  let hash = location.hash || '#/cases';
  if (!S.token) hash = '#/login';
  if (S.token && !S.me) {
    try { S.me = await api('GET', '/api/v1/auth/me'); } catch (e) { return; }
    showBar();
  }
  for (const [re, fn] of routes) {
    const m = hash.match(re);
    if (m) {
      try { await fn(...m.slice(1)); } catch (e) { if (e.status !== 401) showError(e); }
      if (S.pending) { banner(S.pending, true); S.pending = null; }
      return;
    }
  }
  location.hash = '#/cases';
}

function showError(e) {
  if (e.status === 403 && e.code === 'FORBIDDEN') {
    view().innerHTML = `<h1 data-testid="forbidden">Not available for your role</h1>
      <p>Your role (${esc(S.me && S.me.user.role)}) cannot open clinical data. Use “Break glass” only in an emergency: it is audited and reviewed.</p>
      <a class="btn" href="#/cases">Back to cases</a>`;
  } else {
    banner(e.message, true);
  }
}

function showBar() {
  $('#bar').hidden = false;
  $('#who').textContent = `${S.me.user.display_name} · ${S.me.user.role} · ${S.me.territory}` + (S.me.break_glass_until_ms ? ' · BREAK-GLASS' : '');
  document.querySelectorAll('[data-perm]').forEach((el) => { el.hidden = !can(el.dataset.perm); });
  armIdle();
  refreshSync();
}

async function refreshSync() {
  if (!can('SyncRead')) { $('#sync').hidden = true; return; }
  try {
    const s = await api('GET', '/api/v1/sync');
    $('#sync').hidden = false;
    $('#sync').textContent = `Cloud: ${s.link} · ${s.outbox.queued + s.outbox.sent} waiting`;
  } catch (e) { /* shown elsewhere */ }
}

async function loginScreen() {
  $('#bar').hidden = true;
  view().innerHTML = `
    <form class="login card" id="login-form" autocomplete="off">
      <h1>HEMA3N crew login</h1>
      <label for="uid">User id</label><input id="uid" data-testid="login-user" autocapitalize="none" required>
      <label for="pin">PIN / password</label><input id="pin" data-testid="login-pin" type="password" inputmode="numeric" required>
      <label for="terr">Territory</label><input id="terr" data-testid="login-territory" value="${esc(S.territory || '')}" placeholder="your territory">
      <p><button class="primary" type="submit" data-testid="login-submit">Log in</button></p>
      <p class="muted" id="login-msg" data-testid="login-msg"></p>
    </form>`;
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const r = await api('POST', '/api/v1/auth/login', { user_id: $('#uid').value.trim(), secret: $('#pin').value });
      S.token = r.token;
      S.territory = $('#terr').value.trim() || r.user.territory;
      sessionStorage.setItem('h3n.token', S.token);
      sessionStorage.setItem('h3n.territory', S.territory);
      S.me = null; S.lastInput = Date.now();
      // A mistyped territory is said here, on the login form.
      try { S.me = await api('GET', '/api/v1/auth/me'); } catch (e) {
        // No session is left behind for a territory the user cannot use.
        const asked = S.territory;
        S.territory = r.user.territory;
        await api('POST', '/api/v1/auth/logout').catch(() => {});
        S.territory = asked;
        S.token = null; sessionStorage.removeItem('h3n.token');
        $('#login-msg').textContent = e.code === 'TERRITORY_MISMATCH' ? `You have no access to territory “${S.territory}”: check the territory.` : e.message;
        return;
      }
      showBar();
      const back = JSON.parse(sessionStorage.getItem('h3n.return') || 'null');
      sessionStorage.removeItem('h3n.return');
      const next = back && back.user === r.user.id ? back.hash : '#/cases';
      // One render: by the hash change, or here when the hash stays the same.
      if (location.hash === next) await render(); else location.hash = next;
    } catch (e) {
      $('#login-msg').textContent = e.message;
    }
  });
}

async function casesScreen() {
  const r = await api('GET', '/api/v1/cases');
  const rows = r.cases.map((c) => `
    <a class="case" href="#/case/${esc(c.id)}" data-testid="case-row">
      <span class="esi l${esc(c.esi)}">${c.esi ? 'ESI ' + esc(c.esi) : '—'}</span>
      <span><strong>${esc(c.patient_name || 'Unnamed patient')}</strong><br>
      <span class="muted">${esc(c.status)} · opened ${fmtTime(c.created_at_ms)} · ${c.devices.length ? esc(c.devices.join(', ')) : 'no device'}</span></span>
    </a>`).join('');
  view().innerHTML = `<div class="row"><h1 class="grow">Cases</h1>
    ${can('PatientWrite') ? '<a class="btn primary" href="#/new" data-testid="new-patient">+ New patient</a>' : ''}</div>
    <div class="list">${rows || '<p>No cases yet.</p>'}</div>`;
}

const PATIENT_FIELDS = [['first_name', 'First name', 'text'], ['last_name', 'Last name', 'text'], ['date_of_birth', 'Date of birth', 'date'],
  ['estimated_age_years', 'Estimated age (years)', 'number'], ['mrn', 'MRN', 'text'], ['phone', 'Phone', 'tel']];

function patientForm(p = {}) {
  return PATIENT_FIELDS.map(([k, label, type]) => `<div><label for="pf-${k}">${label}</label>
      <input id="pf-${k}" data-testid="pf-${k}" type="${type}" ${type === 'number' ? 'min="0" max="120" inputmode="numeric"' : ''} value="${esc(p[k] ?? '')}"></div>`).join('') +
    `<div><label for="pf-sex">Sex</label><select id="pf-sex" data-testid="pf-sex">${['', 'female', 'male', 'other', 'unknown'].map((v) => `<option value="${v}" ${p.sex === v ? 'selected' : ''}>${v || '—'}</option>`).join('')}</select></div>`;
}

function readPatientForm() {
  const p = {};
  for (const [k, , type] of PATIENT_FIELDS) {
    const v = $('#pf-' + k).value.trim();
    p[k] = v === '' ? null : (type === 'number' ? Number(v) : v);
  }
  p.sex = $('#pf-sex').value || null;
  return p;
}

async function newScreen() {
  view().innerHTML = `
    <h1>Known patient?</h1>
    <form id="ps" class="card"><div class="grid">
      <div><label for="ps-last">Last name</label><input id="ps-last" data-testid="ps-last"></div>
      <div><label for="ps-dob">Date of birth</label><input id="ps-dob" type="date"></div>
      <div><label for="ps-mrn">MRN</label><input id="ps-mrn"></div></div>
      <p class="row"><button type="submit" data-testid="ps-search">Search</button><span class="err" data-testid="ps-error"></span></p>
      <ul class="entries" id="ps-hits" data-testid="ps-hits"></ul></form>
    <h1>New patient</h1>
    <p class="muted">Everything is optional: register now, complete later (Edit patient on the case).</p>
    <form id="np">
      <div class="grid">${patientForm()}
      <div class="full"><label for="cc">Chief complaint</label><input id="cc" data-testid="complaint"></div></div>
      <p class="row">${can('ClinicalWrite') ? '<button class="primary" type="submit" data-testid="register">Register and open case</button>' : '<button class="primary" type="submit" data-testid="register">Register patient</button>'}
      <span class="err" data-testid="np-error"></span></p>
    </form>`;
  $('#ps').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submitOnce($('#ps'), async () => {
      const q = new URLSearchParams();
      for (const [k, id] of [['last_name', 'ps-last'], ['date_of_birth', 'ps-dob'], ['mrn', 'ps-mrn']]) { const v = $('#' + id).value.trim(); if (v) q.set(k, v); }
      if (![...q.keys()].length) { $('#ps .err').textContent = 'Enter a last name, a date of birth or an MRN'; return; }
      const r = await api('GET', `/api/v1/patients?${q}`);
      $('#ps-hits').innerHTML = r.patients.map((p) => `<li data-testid="ps-hit"><span><strong>${esc([p.first_name, p.last_name].filter(Boolean).join(' ') || 'Unnamed')}</strong>
        ${esc(p.date_of_birth || (p.estimated_age_years != null ? '~' + p.estimated_age_years + ' y' : ''))} ${esc(p.sex || '')} ${p.mrn ? 'MRN ' + esc(p.mrn) : ''}</span>
        ${can('ClinicalWrite') ? `<button type="button" class="primary" data-open="${esc(p.id)}" data-testid="ps-open">Open a case</button>` : ''}</li>`).join('') || '<li class="muted">No patient found.</li>';
      document.querySelectorAll('[data-open]').forEach((b) => b.addEventListener('click', () => submitOnce($('#ps'), async () => {
        const body = { patient_id: b.dataset.open };
        const cc = $('#cc').value.trim();
        if (cc) body.chief_complaint = cc;
        const c = await api('POST', '/api/v1/cases', body);
        location.hash = `#/case/${c.id}`;
      })));
    });
  });
  $('#np').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submitOnce($('#np'), async () => {
      const p = Object.fromEntries(Object.entries(readPatientForm()).filter(([, v]) => v != null));
      const pat = await api('POST', '/api/v1/patients', p);
      if (!can('ClinicalWrite')) { banner('Patient registered'); location.hash = '#/cases'; return; }
      const body = { patient_id: pat.id };
      const cc = $('#cc').value.trim();
      if (cc) body.chief_complaint = cc;
      const c = await api('POST', '/api/v1/cases', body);
      location.hash = `#/case/${c.id}`;
    });
  });
}

async function patientScreen(id) {
  const p = await api('GET', `/api/v1/patients/${id}`);
  const back = sessionStorage.getItem('h3n.case') || '';
  view().innerHTML = `<h1>Patient</h1>
    <form id="pe"><div class="grid">${patientForm(p)}</div>
    <p class="row"><button class="primary" type="submit" data-testid="patient-save">Save</button>
    ${back ? `<a class="btn" href="#/case/${esc(back)}" data-testid="patient-back">Back to case</a>` : '<a class="btn" href="#/cases">Back</a>'}
    <span class="err" data-testid="pe-error"></span></p></form>`;
  $('#pe').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submitOnce($('#pe'), async () => {
      // Only what changed, against the version shown (another tablet's edit is not lost).
      const now = readPatientForm(), patch = {};
      for (const [k, v] of Object.entries(now)) if ((p[k] ?? null) !== v) patch[k] = v;
      await api('PATCH', `/api/v1/patients/${id}`, patch, { ifMatch: p.version });
      location.hash = back ? `#/case/${back}` : '#/cases';
    });
  });
}

const VITALS = [
  ['heart_rate', 'HR', 'beat/min', [51, 90]], ['resp_rate', 'RR', '/min', [12, 20]], ['spo2', 'SpO₂', '%', [96, 100]],
  ['sbp', 'SBP', 'mmHg', [111, 219]], ['temp', 'Temp', '°C', [36.1, 38]], ['etco2', 'EtCO₂', 'mmHg', [35, 45]],
  ['gcs_total', 'GCS', '', [15, 15]], ['avpu', 'AVPU', '', [0, 0]], ['glucose', 'Glucose', 'mg/dL', [70, 180]],
];
const AVPU = ['A', 'C', 'V', 'P', 'U'];

function spark(points) {
  if (points.length < 2) return '';
  const xs = points.map((p) => p.t_ms), ys = points.map((p) => p.value);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pts = points.map((p) => `${((p.t_ms - x0) / Math.max(1, x1 - x0) * 200).toFixed(1)},${(55 - (p.value - y0) / Math.max(1e-9, y1 - y0) * 50).toFixed(1)}`).join(' ');
  return `<svg viewBox="0 0 200 60" preserveAspectRatio="none" aria-hidden="true"><polyline points="${pts}"/></svg>`;
}

function triageHtml(t) {
  if (!t) return '<p data-testid="triage-none">No triage yet: it appears when vitals arrive.</p>';
  const conf = t.confidence == null ? '—' : Math.round(t.confidence * 100) + ' %';
  return `<div class="row"><span class="esi big l${esc(t.esi)}" data-testid="triage-esi">ESI ${esc(t.esi)}</span>
    <div><div><strong>Confidence:</strong> <span data-testid="triage-confidence">${conf}</span></div>
    <div><strong>Decided by:</strong> ${esc(t.decider)}${t.news2 != null ? ` · NEWS2 ${esc(t.news2)}` : ''}${t.specialty ? ` · ${esc(t.specialty)}` : ''}</div>
    <div class="muted">${fmtTime(t.created_at_ms)}${t.model_id ? ' · ' + esc(t.model_id) : ''}${t.abstained ? ' · model abstained: ' + esc(t.abstained) : ''}</div></div></div>
    <ul class="reasons" data-testid="triage-reasons">${t.reasons.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>`;
}

const VITAL_LABEL = Object.fromEntries(VITALS.map(([n, l, u]) => [n, [l, u]]));
// Clinical precision: temperature to 0.1 °C, everything else whole numbers.
const fmtVital = (name, v) => (name === 'avpu' ? AVPU[v] || '?' : name === 'temp' ? Number(v).toFixed(1) : String(Math.round(v)));
const TIMES = [['call_received_ms', 'Call received'], ['dispatched_ms', 'Dispatched'], ['en_route_ms', 'En route'], ['on_scene_ms', 'On scene'],
  ['at_patient_ms', 'At patient'], ['left_scene_ms', 'Left scene'], ['at_destination_ms', 'At destination'], ['transfer_of_care_ms', 'Transfer of care'], ['in_service_ms', 'Back in service']];
const label = (list, v) => ((S.codes[list] || []).find((o) => o.value === v) || { label: v ?? '—' }).label;
const opts = (list, cur, blank = true) => (blank ? '<option value="">—</option>' : '') + (S.codes[list] || []).map((o) => `<option value="${esc(o.value)}" ${o.value === cur ? 'selected' : ''}>${esc(o.label)}</option>`).join('');
const toLocal = (ms) => { if (!ms) return ''; const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 16); };

async function caseScreen(id) {
  if (!S.codes) S.codes = await api('GET', '/api/v1/record/codes');
  sessionStorage.setItem('h3n.case', id);
  const c = await api('GET', `/api/v1/cases/${id}`);
  const st = { id, c, vitals: c.vitals, lastId: c.vitals.reduce((m, o) => Math.max(m, o.id), 0), tab: S.tab || 'times', dirty: {}, drafts: {} };
  // Unsaved forms kept across a logoff (server-side, sealed), restored into their forms.
  if (can('ClinicalWrite') && c.status !== 'closed') {
    try { for (const d of (await api('GET', `/api/v1/cases/${id}/drafts`)).drafts) st.drafts[d.form] = d; } catch (e) { /* none */ }
    const first = Object.values(st.drafts)[0];
    if (first && first.body.tab) st.tab = first.body.tab;
  }
  S.caseState = st;
  const p = c.patient || {};
  const closed = c.status === 'closed';
  const age = p.date_of_birth ? `${Math.floor((Date.now() - Date.parse(p.date_of_birth)) / 31557600000)} y` : (p.estimated_age_years != null ? `~${p.estimated_age_years} y (est.)` : '');
  view().innerHTML = `
    <div class="row"><h1 class="grow" data-testid="case-title">${esc([p.first_name, p.last_name].filter(Boolean).join(' ') || 'Unknown patient')}
      <span class="muted">${esc(age)} ${esc(p.sex || '')}</span></h1>
      ${c.patient_id && can('PatientWrite') && !closed ? `<a class="btn" href="#/patient/${esc(c.patient_id)}" data-testid="edit-patient">Edit patient</a>` : ''}
      <span class="pill" data-testid="case-status">${esc(c.status)}</span>
      <a class="btn" href="#/handoff/${esc(id)}" data-testid="handoff">Handoff</a>
      ${closed || !can('ClinicalWrite') ? '' : '<button class="warn" id="close" data-testid="close-case">Close case</button>'}</div>
    <p class="err" id="close-err" data-testid="close-error"></p>
    <div id="alarms"></div>
    <div class="first">
      <section><div id="triage" data-testid="triage">${triageHtml(c.triage[0])}</div></section>
      <section><div id="tiles" class="grid tiles" data-testid="vitals"></div></section>
    </div>
    <nav class="tabs" id="tabs">${[['times', 'Times'], ['vitals', 'Vitals'], ['oxygen', 'Oxygen'], ['procedure', 'Interventions'], ['medication', 'Medications'],
      ['assessment', 'Assessment'], ['scene', 'Scene'], ['situation', 'Impression'], ['history', 'History'], ['incident', 'Incident'], ['disposition', 'Disposition'], ['narrative', 'Narrative'], ['attachments', 'Photos & files'], ['devices', 'Devices & sync']]
      .map(([t, l]) => `<button type="button" data-tab="${t}" data-testid="tab-${t}">${l}</button>`).join('')}</nav>
    <div id="panel"></div>`;
  drawTiles(st);
  drawAlarms(c.alarms);
  if (!closed && can('ClinicalWrite')) {
    $('#close').addEventListener('click', async () => {
      if (!confirm('Close this case? It will be sealed and sent to the hospital cloud.')) return;
      try { await api('POST', `/api/v1/cases/${id}/close`); await render(); }
      catch (e) { if (e.status !== 401) $('#close-err').textContent = e.message; }
    });
  }
  document.querySelectorAll('[data-tab]').forEach((b) => b.addEventListener('click', () => { st.tab = S.tab = b.dataset.tab; drawPanel(st); }));
  await refreshRecord(st);
  startStream(id, st);
}

// Re-reads the case and its record and redraws in place: no new live stream.
async function refreshCase(st) {
  st.c = await api('GET', `/api/v1/cases/${st.id}`);
  st.vitals = st.c.vitals;
  drawTiles(st);
  drawAlarms(st.c.alarms);
  if (st.c.triage[0]) $('#triage').innerHTML = triageHtml(st.c.triage[0]);
  await refreshRecord(st);
}

async function refreshRecord(st) {
  st.rec = await api('GET', `/api/v1/cases/${st.id}/record`);
  drawPanel(st);
}

const current = (st, kind) => st.rec.entries.filter((e) => e.kind === kind && e.state === 'recorded');
const section = (st, kind) => { const e = current(st, kind)[0]; return { v: e ? e.content : {}, version: e ? e.version : 0 }; };

function entryList(st, kind, summary) {
  const rows = st.rec.entries.filter((e) => e.kind === kind).sort((a, b) => (a.content.at_ms || 0) - (b.content.at_ms || 0));
  if (!rows.length) return '<p class="muted">None recorded.</p>';
  const closed = st.c.status === 'closed';
  return `<ul class="entries">${rows.map((e) => `<li data-testid="entry-${kind}" class="${e.state === 'entered_in_error' ? 'eie' : ''}">
    <span>${fmtTime(e.content.at_ms)} · ${esc(summary(e.content))} · ${esc(e.recorded_by)}${e.state === 'entered_in_error' ? ` · entered in error: ${esc(e.reason)}` : ''}</span>
    ${e.state === 'recorded' && !closed && can('ClinicalWrite') ? `<button type="button" data-eie="${esc(e.entry_id)}" data-testid="eie-${kind}">Entered in error</button>` : ''}</li>`).join('')}</ul>`;
}

// Fills a panel form from its draft, and keeps track of what is typed and not yet saved.
function trackForms(st) {
  document.querySelectorAll('#panel form[id]').forEach((f) => {
    const d = st.drafts[f.id];
    if (d) {
      for (const [k, v] of Object.entries(d.body)) {
        const el = f.querySelector(`[name="${k}"]`);
        if (el) { if (el.type === 'checkbox') el.checked = !!v; else el.value = v ?? ''; }
      }
      f.insertAdjacentHTML('afterbegin', `<p class="note" data-testid="draft-restored">Restored what you had typed at ${fmtTime(d.saved_at_ms)} (not saved yet).</p>`);
      st.dirty[f.id] = d.body;
    }
    f.addEventListener('input', () => {
      const v = { tab: st.tab };
      f.querySelectorAll('[name]').forEach((el) => { v[el.name] = el.type === 'checkbox' ? el.checked : el.value; });
      st.dirty[f.id] = v;
    });
  });
}

// Saves every form with unsaved input (before an idle logoff, when the tab is hidden).
async function saveDrafts() {
  const st = S.caseState;
  if (!st || !S.token || !location.hash.startsWith('#/case/')) return;
  for (const [form, body] of Object.entries(st.dirty)) {
    if (Object.keys(body).length < 2) continue;
    try { await api('PUT', `/api/v1/cases/${st.id}/drafts/${form}`, body); } catch (e) { /* kept in the tab */ }
  }
}
addEventListener('pagehide', () => { saveDrafts(); });

async function dropDraft(st, form) {
  delete st.dirty[form];
  if (st.drafts[form]) {
    delete st.drafts[form];
    try { await api('DELETE', `/api/v1/cases/${st.id}/drafts/${form}`); } catch (e) { /* stale draft is harmless */ }
  }
}

function drawPanel(st) {
  drawPanelInner(st);
  trackForms(st);
}

function drawPanelInner(st) {
  document.querySelectorAll('[data-tab]').forEach((b) => b.classList.toggle('on', b.dataset.tab === st.tab));
  const closed = st.c.status === 'closed';
  const write = can('ClinicalWrite') && !closed;
  const P = $('#panel');
  const form = (id, inner, button = 'Save') => `<form id="${id}" class="card">${inner}
    ${write ? `<p class="row"><button class="primary" type="submit" data-testid="${id}-save">${button}</button><span class="err" data-testid="${id}-error"></span></p>` : ''}</form>`;
  const t = st.tab;
  if (t === 'times') {
    const { v } = section(st, 'times');
    P.innerHTML = `<div class="times">${TIMES.map(([k, l]) => `<div class="time card"><div><strong>${l}</strong><br><span data-testid="time-${k}">${v[k] ? fmtTime(v[k]) : '—'}</span></div>
      ${write ? `<div class="row"><button type="button" class="primary" data-now="${k}" data-testid="now-${k}">Now</button>
      <input type="datetime-local" step="1" data-at="${k}" value="${toLocal(v[k])}" aria-label="${l} (correct)"><button type="button" data-set="${k}">Set</button></div>` : ''}</div>`).join('')}</div>
      <p class="err" id="times-err" data-testid="times-error"></p>`;
    const send = (patch, btn) => submitOnce(btn.closest('.time'), async (key) => {
      try { await api('PATCH', `/api/v1/cases/${st.id}/record/times`, patch, { key }); await refreshRecord(st); }
      catch (e) { if (e.status !== 401) $('#times-err').textContent = e.message; }
    });
    P.querySelectorAll('[data-now]').forEach((b) => b.addEventListener('click', () => send({ [b.dataset.now]: Date.now() }, b)));
    P.querySelectorAll('[data-set]').forEach((b) => b.addEventListener('click', () => {
      const inp = P.querySelector(`[data-at="${b.dataset.set}"]`);
      if (!inp.value) { $('#times-err').textContent = 'Pick a date and time first'; return; }
      send({ [b.dataset.set]: new Date(inp.value).getTime() }, b);
    }));
    return;
  }
  if (t === 'vitals') {
    const manual = st.vitals.filter((o) => o.source === 'manual').slice(-10);
    P.innerHTML = (write ? `<form id="mv" class="card row" novalidate>
      <select id="mv-name" data-testid="mv-name">${VITALS.map(([n, l]) => `<option value="${n}">${l}</option>`).join('')}</select>
      <input id="mv-value" data-testid="mv-value" placeholder="value" inputmode="decimal" class="narrow">
      <button type="submit" class="primary" data-testid="mv-save">Save</button><span class="err" data-testid="mv-error"></span></form>` : '') +
      `<h2>Entered by hand</h2><ul class="entries">${manual.map((o) => `<li data-testid="manual-vital"><span>${fmtTime(o.t_ms)} · ${esc(VITAL_LABEL[o.name] ? VITAL_LABEL[o.name][0] : o.name)} ${esc(fmtVital(o.name, o.value))} ${esc(o.unit || '')}</span>
        ${write ? `<button type="button" data-void-reading="${o.id}" data-testid="eie-vital">Entered in error</button>` : ''}</li>`).join('') || '<li class="muted">None.</li>'}</ul>`;
    const f = $('#mv');
    if (f) f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const name = $('#mv-name').value, raw = $('#mv-value').value.trim();
      // Refused before it is sent: empty or not a number never becomes 0.
      if (!raw) { f.querySelector('.err').textContent = 'Enter a value'; return; }
      if (name !== 'avpu' && !/^-?\d+(\.\d+)?$/.test(raw)) { f.querySelector('.err').textContent = 'Enter a number'; return; }
      const reading = name === 'avpu' ? { name, vs: raw.toUpperCase() } : { name, value: Number(raw) };
      submitOnce(f, async (key) => { await api('POST', `/api/v1/cases/${st.id}/vitals`, { readings: [reading] }, { key }); $('#mv-value').value = ''; await refreshCase(st); });
    });
    P.querySelectorAll('[data-void-reading]').forEach((b) => b.addEventListener('click', async () => {
      const reason = prompt('Why is this reading in error? (kept in the history, left out of triage and handoff)');
      if (!reason) return;
      try { await api('POST', `/api/v1/cases/${st.id}/vitals/${b.dataset.voidReading}/entered-in-error`, { reason }); await refreshCase(st); }
      catch (e) { if (e.status !== 401) banner(e.message, true); }
    }));
    return;
  }
  const onSubmit = (id, build, path, method = 'POST') => {
    const f = $('#' + id);
    if (!f) return;
    f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitOnce(f, async (key) => { await api(method, `/api/v1/cases/${st.id}/${path}`, build(f), { key }); await dropDraft(st, id); await refreshRecord(st); });
    });
  };
  const val = (f, n) => { const x = f.querySelector(`[name=${n}]`); const v = x.type === 'checkbox' ? x.checked : x.value.trim(); return v === '' ? null : v; };
  const num = (f, n) => { const v = val(f, n); return v == null ? null : Number(v); };
  const list = (f, n) => { const v = val(f, n); return v == null ? null : v.split(/[,;\n]/).map((x) => x.trim()).filter(Boolean); };
  const eieHandlers = () => P.querySelectorAll('[data-eie]').forEach((b) => b.addEventListener('click', async () => {
    const reason = prompt('Why is this entry in error? (kept in the history, left out of triage, handoff and exports)');
    if (!reason) return;
    try { await api('POST', `/api/v1/cases/${st.id}/record/entries/${b.dataset.eie}/entered-in-error`, { reason }, { key: newKey() }); await refreshRecord(st); }
    catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
  if (t === 'oxygen') {
    const sc = section(st, 'spo2_scale').v;
    P.innerHTML = `<p data-testid="oxygen-state"><strong>${st.rec.oxygen.on_oxygen ? 'On supplemental oxygen' : 'On room air'}</strong>${st.rec.oxygen.spo2_scale2 ? ' · SpO₂ scale 2 in use' : ''}</p>` +
      form('o2', `<div class="grid"><div><label>Flow (L/min)</label><select name="flow" data-testid="o2-flow">${[1, 2, 3, 4, 6, 8, 10, 12, 15].map((x) => `<option>${x}</option>`).join('')}</select></div>
        <div><label>Device</label><select name="device" data-testid="o2-device">${opts('oxygen_device', 'nasal_cannula', false)}</select></div>
        <div><label>Action</label><select name="action" data-testid="o2-action">${opts('oxygen_action', st.rec.oxygen.on_oxygen ? 'change' : 'start', false)}</select></div></div>`, 'Record oxygen') +
      entryList(st, 'oxygen', (o) => `${label('oxygen_action', o.action)}${o.flow_l_min ? ` ${o.flow_l_min} L/min` : ''}${o.device ? ' ' + label('oxygen_device', o.device) : ''}`) +
      (can('Medication') && !closed ? form('s2', `<label class="chk"><input type="checkbox" name="scale2" data-testid="s2-on" ${sc.scale2 ? 'checked' : ''}> Use SpO₂ scale 2 (confirmed hypercapnic respiratory failure)</label>
        <label>Reason</label><input name="reason" data-testid="s2-reason" value="${esc(sc.reason || '')}">`, 'Save scale') : '');
    onSubmit('o2', (f) => { const a = val(f, 'action'); return a === 'stop' ? { at_ms: Date.now(), action: a } : { at_ms: Date.now(), action: a, flow_l_min: num(f, 'flow'), device: val(f, 'device') }; }, 'record/oxygen');
    onSubmit('s2', (f) => ({ scale2: val(f, 'scale2'), reason: val(f, 'reason') }), 'record/spo2_scale', 'PATCH');
    eieHandlers();
    return;
  }
  if (t === 'procedure') {
    P.innerHTML = form('pr', `<div class="grid"><div><label>Intervention</label><select name="procedure" data-testid="pr-code">${opts('procedure', 'iv_access', false)}</select></div>
      <div><label>Site</label><input name="site" data-testid="pr-site"></div><div><label>Size</label><input name="size"></div>
      <div><label>Attempts</label><select name="attempts">${[1, 2, 3, 4, 5].map((x) => `<option>${x}</option>`).join('')}</select></div>
      <div><label>Successful</label><select name="successful" data-testid="pr-success"><option value="true">Yes</option><option value="false">No</option></select></div></div>`, 'Record intervention') +
      entryList(st, 'procedure', (x) => `${label('procedure', x.procedure)}${x.site ? ' · ' + x.site : ''} · ${x.successful ? 'successful' : 'unsuccessful'} (${x.attempts} attempt${x.attempts > 1 ? 's' : ''})`);
    onSubmit('pr', (f) => ({ at_ms: Date.now(), procedure: val(f, 'procedure'), site: val(f, 'site'), size: val(f, 'size'), attempts: num(f, 'attempts'), successful: val(f, 'successful') === 'true' }), 'record/procedure');
    eieHandlers();
    return;
  }
  if (t === 'medication') {
    P.innerHTML = (can('Medication') && !closed ? `<form id="md" class="card"><div class="grid"><div><label>Medication</label><select name="medication" data-testid="md-med">${opts('medication', 'salbutamol', false)}</select></div>
      <div><label>Dose</label><input name="dose" data-testid="md-dose" inputmode="decimal"></div>
      <div><label>Unit</label><select name="dose_unit" data-testid="md-unit">${opts('dose_unit', 'mg', false)}</select></div>
      <div><label>Route</label><select name="route" data-testid="md-route">${opts('med_route', 'iv', false)}</select></div>
      <div><label>Response</label><select name="response">${opts('med_response', '')}</select></div>
      <div><label>Note (name, if other)</label><input name="note"></div></div>
      <p class="row"><button class="primary" type="submit" data-testid="md-save">Record medication</button><span class="err" data-testid="md-error"></span></p></form>`
      : '<p class="muted">Medications are recorded by a paramedic.</p>') +
      entryList(st, 'medication', (m) => `${m.medication === 'other' ? m.note || 'other' : label('medication', m.medication)}${m.dose != null ? ` ${m.dose} ${label('dose_unit', m.dose_unit)}` : ''}${m.route ? ' ' + label('med_route', m.route) : ''}${m.response ? ' · ' + label('med_response', m.response) : ''}`);
    const f = $('#md');
    if (f) f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const dose = val(f, 'dose');
      if (!dose || !/^\d+(\.\d+)?$/.test(dose)) { f.querySelector('.err').textContent = 'Enter the dose as a number'; return; }
      submitOnce(f, async (key) => {
        await api('POST', `/api/v1/cases/${st.id}/record/medication`, { at_ms: Date.now(), medication: val(f, 'medication'), dose: Number(dose), dose_unit: val(f, 'dose_unit'), route: val(f, 'route'), response: val(f, 'response'), note: val(f, 'note') }, { key });
        await dropDraft(st, 'md');
        await refreshRecord(st);
      });
    });
    eieHandlers();
    return;
  }
  if (t === 'assessment') {
    const sel = (n, lo, hi) => `<select name="${n}" data-testid="as-${n}"><option value="">—</option>${Array.from({ length: hi - lo + 1 }, (_, i) => `<option>${lo + i}</option>`).join('')}</select>`;
    P.innerHTML = form('as', `<div class="grid"><div><label>GCS eyes</label>${sel('gcs_eye', 1, 4)}</div><div><label>GCS verbal</label>${sel('gcs_verbal', 1, 5)}</div>
      <div><label>GCS motor</label>${sel('gcs_motor', 1, 6)}</div><div><label>Pain (0–10)</label>${sel('pain', 0, 10)}</div>
      <div><label>Pupils</label><select name="pupils">${opts('pupils', '')}</select></div><div><label>Skin</label><select name="skin">${opts('skin', '')}</select></div></div>
      <fieldset><legend>BE-FAST (tick positive findings)</legend><div class="row">${['balance', 'eyes', 'face', 'arm', 'speech'].map((k) => `<label class="chk"><input type="checkbox" name="bf_${k}"> ${k}</label>`).join('')}
      <label class="chk"><input type="checkbox" name="bf_done" data-testid="as-befast"> screen done</label></div></fieldset>`, 'Record assessment') +
      entryList(st, 'assessment', (a) => [a.gcs_eye && `GCS ${a.gcs_eye + a.gcs_verbal + a.gcs_motor} (E${a.gcs_eye}V${a.gcs_verbal}M${a.gcs_motor})`, a.pupils && 'pupils ' + label('pupils', a.pupils),
        a.skin && 'skin ' + label('skin', a.skin), a.befast && `BE-FAST ${Object.values(a.befast).some(Boolean) ? 'positive' : 'negative'}`, a.pain != null && `pain ${a.pain}/10`].filter(Boolean).join(' · '));
    onSubmit('as', (f) => {
      const b = { at_ms: Date.now() };
      for (const n of ['gcs_eye', 'gcs_verbal', 'gcs_motor', 'pain']) { const v = num(f, n); if (v != null) b[n] = v; }
      for (const n of ['pupils', 'skin']) { const v = val(f, n); if (v) b[n] = v; }
      if (val(f, 'bf_done')) b.befast = Object.fromEntries(['balance', 'eyes', 'face', 'arm', 'speech'].map((k) => [k, !!val(f, 'bf_' + k)]));
      return b;
    }, 'record/assessment');
    eieHandlers();
    return;
  }
  const patchSection = (id, kind, build) => {
    const f = $('#' + id);
    if (!f) return;
    const { version } = section(st, kind);
    f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitOnce(f, async (key) => { await api('PATCH', `/api/v1/cases/${st.id}/record/${kind}`, build(f), { key, ifMatch: version }); await dropDraft(st, id); await refreshRecord(st); });
    });
  };
  if (t === 'situation') {
    const { v } = section(st, 'situation');
    const imp = (S.codes.impression || []);
    P.innerHTML = form('si', `<datalist id="imps">${imp.map((o) => `<option value="${esc(o.value)}">${esc(o.label)}</option>`).join('')}</datalist>
      <div class="grid"><div><label>Primary impression (search)</label><input name="primary" list="imps" data-testid="si-primary" value="${esc(v.primary_impression ? v.primary_impression.code : '')}"></div>
      <div><label>Secondary impression</label><input name="secondary" list="imps" value="${esc(v.secondary_impressions && v.secondary_impressions[0] ? v.secondary_impressions[0].code : '')}"></div>
      <div><label>Possible injury</label><select name="injury"><option value="">—</option><option value="true" ${v.possible_injury === true ? 'selected' : ''}>Yes</option><option value="false" ${v.possible_injury === false ? 'selected' : ''}>No</option></select></div>
      <div><label>Cardiac arrest</label><select name="arrest">${opts('cardiac_arrest', v.cardiac_arrest)}</select></div>
      <div><label>Symptom onset</label><input type="datetime-local" name="onset" value="${toLocal(v.symptom_onset_ms)}"></div>
      <div><label>Last known well</label><input type="datetime-local" name="lkw" value="${toLocal(v.last_known_well_ms)}"></div></div>
      <p class="muted">${v.primary_impression ? esc(label('impression', v.primary_impression.code)) : ''}</p>`);
    patchSection('si', 'situation', (f) => {
      const ms = (n) => { const x = val(f, n); return x ? new Date(x).getTime() : null; };
      const pr = val(f, 'primary'), se = val(f, 'secondary'), inj = val(f, 'injury');
      return { primary_impression: pr ? { code: pr } : null, secondary_impressions: se ? [{ code: se }] : null, possible_injury: inj == null ? null : inj === 'true', cardiac_arrest: val(f, 'arrest'), symptom_onset_ms: ms('onset'), last_known_well_ms: ms('lkw') };
    });
    return;
  }
  if (t === 'scene') {
    const { v } = section(st, 'scene');
    P.innerHTML = form('sc', `<div class="grid"><div><label>Latitude</label><input name="lat" data-testid="sc-lat" inputmode="decimal" value="${esc(v.latitude ?? '')}"></div>
      <div><label>Longitude</label><input name="lon" data-testid="sc-lon" inputmode="decimal" value="${esc(v.longitude ?? '')}"></div>
      <div><label>Address</label><input name="address" data-testid="sc-address" value="${esc(v.address || '')}"></div>
      <div><label>Description</label><input name="description" value="${esc(v.description || '')}"></div>
      <div><label>Patients at scene</label><input name="count" inputmode="numeric" value="${esc(v.patient_count ?? '')}"></div>
      <div><label class="chk"><input type="checkbox" name="mci" ${v.mass_casualty ? 'checked' : ''}> Mass-casualty incident</label></div></div>
      ${write ? '<p><button type="button" id="geo" data-testid="sc-geo">Use this tablet\'s location</button> <span class="muted" id="geo-msg"></span></p>' : ''}`);
    const g = $('#geo');
    // Only when the crew allows it: the browser asks; without it, address and description.
    if (g) g.addEventListener('click', () => {
      if (!navigator.geolocation) { $('#geo-msg').textContent = 'No location on this tablet: enter the address'; return; }
      navigator.geolocation.getCurrentPosition((p) => {
        $('#sc [name=lat]').value = p.coords.latitude.toFixed(6);
        $('#sc [name=lon]').value = p.coords.longitude.toFixed(6);
        $('#geo-msg').textContent = `±${Math.round(p.coords.accuracy)} m`;
      }, (e) => { $('#geo-msg').textContent = `Location not available (${e.message}): enter the address`; }, { timeout: 10000 });
    });
    patchSection('sc', 'scene', (f) => {
      const n = (k) => { const x = val(f, k); return x == null ? null : Number(x); };
      return { latitude: n('lat'), longitude: n('lon'), address: val(f, 'address'), description: val(f, 'description'), patient_count: n('count'), mass_casualty: val(f, 'mci') };
    });
    return;
  }
  if (t === 'history') {
    const { v } = section(st, 'history');
    P.innerHTML = form('hi', `<label class="chk"><input type="checkbox" name="nkda" data-testid="hi-nkda" ${v.no_known_allergies ? 'checked' : ''}> No known drug allergies</label>
      <div class="grid"><div><label>Allergies (comma separated)</label><input name="allergies" data-testid="hi-allergies" value="${esc((v.allergies || []).join(', '))}"></div>
      <div><label>Medical / surgical history</label><input name="history" data-testid="hi-history" value="${esc((v.medical_history || []).join(', '))}"></div>
      <div><label>Current medications</label><input name="meds" value="${esc((v.current_medications || []).join(', '))}"></div>
      <div><label>Advance directive</label><select name="ad">${opts('advance_directive', v.advance_directive)}</select></div></div>`);
    patchSection('hi', 'history', (f) => ({ no_known_allergies: val(f, 'nkda') || null, allergies: list(f, 'allergies'), medical_history: list(f, 'history'), current_medications: list(f, 'meds'), advance_directive: val(f, 'ad') }));
    return;
  }
  if (t === 'incident') {
    const { v } = section(st, 'incident');
    P.innerHTML = form('in', `<div class="grid"><div><label>Incident number</label><input name="inc" data-testid="in-number" value="${esc(v.incident_number || '')}"></div>
      <div><label>Run number</label><input name="run" value="${esc(v.run_number || '')}"></div><div><label>Unit</label><input name="unit" value="${esc(v.unit || '')}"></div>
      <div><label>Dispatch reason</label><select name="reason" data-testid="in-reason">${opts('dispatch_reason', v.dispatch_reason)}</select></div>
      <div><label>Response mode</label><select name="mode" data-testid="in-mode">${opts('response_mode', v.response_mode)}</select></div>
      <div><label>My role</label><select name="role">${opts('crew_role', ((v.crew || []).find((m) => m.account === S.me.user.id) || {}).role || 'primary', false)}</select></div></div>`);
    patchSection('in', 'incident', (f) => {
      const crew = (v.crew || []).filter((m) => m.account !== S.me.user.id).concat([{ account: S.me.user.id, role: val(f, 'role') }]);
      return { incident_number: val(f, 'inc'), run_number: val(f, 'run'), unit: val(f, 'unit'), dispatch_reason: val(f, 'reason'), response_mode: val(f, 'mode'), crew };
    });
    return;
  }
  if (t === 'disposition') {
    const { v } = section(st, 'disposition');
    P.innerHTML = form('di', `<div class="grid"><div><label>Patient disposition</label><select name="pd" data-testid="di-patient">${opts('patient_disposition', v.patient_disposition)}</select></div>
      <div><label>Transport</label><select name="tr" data-testid="di-transport">${opts('transport_disposition', v.transport)}</select></div>
      <div><label>Transport mode</label><select name="tm">${opts('transport_mode', v.transport_mode)}</select></div>
      <div><label>Destination</label><input name="dest" data-testid="di-destination" value="${esc(v.destination || '')}"></div>
      <div><label>Reason for destination</label><select name="why">${opts('destination_reason', v.destination_reason)}</select></div>
      <div><label>ETA at destination</label><input type="datetime-local" name="eta" data-testid="di-eta" value="${esc(toLocal(v.eta_ms))}"></div>
      <div><label>Care handed to</label><input name="to" data-testid="di-to" value="${esc(v.transfer_to || '')}"></div></div>
      <fieldset><legend>Pre-alert the destination team (re-sends the pre-alert)</legend>${(S.codes.pre_arrival_alert || []).map((o) => `<label class="chk"><input type="checkbox" name="al-${esc(o.value)}" data-testid="di-alert-${esc(o.value)}" ${(v.alerts || []).includes(o.value) ? 'checked' : ''}>${esc(o.label)}</label>`).join('')}</fieldset>`);
    patchSection('di', 'disposition', (f) => {
      const eta = val(f, 'eta');
      const alerts = (S.codes.pre_arrival_alert || []).map((o) => o.value).filter((a) => f.querySelector(`[name="al-${a}"]`).checked);
      return { patient_disposition: val(f, 'pd'), transport: val(f, 'tr'), transport_mode: val(f, 'tm'), destination: val(f, 'dest'), destination_reason: val(f, 'why'), transfer_to: val(f, 'to'), eta_ms: eta ? new Date(eta).getTime() : null, alerts: alerts.length ? alerts : null };
    });
    return;
  }
  if (t === 'narrative') {
    const { v } = section(st, 'narrative');
    P.innerHTML = form('na', `<textarea name="text" rows="8" data-testid="na-text">${esc(v.text || '')}</textarea>`);
    patchSection('na', 'narrative', (f) => ({ text: val(f, 'text') }));
    return;
  }
  if (t === 'attachments') {
    P.innerHTML = '<p class="muted">Loading photos and files…</p>';
    drawAttachments(st).catch((e) => { if (e.status !== 401) showError(e); });
    return;
  }
  if (t === 'devices') {
    P.innerHTML = '<h2>Devices</h2><div id="devs"></div><h2>Sync</h2><div id="bundles" data-testid="sync-state"></div>';
    drawBundles(st.c);
    drawDevices(st.id, st.c, st);
  }
}

function drawTiles(st) {
  const byName = {};
  for (const o of st.vitals) (byName[o.name] = byName[o.name] || []).push(o);
  $('#tiles').innerHTML = VITALS.filter(([n]) => byName[n]).map(([n, label, unit, [lo, hi]]) => {
    const pts = byName[n].slice(-120);
    const last = pts[pts.length - 1];
    const abn = n === 'avpu' ? last.value > 0 : (last.value < lo || last.value > hi);
    return `<div class="tile${abn ? ' abn' : ''}" data-testid="tile-${n}"><div class="n">${label} <span class="muted">${unit}</span></div>
      <div class="v" data-testid="value-${n}">${esc(fmtVital(n, last.value))}</div>${n === 'avpu' ? '' : spark(pts)}
      <div class="muted">${fmtTime(last.t_ms)} · ${esc(last.device_id || 'manual')}</div></div>`;
  }).join('') || '<p data-testid="no-vitals">No vitals yet.</p>';
}

function drawAlarms(alarms) {
  $('#alarms').innerHTML = alarms.map((a) => `<div class="alarm" data-testid="alarm">${a.kind === 'device_silent' ? `Device ${esc(a.device_id)} silent` : esc(a.kind)} · ${esc(a.detail)} · since ${fmtTime(a.raised_at_ms)}</div>`).join('');
}

function drawBundles(c) {
  const rows = c.bundles.map((b) => `<li>${esc(b.kind)}: <span class="state-${esc(b.state)}" data-testid="bundle-state">${esc(b.state)}</span>${b.receipted_at_ms ? ' · receipt ' + fmtTime(b.receipted_at_ms) : ''}</li>`).join('');
  $('#bundles').innerHTML = c.status === 'closed'
    ? (rows ? `<ul>${rows}</ul>` : '<p data-testid="bundle-pending">Closed: sealing for the cloud…</p>')
    : (rows ? `<ul>${rows}</ul>` : '<p class="muted">Sent to the cloud when the case is closed.</p>');
}

async function drawDevices(id, c, st) {
  let free = [];
  if (can('DeviceRead') && c.status !== 'closed') {
    try { free = (await api('GET', '/api/v1/devices')).devices.filter((d) => !d.bound_case); } catch (e) { /* ignore */ }
  }
  $('#devs').innerHTML = `<div class="row">${c.devices.map((d) => `<span class="pill" data-testid="bound-device">${esc(d)}</span>
      ${c.status === 'closed' ? '' : `<button data-unbind="${esc(d)}">Unbind ${esc(d)}</button>`}`).join('') || '<span class="muted">No device bound.</span>'}</div>
    ${free.length ? `<form id="bind" class="row spaced"><select id="bind-dev" data-testid="bind-device">${free.map((d) => `<option value="${esc(d.id)}">${esc(d.id)} (${esc(d.presence)})</option>`).join('')}</select>
      <button type="submit" class="primary" data-testid="bind-submit">Bind device</button></form>` : ''}`;
  const f = $('#bind');
  if (f) f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    submitOnce(f, async () => {
      await api('POST', `/api/v1/cases/${id}/devices`, { device_id: $('#bind-dev').value });
      await refreshCase(st);
    });
  });
  document.querySelectorAll('[data-unbind]').forEach((b) => b.addEventListener('click', async () => {
    try { await api('DELETE', `/api/v1/cases/${id}/devices/${encodeURIComponent(b.dataset.unbind)}`); await refreshCase(st); }
    catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
}

// Live events over fetch (EventSource cannot send the Authorization header).
function startStream(id, st) {
  const ctl = new AbortController();
  S.stream = ctl;
  (async () => {
    try {
      const r = await fetch(`/api/v1/cases/${id}/stream?after=${st.lastId}`, {
        headers: { Authorization: `Bearer ${S.token}`, 'Territory-Id': S.territory }, signal: ctl.signal,
      });
      if (r.status === 401) { loggedOff('Session ended; log in again'); return; }
      if (!r.ok) return;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let ev = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) ev = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
          }
          if (ev !== 'message') onEvent(id, st, ev, data);
        }
      }
    } catch (e) { /* aborted or network: the next screen reconnects */ }
  })();
}

function onEvent(id, st, ev, data) {
  if (ev === 'vitals') {
    const obs = JSON.parse(data);
    st.vitals.push(...obs);
    st.lastId = obs.reduce((m, o) => Math.max(m, o.id), st.lastId);
    drawTiles(st);
    // A device that speaks again is no longer silent.
    const speaking = new Set(obs.map((o) => o.device_id));
    document.querySelectorAll('[data-testid=alarm]').forEach((a) => { for (const d of speaking) if (d && a.textContent.includes(`Device ${d} silent`)) a.remove(); });
  } else if (ev === 'triage') {
    $('#triage').innerHTML = triageHtml(JSON.parse(data));
  } else if (ev === 'alarm' || ev === 'case') {
    // Refreshed in place: the live stream stays the one open for this case.
    refreshCase(st).catch(() => {});
  } else if (ev === 'resync') {
    render();
  } else if (ev === 'logoff') {
    loggedOff('Logged off after inactivity');
  } else if (ev === 'grant_expired') {
    // The break-glass time box ended: this record is no longer open to us.
    stopStream();
    location.hash = '#/';
    banner('Break-glass access ended', true);
  }
}

function stopStream() {
  if (S.stream) { S.stream.abort(); S.stream = null; }
}

// Key vitals over the call as vector lines on one 0-based axis (they share tens to hundreds).
const TREND_COLOURS = { heart_rate: '#c81e2d', sbp: '#145ac8', spo2: '#1e8c3c', resp_rate: '#963caa', etco2: '#c87800' };
function trendSvg(trend) {
  const pts = trend.flatMap((s) => s.points);
  if (!pts.length) return '<p class="muted">No vitals recorded.</p>';
  const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]), t0 + 60000);
  const top = Math.max(100, Math.ceil(Math.max(...pts.map((p) => p[1])) / 50) * 50);
  const X = (t) => 40 + (t - t0) / (t1 - t0) * 740, Y = (v) => 190 - v / top * 180;
  const grid = [];
  for (let g = 0; g <= top; g += 50) grid.push(`<line x1="40" x2="780" y1="${Y(g)}" y2="${Y(g)}" class="grid"/><text x="4" y="${Y(g) + 5}">${g}</text>`);
  const lines = trend.map((s) => `<polyline data-code="${esc(s.code)}" stroke="${TREND_COLOURS[s.code] || '#000'}" points="${s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ')}"/>`).join('');
  const legend = trend.map((s) => `<span class="key"><i class="sw" data-code="${esc(s.code)}"></i>${esc(s.label)} (${esc(s.unit)})</span>`).join(' ');
  return `<svg viewBox="0 0 790 215" class="trend" role="img" aria-label="Vitals trend">${grid.join('')}${lines}
    <text x="40" y="210">${fmtTime(t0)}</text><text x="700" y="210">${fmtTime(t1)}</text></svg><p class="legend">${legend}</p>`;
}

async function handoffScreen(id) {
  const h = await api('GET', `/api/v1/cases/${id}/handoff`);
  const fmt = S.handoffFormat && S.handoffFormat[id] || h.suggested;
  const t = h.triage;
  const blocks = (fmt === 'mist' ? h.mist : h.sbar).map((b) => `<section class="block"><h2><span class="letter">${esc(b.letter)}</span> ${esc(b.title)}</h2>
    <ul>${b.lines.map((l) => `<li>${esc(l)}</li>`).join('')}</ul></section>`).join('');
  const tr = h.transfer;
  const handed = tr.to ? `Handed over by ${esc(tr.from.join(', ') || 'the crew')} to <strong>${esc(tr.to)}</strong>${tr.to_role ? ` (${esc(tr.to_role)})` : ''}${tr.at_ms ? ` at ${fmtTime(tr.at_ms)}` : ''}` : 'Not yet handed over';
  view().innerHTML = `<div class="row"><h1 class="grow" data-testid="handoff-title">Handoff: ${esc(h.patient)}</h1>
      <span class="pill" data-testid="handoff-status">${esc(h.status.replace('_', ' '))}</span></div>
    <div class="first"><div class="card">${t ? `<div class="row"><span class="esi big l${t.esi}" data-testid="handoff-esi">${t.esi}</span><div><strong>ESI ${t.esi}</strong>${t.news2 != null ? `<br>NEWS2 ${t.news2}` : ''}</div></div>
        <ul class="reasons" data-testid="handoff-reasons">${t.reasons.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>${t.model_note ? `<p class="muted">${esc(t.model_note)}</p>` : ''}` : '<p>No triage yet</p>'}</div>
      <div class="card"><p><strong>Complaint:</strong> ${esc(h.chief_complaint || '—')}</p>
        <p class="allergies" data-testid="handoff-allergies"><strong>Allergies:</strong> ${esc(h.allergies)}</p>
        ${h.alerts.length ? `<p class="alarm" data-testid="handoff-alerts">${esc(h.alerts.join(', '))}</p>` : ''}
        <p><strong>Destination:</strong> ${esc(h.destination || '—')}${h.eta_ms ? ` · ETA ${fmtTime(h.eta_ms)}` : ''}</p></div></div>
    <div class="row spaced"><span class="pill">Suggested: ${esc(h.suggested.toUpperCase())}</span>
      <button type="button" data-fmt="mist" data-testid="handoff-mist" class="${fmt === 'mist' ? 'primary' : ''}">MIST (trauma)</button>
      <button type="button" data-fmt="sbar" data-testid="handoff-sbar" class="${fmt === 'sbar' ? 'primary' : ''}">SBAR (medical)</button>
      <button type="button" id="pdf" data-testid="handoff-pdf">Download PDF</button></div>
    <div class="blocks" data-testid="handoff-blocks" data-format="${esc(fmt)}">${blocks}</div>
    <h2>Vitals trend</h2><div data-testid="handoff-trend">${trendSvg(h.trend)}</div>
    <h2>Times</h2><ul class="times-list" data-testid="handoff-times">${h.times.map((x) => `<li><strong>${fmtTime(x.at_ms)}</strong> ${esc(x.label)}</li>`).join('') || '<li>None recorded</li>'}</ul>
    <h2>Transfer of care</h2><p data-testid="handoff-transfer">${handed}</p>
    ${can('ClinicalWrite') && h.status !== 'closed' ? `<form id="xfer" class="card row" novalidate><input name="to" placeholder="Receiving clinician" data-testid="transfer-name" value="${esc(tr.to || '')}">
      <input name="role" placeholder="Role (e.g. ED charge nurse)" data-testid="transfer-role" value="${esc(tr.to_role || '')}">
      <button class="primary" type="submit" data-testid="transfer-submit">Record transfer of care</button><span class="err" data-testid="transfer-error"></span></form>` : ''}
    <p><a class="btn" href="#/case/${esc(id)}">Back to case</a></p>`;
  view().querySelectorAll('[data-fmt]').forEach((b) => b.addEventListener('click', () => {
    S.handoffFormat = { ...(S.handoffFormat || {}), [id]: b.dataset.fmt };
    handoffScreen(id).catch(showError);
  }));
  $('#pdf').addEventListener('click', () => downloadPdf(id, fmt).catch(showError));
  const f = $('#xfer');
  if (f) f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const to = f.querySelector('[name=to]').value.trim(), role = f.querySelector('[name=role]').value.trim();
    if (!to) { f.querySelector('.err').textContent = 'Name the clinician who takes over care'; return; }
    submitOnce(f, async (key) => {
      await api('POST', `/api/v1/cases/${id}/transfer`, { receiving_clinician: to, receiving_role: role || null }, { key });
      await handoffScreen(id);
    });
  });
}

// Files need the session's token, so they are fetched and handed to the browser as a download.
async function downloadFile(path, name) {
  const r = await authFetch(path);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

const downloadPdf = (id, fmt) => downloadFile(`/api/v1/cases/${id}/handoff/pdf?format=${fmt}`, `handoff-${id}.pdf`);

const AUDIT_FILTERS = ['patient', 'case', 'user', 'since', 'until'];

// The territory's trail, narrowed by patient, case, user and time; a patient's accounting of
// disclosures (CSV or FHIR) once a patient is chosen.
async function auditScreen(query) {
  const q = new URLSearchParams((query || '').replace(/^\?/, ''));
  const params = new URLSearchParams({ limit: '200' });
  AUDIT_FILTERS.forEach((k) => { if (q.get(k)) params.set(k, q.get(k)); });
  const r = await api('GET', `/api/v1/audit?${params}`);
  const patient = q.get('patient');
  const input = (k, label) => `<input name="${k}" placeholder="${label}" value="${esc(q.get(k) || '')}" data-testid="audit-${k}">`;
  const resource = (res) => {
    const m = /^patient\/([0-9a-f-]{36})$/.exec(res);
    return m ? `<a href="#/audit?patient=${m[1]}" data-testid="audit-patient-link">${esc(res)}</a>` : esc(res);
  };
  view().innerHTML = `<h1>Audit trail</h1>
    <form id="audit-filter" class="card row" novalidate>${input('patient', 'Patient id')}${input('case', 'Case id')}${input('user', 'User id')}
      ${input('since', 'Since (2026-12-07)')}${input('until', 'Until')}
      <button class="primary" type="submit" data-testid="audit-apply">Filter</button>
      <a class="btn ghost" href="#/audit" data-testid="audit-clear">Clear</a></form>
    ${patient ? `<p class="row" data-testid="accounting">Accounting of disclosures for this patient (every read and disclosure; the export is audited):
      <button class="btn" data-acct="csv" data-testid="acct-csv">CSV</button>
      <button class="btn" data-acct="fhir" data-testid="acct-fhir">FHIR AuditEvents</button></p>` : ''}
    <table data-testid="audit-table" data-filter="${esc(params.toString())}"><tr><th>#</th><th>Time</th><th>Actor</th><th>Role</th><th>Action</th><th>Resource</th><th>Outcome</th><th>Purpose</th><th>From</th></tr>
    ${r.entries.map((e) => `<tr data-testid="audit-row" data-actor="${esc(e.actor)}"><td>${e.seq}</td><td>${fmtTime(e.ts_ms)}</td><td>${esc(e.actor)}</td><td>${esc(e.role)}</td><td>${esc(e.action)}</td>
      <td>${resource(e.resource)}</td><td>${esc(e.outcome)}</td><td>${esc((e.details && e.details.purpose) || '')}</td>
      <td>${esc((e.details && e.details.access && e.details.access.address) || '')}</td></tr>`).join('')}</table>
    ${r.entries.length ? '' : '<p data-testid="audit-empty">No entry matches.</p>'}`;
  $('#audit-filter').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams();
    new FormData(ev.target).forEach((v, k) => { if (String(v).trim()) f.set(k, String(v).trim()); });
    location.hash = `#/audit${f.toString() ? `?${f}` : ''}`;
  });
  view().querySelectorAll('[data-acct]').forEach((b) => b.addEventListener('click', () => {
    const fmt = b.dataset.acct;
    downloadFile(`/api/v1/patients/${patient}/disclosures?format=${fmt}`, `disclosures-${patient}.${fmt === 'csv' ? 'csv' : 'json'}`).catch(showError);
  }));
}

// Access grants of the supervisor's territory: open one record to a user of another territory.
async function grantsScreen() {
  const r = await api('GET', '/api/v1/grants');
  const now = Date.now();
  const state = (g) => (g.revoked_at_ms ? 'revoked' : g.expires_at_ms <= now ? 'expired' : 'active');
  view().innerHTML = `<h1>Access grants</h1>
    <p>Open one case or patient of ${esc(S.me.territory)} to a named user of another territory (mutual aid, a receiving crew). Each use is audited; revoking ends it at once.</p>
    <form id="grant-new" class="card" novalidate>
      <div class="row"><input name="user_id" placeholder="User id (other territory)" data-testid="grant-user">
        <select name="kind" data-testid="grant-kind"><option value="case_id">Case</option><option value="patient_id">Patient</option></select>
        <input name="id" placeholder="Case or patient id" class="wide" data-testid="grant-id"></div>
      <div class="row"><select name="access" data-testid="grant-access"><option value="read">Read</option><option value="read_write">Read and write</option></select>
        <label>for <input name="minutes" type="number" min="1" value="60" data-testid="grant-minutes"> min</label>
        <input name="reason" placeholder="Reason (10 to 500 characters)" class="wide" data-testid="grant-reason">
        <button class="primary" type="submit" data-testid="grant-submit">Grant</button></div>
      <span class="err" data-testid="grant-error"></span></form>
    <table data-testid="grant-table"><tr><th>#</th><th>User</th><th>Record</th><th>Access</th><th>Until</th><th>Uses</th><th>Reason</th><th></th></tr>
    ${r.grants.map((g) => `<tr data-testid="grant-row" data-state="${state(g)}"><td>${g.id}</td><td>${esc(g.user_id)}</td><td>${esc(g.kind)} ${esc(g.resource_id)}</td>
      <td>${esc(g.access)}</td><td>${fmtTime(g.expires_at_ms)} (${state(g)})</td><td>${g.uses}</td><td>${esc(g.reason)}</td>
      <td>${state(g) === 'active' ? `<button class="btn warn" data-revoke="${g.id}" data-testid="grant-revoke">Revoke</button>` : ''}</td></tr>`).join('')}</table>`;
  const f = $('#grant-new');
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = (k) => f.querySelector(`[name=${k}]`).value.trim();
    submitOnce(f, async () => {
      await api('POST', '/api/v1/grants', {
        user_id: v('user_id'), [v('kind')]: v('id'), access: v('access'), reason: v('reason'), minutes: Number(v('minutes')),
      });
      await grantsScreen();
    });
  });
  view().querySelectorAll('[data-revoke]').forEach((b) => b.addEventListener('click', async () => {
    try { await api('POST', `/api/v1/grants/${b.dataset.revoke}/revoke`); await grantsScreen(); }
    catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
}

// One line per verdict: how many items pass, warn and fail (the supervisor's summary).
function complianceSummary(c) {
  const n = (s) => c.items.filter((i) => i.status === s).length;
  return `<p class="compliance ${c.worst}" data-testid="compliance-summary">HIPAA self-check: ${n('pass')} pass · ${n('warn')} warn · ${n('fail')} fail
    <a href="#/compliance" class="btn ghost" data-testid="compliance-open">Details</a></p>`;
}

async function complianceScreen() {
  const c = await api('GET', '/api/v1/compliance');
  view().innerHTML = `<h1>HIPAA self-check</h1>${complianceSummary(c)}
    <p>Evaluated ${esc(c.evaluated_at)} (every 10 min; <code>hema3n-edge check --compliance</code> on the appliance).</p>
    <table data-testid="compliance-table"><tr><th>Status</th><th>Safeguard</th><th>Evidence</th></tr>
    ${c.items.map((i) => `<tr data-testid="compliance-item" data-item="${esc(i.id)}" data-status="${esc(i.status)}">
      <td><span class="pill compliance ${esc(i.status)}">${esc(i.status.toUpperCase())}</span></td>
      <td><strong>${esc(i.title)}</strong><br>§${esc(i.safeguard)}</td>
      <td><ul>${i.evidence.map((e) => `<li>${esc(e)}</li>`).join('')}</ul></td></tr>`).join('')}</table>`;
}

async function reviewScreen() {
  const r = await api('GET', '/api/v1/break-glass?pending=true');
  let summary = '';
  if (can('ComplianceRead')) {
    try { summary = complianceSummary(await api('GET', '/api/v1/compliance')); } catch (e) { if (e.status === 401) throw e; }
  }
  view().innerHTML = `<h1>Break-glass review</h1>${summary}${r.uses.map((u) => `<div class="card" data-testid="bg-item">
      <p><strong>${esc(u.user_id)}</strong> · territory ${esc(u.territory)} · ${new Date(u.started_at_ms).toLocaleString()} until ${fmtTime(u.until_ms)}</p>
      <p>Reason: ${esc(u.reason)}</p>
      <form class="row" data-review="${u.id}"><input placeholder="review note" required class="wide"><button type="submit">Mark reviewed</button></form></div>`).join('') || '<p data-testid="bg-empty">Nothing to review.</p>'}`;
  document.querySelectorAll('[data-review]').forEach((f) => f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try { await api('POST', `/api/v1/break-glass/${f.dataset.review}/review`, { note: $('input', f).value }); await render(); }
    catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
}

// ---- chrome ---------------------------------------------------------------------------------
$('#logout').addEventListener('click', async () => {
  try { await api('POST', '/api/v1/auth/logout'); } catch (e) { /* already gone */ }
  loggedOff('Logged off');
});
$('#bg').addEventListener('click', async () => {
  const reason = prompt('Break glass: why do you need access? (audited, reviewed by a supervisor)');
  if (!reason) return;
  const secret = prompt('Confirm with your PIN/password');
  if (!secret) return;
  try {
    await api('POST', '/api/v1/auth/break-glass', { reason, secret });
    S.me = null;
    await render();
    banner('Break-glass access granted for a limited time; this use will be reviewed.', true);
  } catch (e) { if (e.status !== 401) banner(e.message, true); }
});
addEventListener('hashchange', render);
render();
