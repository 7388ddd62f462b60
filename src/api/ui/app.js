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
    this.code = body && body.error && body.error.code;
  }
}

async function api(method, path, body) {
  const headers = { 'Territory-Id': S.territory || '' };
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (r.status === 401 && !path.endsWith('/auth/login')) {
    loggedOff((data && data.error && data.error.message) || 'Session ended; log in again');
    throw new HttpError(401, data);
  }
  if (!r.ok) throw new HttpError(r.status, data);
  return data;
}

function loggedOff(msg) {
  stopStream();
  S.token = null; S.me = null;
  sessionStorage.removeItem('h3n.token');
  $('#bar').hidden = true;
  location.hash = '#/login';
  render().then(() => banner(msg, true));
}

// ---- idle logoff (client side mirror of the server's timer) ---------------------------------
['pointerdown', 'keydown', 'touchstart'].forEach((e) => addEventListener(e, () => { S.lastInput = Date.now(); }, { passive: true }));
function armIdle() {
  clearInterval(S.idleTimer);
  S.idleTimer = setInterval(() => {
    if (!S.token || !S.me) return;
    if (Date.now() - S.lastInput > S.me.idle_timeout_secs * 1000) {
      api('POST', '/api/v1/auth/logout').catch(() => {});
      loggedOff('Logged off after inactivity');
    }
  }, 1000);
}

// ---- screens --------------------------------------------------------------------------------
const routes = [
  [/^#\/login$/, loginScreen],
  [/^#\/cases$/, casesScreen],
  [/^#\/new$/, newScreen],
  [/^#\/case\/([0-9a-f-]+)$/, caseScreen],
  [/^#\/handoff\/([0-9a-f-]+)$/, handoffScreen],
  [/^#\/audit$/, auditScreen],
  [/^#\/review$/, reviewScreen],
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
      location.hash = '#/cases';
      await render();
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
  view().innerHTML = `<div class="row"><h1 style="flex:1">Cases</h1>
    ${can('PatientWrite') ? '<a class="btn primary" href="#/new" data-testid="new-patient">+ New patient</a>' : ''}</div>
    <div class="list">${rows || '<p>No cases yet.</p>'}</div>`;
}

async function newScreen() {
  view().innerHTML = `
    <h1>New patient</h1>
    <p class="muted">Everything is optional: register now, complete later.</p>
    <form id="np" class="grid">
      <div><label for="fn">First name</label><input id="fn" data-testid="first-name"></div>
      <div><label for="ln">Last name</label><input id="ln" data-testid="last-name"></div>
      <div><label for="dob">Date of birth</label><input id="dob" type="date" data-testid="dob"></div>
      <div><label for="sex">Sex</label><select id="sex" data-testid="sex"><option value="">—</option><option>female</option><option>male</option><option>other</option><option>unknown</option></select></div>
      <div style="grid-column: 1 / -1"><label for="cc">Chief complaint</label><input id="cc" data-testid="complaint"></div>
      <div style="grid-column: 1 / -1">${can('ClinicalWrite') ? '<button class="primary" type="submit" data-testid="register">Register and open case</button>' : '<button class="primary" type="submit" data-testid="register">Register patient</button>'}</div>
    </form>`;
  $('#np').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const p = {};
    for (const [k, id] of [['first_name', 'fn'], ['last_name', 'ln'], ['date_of_birth', 'dob'], ['sex', 'sex']]) {
      const v = $('#' + id).value.trim();
      if (v) p[k] = v;
    }
    try {
      const pat = await api('POST', '/api/v1/patients', p);
      if (!can('ClinicalWrite')) { banner('Patient registered'); location.hash = '#/cases'; return; }
      const body = { patient_id: pat.id };
      const cc = $('#cc').value.trim();
      if (cc) body.chief_complaint = cc;
      const c = await api('POST', '/api/v1/cases', body);
      location.hash = `#/case/${c.id}`;
    } catch (e) { if (e.status !== 401) banner(e.message, true); }
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

async function caseScreen(id) {
  const c = await api('GET', `/api/v1/cases/${id}`);
  const st = { c, vitals: c.vitals, lastId: c.vitals.reduce((m, o) => Math.max(m, o.id), 0) };
  const p = c.patient || {};
  const closed = c.status === 'closed';
  view().innerHTML = `
    <div class="row"><h1 style="flex:1" data-testid="case-title">${esc([p.first_name, p.last_name].filter(Boolean).join(' ') || 'Unnamed patient')}
      <span class="muted">${esc(p.date_of_birth || '')} ${esc(p.sex || '')}</span></h1>
      <span class="pill" data-testid="case-status">${esc(c.status)}</span>
      <a class="btn" href="#/handoff/${esc(id)}" data-testid="handoff">Handoff</a>
      ${closed ? '' : '<button class="warn" id="close" data-testid="close-case">Close case</button>'}</div>
    <p class="muted">${esc(c.details.chief_complaint || '')}</p>
    <div id="alarms"></div>
    <h2>Triage</h2><div id="triage" data-testid="triage">${triageHtml(c.triage[0])}</div>
    <h2>Vitals</h2><div id="tiles" class="grid" data-testid="vitals"></div>
    <h2>Devices</h2><div id="devs"></div>
    ${closed ? '' : `<h2>Manual vitals</h2>
    <form id="mv" class="row">
      <select id="mv-name" data-testid="mv-name">${VITALS.map(([n, l]) => `<option value="${n}">${l}</option>`).join('')}</select>
      <input id="mv-value" data-testid="mv-value" placeholder="value" style="max-width:200px">
      <button type="submit" data-testid="mv-save">Save</button></form>`}
    ${can('Medication') && !closed ? `<h2>Medications</h2><form id="med" class="row">
      <input id="med-name" placeholder="drug" style="max-width:260px"><input id="med-dose" placeholder="dose" style="max-width:160px">
      <input id="med-route" placeholder="route" style="max-width:140px"><button type="submit" data-testid="med-save">Record</button></form>` : ''}
    <ul id="meds">${c.medications.map((m) => `<li>${esc(m.name)} ${esc(m.dose)} ${esc(m.route)} · ${fmtTime(m.created_at_ms)} · ${esc(m.created_by)}</li>`).join('')}</ul>
    <h2>Sync</h2><div id="bundles" data-testid="sync-state"></div>`;
  drawTiles(st);
  drawAlarms(c.alarms);
  drawBundles(c);
  await drawDevices(id, c);
  if (!closed) {
    $('#close').addEventListener('click', async () => {
      if (!confirm('Close this case? It will be sealed and sent to the hospital cloud.')) return;
      await api('POST', `/api/v1/cases/${id}/close`);
      await render();
    });
    $('#mv').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = $('#mv-name').value, raw = $('#mv-value').value.trim();
      const reading = name === 'avpu' ? { name, vs: raw.toUpperCase() } : { name, value: Number(raw) };
      try { await api('POST', `/api/v1/cases/${id}/vitals`, { readings: [reading] }); $('#mv-value').value = ''; banner('Saved'); }
      catch (e) { if (e.status !== 401) banner(e.message, true); }
    });
    const med = $('#med');
    if (med) med.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('POST', `/api/v1/cases/${id}/medications`, { name: $('#med-name').value, dose: $('#med-dose').value, route: $('#med-route').value });
        await render();
      } catch (e) { if (e.status !== 401) banner(e.message, true); }
    });
  }
  startStream(id, st);
}

function drawTiles(st) {
  const byName = {};
  for (const o of st.vitals) (byName[o.name] = byName[o.name] || []).push(o);
  $('#tiles').innerHTML = VITALS.filter(([n]) => byName[n]).map(([n, label, unit, [lo, hi]]) => {
    const pts = byName[n].slice(-120);
    const last = pts[pts.length - 1];
    const shown = n === 'avpu' ? AVPU[last.value] || '?' : (Math.round(last.value * 10) / 10);
    const abn = n === 'avpu' ? last.value > 0 : (last.value < lo || last.value > hi);
    return `<div class="tile${abn ? ' abn' : ''}" data-testid="tile-${n}"><div class="n">${label} <span class="muted">${unit}</span></div>
      <div class="v" data-testid="value-${n}">${esc(shown)}</div>${n === 'avpu' ? '' : spark(pts)}
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

async function drawDevices(id, c) {
  let free = [];
  if (can('DeviceRead') && c.status !== 'closed') {
    try { free = (await api('GET', '/api/v1/devices')).devices.filter((d) => !d.bound_case); } catch (e) { /* ignore */ }
  }
  $('#devs').innerHTML = `<div class="row">${c.devices.map((d) => `<span class="pill" data-testid="bound-device">${esc(d)}</span>
      ${c.status === 'closed' ? '' : `<button data-unbind="${esc(d)}">Unbind ${esc(d)}</button>`}`).join('') || '<span class="muted">No device bound.</span>'}</div>
    ${free.length ? `<form id="bind" class="row" style="margin-top:8px"><select id="bind-dev" data-testid="bind-device">${free.map((d) => `<option value="${esc(d.id)}">${esc(d.id)} (${esc(d.presence)})</option>`).join('')}</select>
      <button type="submit" class="primary" data-testid="bind-submit">Bind device</button></form>` : ''}`;
  const f = $('#bind');
  if (f) f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await api('POST', `/api/v1/cases/${id}/devices`, { device_id: $('#bind-dev').value });
    await render();
  });
  document.querySelectorAll('[data-unbind]').forEach((b) => b.addEventListener('click', async () => {
    await api('DELETE', `/api/v1/cases/${id}/devices/${encodeURIComponent(b.dataset.unbind)}`);
    await render();
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
  } else if (ev === 'alarm' || ev === 'case' || ev === 'resync') {
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

async function handoffScreen(id) {
  const h = await api('GET', `/api/v1/cases/${id}/handoff`);
  const p = h.patient || {};
  view().innerHTML = `<h1 data-testid="handoff-title">Handoff: ${esc([p.first_name, p.last_name].filter(Boolean).join(' ') || 'Unnamed patient')}</h1>
    <p><strong>Age:</strong> ${esc(h.age_years ?? '—')} · <strong>Sex:</strong> ${esc(p.sex || '—')} · <strong>DOB:</strong> ${esc(p.date_of_birth || '—')} · <strong>MRN:</strong> ${esc(p.mrn || '—')}</p>
    <p><strong>Complaint:</strong> ${esc(h.chief_complaint || '—')} · <strong>Mechanism:</strong> ${esc(h.mechanism || '—')} · <strong>Onset:</strong> ${esc(h.onset || '—')}</p>
    <h2>Triage</h2>${triageHtml(h.triage)}
    <h2>Latest vitals</h2><table><tr><th>Vital</th><th>Value</th><th>Time</th><th>Source</th></tr>
    ${h.latest_vitals.map((o) => `<tr><td>${esc(o.name)}</td><td>${esc(o.display ?? o.value)} ${esc(o.unit || '')}</td><td>${fmtTime(o.t_ms)}</td><td>${esc(o.device_id || o.source)}</td></tr>`).join('')}</table>
    <h2>Medications</h2><ul>${h.medications.map((m) => `<li>${esc(m.name)} ${esc(m.dose)} ${esc(m.route)} at ${fmtTime(m.created_at_ms)}</li>`).join('') || '<li>None recorded</li>'}</ul>
    <p class="muted">${esc(h.readings)} readings · case opened ${fmtTime(h.opened_at_ms)} · status ${esc(h.status)}</p>
    <p><a class="btn" href="#/case/${esc(id)}">Back to case</a> <button id="print">Print</button></p>`;
  $('#print').addEventListener('click', () => print());
}

async function auditScreen() {
  const r = await api('GET', '/api/v1/audit?limit=200');
  view().innerHTML = `<h1>Audit trail</h1><table data-testid="audit-table"><tr><th>#</th><th>Time</th><th>Actor</th><th>Role</th><th>Action</th><th>Resource</th><th>Outcome</th></tr>
    ${r.entries.map((e) => `<tr><td>${e.seq}</td><td>${fmtTime(e.ts_ms)}</td><td>${esc(e.actor)}</td><td>${esc(e.role)}</td><td>${esc(e.action)}</td><td>${esc(e.resource)}</td><td>${esc(e.outcome)}</td></tr>`).join('')}</table>`;
}

async function reviewScreen() {
  const r = await api('GET', '/api/v1/break-glass?pending=true');
  view().innerHTML = `<h1>Break-glass review</h1>${r.uses.map((u) => `<div class="card" data-testid="bg-item">
      <p><strong>${esc(u.user_id)}</strong> · territory ${esc(u.territory)} · ${new Date(u.started_at_ms).toLocaleString()} until ${fmtTime(u.until_ms)}</p>
      <p>Reason: ${esc(u.reason)}</p>
      <form class="row" data-review="${u.id}"><input placeholder="review note" required style="max-width:480px"><button type="submit">Mark reviewed</button></form></div>`).join('') || '<p data-testid="bg-empty">Nothing to review.</p>'}`;
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
