// Crew tablet: photos from the camera, ECG strips, signed forms and ultrasound files on a case.
// Uploads go in pieces (POST …/attachments, then PATCH …/content at Upload-Offset); a dropped
// Wi-Fi link is retried from what the daemon committed, and the bar shows the real progress.
// Thumbnails and the viewer fetch with the session's token and show blob: URLs.
// Loaded before app.js (which uses authFetch for the handoff PDF) and calls its helpers (S, api,
// esc, fmtTime, can, banner, HttpError, loggedOff) only once the page runs.
'use strict';

const ATT_KINDS = [['scene_photo', 'Scene photo'], ['wound', 'Wound'], ['ecg', 'ECG / 12-lead'], ['signed_form', 'Signed form'],
  ['ultrasound', 'Ultrasound'], ['other', 'Other']];
const attKindLabel = (k) => (ATT_KINDS.find(([v]) => v === k) || [k, k])[1];
const fmtBytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} KB`);
const MEDIA_LABEL = { 'image/jpeg': 'JPEG', 'image/png': 'PNG', 'application/pdf': 'PDF', 'application/dicom': 'DICOM' };
// EXIF orientation (kept aside when the metadata was stripped): app.css turns the picture upright.
const orientStyle = (a) => (a.orientation > 1 && a.orientation <= 8 ? ` data-orient="${a.orientation}"` : '');

// Uploads of this page, by attachment id: { file, name, received, size, error }. An interrupted
// upload resumes from its file while the page lives; after a reload the crew picks it again.
const UPLOADS = new Map();
// Thumbnails fetched for the case on screen (object URLs; each fetch was audited as a view),
// dropped when another case is opened or the session ends.
const THUMBS = { caseId: null, urls: new Map() };
let viewerUrl = null;
// Why the last file was refused (kept across the panel's redraws until the next file).
let attError = '';

function forgetAttachments() {
  closeViewer();
  THUMBS.urls.forEach((u) => URL.revokeObjectURL(u));
  THUMBS.urls.clear();
  THUMBS.caseId = null;
  UPLOADS.clear();
}

const authHeaders = () => ({ Authorization: `Bearer ${S.token}`, 'Territory-Id': S.territory || '' });

// A fetch with the session's token whose reply is not JSON (files, thumbnails, the handoff
// PDF); a 401 returns to the login screen like every other request.
async function authFetch(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  if (r.ok) return r;
  const d = await r.json().catch(() => null);
  if (r.status === 401) loggedOff((d && d.error && d.error.message) || 'Session ended; log in again');
  throw new HttpError(r.status, d);
}

const attPath = (caseId, id = '') => `/api/v1/cases/${caseId}/attachments${id ? '/' + id : ''}`;

// A link that dropped, a daemon busy with other pieces or restarting: worth another try.
const transient = (e) => !e.status || [408, 429, 502, 503, 504].includes(e.status);
const pause = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Sends `file` from where the daemon's copy ends until it is stored (or refused). Each piece is
// committed before the daemon answers, so after a failure the upload goes on at `received`.
async function sendFile(caseId, info, file, onProgress) {
  let failures = 0;
  while (info.state === 'uploading') {
    onProgress(info.received);
    try {
      const end = Math.min(file.size, info.received + info.piece_bytes);
      const r = await authFetch(`${attPath(caseId, info.id)}/content`, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(info.received) },
        body: file.slice(info.received, end),
      });
      info = await r.json();
      failures = 0;
    } catch (e) {
      if (e.status === 401) throw e;
      if (e.status === 409 && e.body && e.body.error && e.body.error.details && e.body.error.details.received != null) {
        // Another try already stored this piece: go on where the daemon is.
        info = { ...info, received: e.body.error.details.received };
        continue;
      }
      if (!transient(e)) throw e;
      failures += 1;
      if (failures > 8) throw new Error('The link to the ambulance keeps dropping: tap Resume when it is back');
      await pause(Math.min(8000, 250 * 2 ** failures));
      try { info = await (await authFetch(attPath(caseId, info.id))).json(); } catch (e2) { if (e2.status === 401) throw e2; }
    }
  }
  onProgress(info.size);
  return info;
}

async function startUpload(st, file, kind, caption) {
  const body = { kind, size: file.size, filename: file.name || null, caption: caption || null };
  const info = await api('POST', attPath(st.id), body);
  UPLOADS.set(info.id, { file, name: file.name || attKindLabel(kind), received: 0, size: file.size, error: null });
  await resumeUpload(st, info);
}

async function resumeUpload(st, info) {
  const u = UPLOADS.get(info.id);
  u.error = null;
  drawUploads(st);
  try {
    await sendFile(st.id, info, u.file, (n) => { u.received = n; progressOf(info.id, u); });
    UPLOADS.delete(info.id);
  } catch (e) {
    if (e.status === 401) return;
    if (e.status === 404 || e.status === 413 || e.status === 415 || e.status === 422) UPLOADS.delete(info.id); // refused: nothing kept
    u.error = e.message;
    attError = `${u.name}: ${e.message}`;
    const m = document.querySelector('[data-testid=att-error]');
    if (m) m.textContent = attError; else banner(attError, true);
  }
  if (st.tab === 'attachments' && S.caseState === st) await drawAttachments(st);
}

function progressOf(id, u) {
  const el = document.querySelector(`[data-upload="${id}"]`);
  if (!el) return;
  const pct = u.size ? Math.floor(u.received / u.size * 100) : 100;
  el.querySelector('progress').value = u.received;
  el.querySelector('.pct').textContent = `${pct} % · ${fmtBytes(u.received)} of ${fmtBytes(u.size)}`;
}

function drawUploads(st) {
  const box = document.getElementById('att-up');
  if (!box) return;
  box.innerHTML = [...UPLOADS.entries()].map(([id, u]) => `<div class="card upload" data-upload="${esc(id)}" data-testid="att-upload">
      <strong>${esc(u.name)}</strong> <progress max="${u.size}" value="${u.received}" data-testid="att-progress"></progress>
      <span class="pct"></span>${u.error ? ` <span class="err">${esc(u.error)}</span> <button type="button" data-resume="${esc(id)}" data-testid="att-resume">Resume</button>` : ''}</div>`).join('');
  for (const [id, u] of UPLOADS) progressOf(id, u);
  box.querySelectorAll('[data-resume]').forEach((b) => b.addEventListener('click', async () => {
    try { await resumeUpload(st, await (await authFetch(attPath(st.id, b.dataset.resume))).json()); } catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
}

function attCard(a) {
  const media = MEDIA_LABEL[a.media_type] || '';
  const picture = `<span class="pic">${a.has_thumbnail ? `<img alt="" data-thumb="${esc(a.id)}" data-testid="att-thumb"${orientStyle(a)}>` : `<span class="doc">${esc(media || '…')}</span>`}</span>`;
  const removed = a.stripped.length ? `removed: ${a.stripped.map((s) => s.toUpperCase()).join(', ')} · ` : '';
  const cloud = { receipted: 'in the cloud', pending: 'sending to the cloud' }[a.sync] || 'not sent yet';
  return `<button type="button" class="thumb" data-att="${esc(a.id)}" data-testid="att-item" data-kind="${esc(a.kind)}">${picture}
    <span class="cap"><strong>${esc(a.caption || attKindLabel(a.kind))}</strong><br>
    <span class="muted">${esc(attKindLabel(a.kind))} · ${esc(media)} · ${fmtBytes(a.size)} · ${fmtTime(a.stored_at_ms)}</span><br>
    <span class="muted" data-testid="att-stripped">${esc(removed)}</span><span class="muted" data-testid="att-sync">${esc(cloud)}</span></span></button>`;
}

// The "Photos & files" panel: capture, uploads in flight, the case's attachments.
async function drawAttachments(st) {
  const P = document.getElementById('panel');
  const write = can('ClinicalWrite') && st.c.status !== 'closed';
  const r = await api('GET', attPath(st.id));
  if (st.tab !== 'attachments' || S.caseState !== st) return;
  if (THUMBS.caseId !== st.id) { THUMBS.urls.forEach((u) => URL.revokeObjectURL(u)); THUMBS.urls.clear(); THUMBS.caseId = st.id; }
  const stored = r.attachments.filter((a) => a.state === 'stored');
  // Announced here and cut off (a reload, another tablet): the same file picked again resumes.
  const orphans = r.attachments.filter((a) => a.state === 'uploading' && !UPLOADS.has(a.id));
  P.innerHTML = (write ? `<div id="att-new" class="card"><div class="grid">
      <div><label for="att-kind">What is it</label><select id="att-kind" data-testid="att-kind">${ATT_KINDS.map(([v, l]) => `<option value="${v}">${l}</option>`).join('')}</select></div>
      <div><label for="att-caption">Caption</label><input id="att-caption" data-testid="att-caption" maxlength="500" placeholder="e.g. left forearm laceration"></div></div>
      <p class="row"><label class="btn primary" for="att-camera">Take photo</label>
      <input id="att-camera" type="file" accept="image/*" capture="environment" data-testid="att-camera" class="file">
      <label class="btn" for="att-file">Choose file</label>
      <input id="att-file" type="file" accept="image/jpeg,image/png,application/pdf,application/dicom,.jpg,.jpeg,.png,.pdf,.dcm" data-testid="att-file" class="file">
      <span class="muted">JPEG, PNG, PDF or DICOM. Photo location and camera data are removed before storage.</span>
      <span class="err" data-testid="att-error">${esc(attError)}</span></p></div>` : '') +
    '<div id="att-up"></div>' +
    (orphans.length && write ? `<h2>Interrupted uploads</h2><ul class="entries">${orphans.map((a) => `<li data-testid="att-orphan"><span>${esc(a.filename || attKindLabel(a.kind))} · ${fmtBytes(a.received)} of ${fmtBytes(a.size)}</span>
      <label class="btn">Pick the same file to resume<input type="file" class="file" data-reattach="${esc(a.id)}"></label></li>`).join('')}</ul>` : '') +
    `<h2>Photos &amp; files</h2><div class="thumbs" data-testid="att-grid">${stored.map(attCard).join('') || '<p class="muted" data-testid="att-none">No photo or file yet.</p>'}</div>`;
  drawUploads(st);
  for (const input of P.querySelectorAll('#att-camera, #att-file')) {
    input.addEventListener('change', () => {
      const file = input.files[0];
      input.value = '';
      if (!file) return;
      const err = P.querySelector('[data-testid=att-error]');
      attError = err.textContent = file.size ? '' : `${file.name} is empty: nothing to attach`;
      if (attError) return;
      const kind = P.querySelector('#att-kind').value;
      startUpload(st, file, kind, P.querySelector('#att-caption').value.trim())
        .then(() => { const c = document.getElementById('att-caption'); if (c) c.value = ''; })
        .catch((e) => {
          if (e.status === 401) return;
          attError = `${file.name}: ${e.message}`;
          const m = document.querySelector('[data-testid=att-error]');
          if (m) m.textContent = attError; else banner(attError, true);
        });
    });
  }
  P.querySelectorAll('[data-reattach]').forEach((input) => input.addEventListener('change', async () => {
    const file = input.files[0];
    const a = orphans.find((x) => x.id === input.dataset.reattach);
    if (!file || !a) return;
    if (file.size !== a.size) { banner(`${file.name} is not the interrupted file (${fmtBytes(a.size)})`, true); return; }
    UPLOADS.set(a.id, { file, name: file.name, received: a.received, size: a.size, error: null });
    try { await resumeUpload(st, await (await authFetch(attPath(st.id, a.id))).json()); } catch (e) { if (e.status !== 401) banner(e.message, true); }
  }));
  P.querySelectorAll('[data-att]').forEach((b) => b.addEventListener('click', () => openViewer(st, stored.find((a) => a.id === b.dataset.att)).catch(showError)));
  // Thumbnails one after the other (each fetch is audited as a view; the tablet is on Wi-Fi).
  for (const img of P.querySelectorAll('[data-thumb]')) {
    const id = img.dataset.thumb;
    try {
      if (!THUMBS.urls.has(id)) THUMBS.urls.set(id, URL.createObjectURL(await (await authFetch(`${attPath(st.id, id)}/thumbnail`)).blob()));
      if (THUMBS.caseId === st.id) img.src = THUMBS.urls.get(id);
    } catch (e) { if (e.status === 401) return; img.alt = 'thumbnail not available'; }
  }
}

function closeViewer() {
  const v = document.getElementById('viewer');
  if (v) v.remove();
  document.body.classList.remove('viewing');
  if (viewerUrl) { URL.revokeObjectURL(viewerUrl); viewerUrl = null; }
}

// Full size: a photo turned upright, a PDF in the browser's viewer, DICOM as a download.
async function openViewer(st, a) {
  closeViewer();
  const r = await authFetch(`${attPath(st.id, a.id)}/content`);
  viewerUrl = URL.createObjectURL(await r.blob());
  const ext = { 'image/jpeg': 'jpg', 'image/png': 'png', 'application/pdf': 'pdf', 'application/dicom': 'dcm' }[a.media_type] || 'bin';
  const body = a.media_type && a.media_type.startsWith('image/')
    ? `<img src="${viewerUrl}" alt="${esc(a.caption || attKindLabel(a.kind))}" data-testid="viewer-image"${orientStyle(a)}>`
    : a.media_type === 'application/pdf'
      ? `<iframe src="${viewerUrl}" title="${esc(a.caption || 'PDF')}" data-testid="viewer-pdf"></iframe>`
      : `<p class="card">An ultrasound DICOM file (${fmtBytes(a.size)}) is opened in a DICOM viewer: download it.</p>`;
  const v = document.createElement('div');
  v.id = 'viewer';
  v.className = 'viewer';
  v.setAttribute('role', 'dialog');
  v.setAttribute('aria-modal', 'true');
  v.dataset.testid = 'att-viewer';
  v.dataset.media = a.media_type || '';
  v.innerHTML = `<div class="row"><h2 class="grow">${esc(a.caption || attKindLabel(a.kind))} <span class="muted">${esc(attKindLabel(a.kind))} · ${fmtBytes(a.size)} · SHA-256 ${esc((a.sha256 || '').slice(0, 12))}…</span></h2>
    <a class="btn" href="${viewerUrl}" download="${esc(a.kind)}-${esc(a.id.slice(0, 8))}.${ext}" data-testid="viewer-download">Download</a>
    <button type="button" class="primary" data-testid="viewer-close">Close</button></div><div class="pane">${body}</div>`;
  document.body.appendChild(v);
  document.body.classList.add('viewing');
  v.querySelector('[data-testid=viewer-close]').addEventListener('click', closeViewer);
}
addEventListener('hashchange', closeViewer);
