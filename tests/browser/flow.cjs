// Crew tablet end to end in headless Chromium (Debian's), driven by playwright-core.
// Started by tests/browser.rs, which runs the daemon, broker, simulator and cloud receiver.
// A full call as a crew records it, in landscape (1280×800), then the closed case and the case
// list again in portrait (800×1280); regressions of the 2026-11-30 walk-through on the way.
// Env: H3N_URL, H3N_USER, H3N_PIN, H3N_STAFF, H3N_TERRITORY, H3N_IDLE_SECS, H3N_SHOTS (dir),
// H3N_CASE_FILE (where the case id is written for the Rust side), H3N_PHOTO and H3N_ECG_PDF (files
// to attach), H3N_STORED_PHOTO (where the photo as the viewer shows it is written).
'use strict';
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`missing ${k}`); return v; };
const URL = env('H3N_URL');
const SHOTS = process.env.H3N_SHOTS;
const step = (m) => console.log(`[browser] ${m}`);
const check = (ok, what) => { if (!ok) throw new Error(what); };

async function shot(page, name, fullPage = true) {
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

async function login(page, user) {
  await page.goto(URL);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-pin').fill(env('H3N_PIN'));
  await page.getByTestId('login-territory').fill(env('H3N_TERRITORY'));
  await page.getByTestId('login-submit').click();
  await page.getByTestId('who').waitFor();
}

async function tab(page, name) {
  await page.getByTestId(`tab-${name}`).click();
}

// Taps "Now" for a call time and waits for it to show.
async function now(page, key) {
  await tab(page, 'times');
  await page.getByTestId(`now-${key}`).click();
  await page.waitForFunction((k) => {
    const t = document.querySelector(`[data-testid=time-${k}]`);
    return t && t.innerText.trim() !== '—';
  }, key);
}

// The y of an element's top edge in the viewport (to check what is on the first screen).
const topOf = (page, sel) => page.evaluate((s) => document.querySelector(s).getBoundingClientRect().top, sel);

let failurePage = null;

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  // A 10" tablet in landscape.
  const ctx = await browser.newContext({
    ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1,
    // The crew allows the tablet's location (a scene in Logan, UT).
    permissions: ['geolocation'], geolocation: { latitude: 41.7365, longitude: -111.8338, accuracy: 12 },
  });
  const page = await ctx.newPage();
  failurePage = page;
  page.setDefaultTimeout(30000);
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`[browser] console: ${m.text()}`); });
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) console.log(`[browser] at ${f.url().replace(/^https:\/\/[^/]+/, '')}`); });
  // Confirmations are accepted; a reason prompt gets a reason.
  page.on('dialog', (d) => d.accept(d.type() === 'prompt' ? 'recorded on the wrong patient' : undefined));
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  step('a mistyped territory is said on the login form');
  await page.goto(URL);
  await page.getByTestId('login-user').fill(env('H3N_USER'));
  await page.getByTestId('login-pin').fill(env('H3N_PIN'));
  await page.getByTestId('login-territory').fill('nowhere');
  await page.getByTestId('login-submit').click();
  await page.getByTestId('login-msg').filter({ hasText: 'territory' }).waitFor();
  await shot(page, 'login-wrong-territory');

  step('login');
  await login(page, env('H3N_USER'));
  await page.getByTestId('new-patient').waitFor();
  await shot(page, 'cases-empty');

  step('an unknown patient with an estimated age');
  await page.getByTestId('new-patient').click();
  await page.getByTestId('pf-estimated_age_years').fill('67');
  await page.getByTestId('pf-sex').selectOption('female');
  await page.getByTestId('complaint').fill('short of breath, COPD on home oxygen');
  await shot(page, 'register');
  await page.getByTestId('register').click();
  await page.getByTestId('case-title').filter({ hasText: 'Unknown patient' }).waitFor();
  const caseId = page.url().split('/').pop();
  if (process.env.H3N_CASE_FILE) fs.writeFileSync(process.env.H3N_CASE_FILE, caseId);

  step('dispatch and scene times, one tap each');
  for (const k of ['call_received_ms', 'dispatched_ms', 'en_route_ms', 'on_scene_ms', 'at_patient_ms']) await now(page, k);
  await shot(page, 'times');

  step('incident');
  await tab(page, 'incident');
  await page.getByTestId('in-number').fill('INC-2026-0042');
  await page.getByTestId('in-reason').selectOption('breathing_problem');
  await page.getByTestId('in-mode').selectOption('emergent');
  await page.getByTestId('in-save').click();
  await page.getByTestId('in-number').and(page.locator('[value="INC-2026-0042"]')).waitFor();

  step('scene from the tablet location');
  await tab(page, 'scene');
  await page.getByTestId('sc-geo').click();
  await page.waitForFunction(() => document.querySelector('[data-testid=sc-lat]').value !== '');
  await page.getByTestId('sc-address').fill('12 Elm St, Logan UT');
  await page.getByTestId('sc-save').click();
  await page.getByTestId('sc-lat').and(page.locator('[value="41.7365"]')).waitFor();

  step('bind the simulated monitor; live vitals and triage arrive');
  await tab(page, 'devices');
  await page.getByTestId('bind-device').selectOption('mon-1');
  await page.getByTestId('bind-submit').click();
  await page.getByTestId('bound-device').filter({ hasText: 'mon-1' }).waitFor();
  const hr = page.getByTestId('tile-heart_rate');
  await hr.waitFor();
  const first = await hr.innerText();
  await page.waitForFunction((before) => {
    const t = document.querySelector('[data-testid=tile-heart_rate]');
    return t && t.innerText !== before;
  }, first, { timeout: 20000 });
  for (const v of ['spo2', 'resp_rate', 'sbp']) await page.getByTestId(`value-${v}`).waitFor();
  // Values at clinical precision: no 93.15266 %.
  const spo2 = await page.getByTestId('value-spo2').innerText();
  check(/^\d+$/.test(spo2.trim()), `SpO2 shown as ${spo2}`);
  await page.getByTestId('triage-esi').waitFor();
  check(/^ESI [1-5]$/.test(await page.getByTestId('triage-esi').innerText()), 'triage level');
  // The key vitals are on the first screen in landscape.
  check(await topOf(page, '[data-testid=tile-heart_rate]') < 800, 'first vital below the fold (landscape)');
  await shot(page, 'case-live');

  step('oxygen: NEWS2 and the triage reasons change on screen');
  await tab(page, 'oxygen');
  await page.getByTestId('o2-flow').selectOption('2');
  await page.getByTestId('o2-device').selectOption('nasal_cannula');
  await page.getByTestId('o2-save').click();
  await page.getByTestId('oxygen-state').filter({ hasText: 'On supplemental oxygen' }).waitFor();
  await page.getByTestId('triage-reasons').filter({ hasText: 'on oxygen +2' }).waitFor({ timeout: 20000 });
  await shot(page, 'oxygen');

  step('IV access');
  await tab(page, 'procedure');
  await page.getByTestId('pr-code').selectOption('iv_access');
  await page.getByTestId('pr-site').fill('left forearm');
  await page.getByTestId('pr-save').click();
  await page.getByTestId('entry-procedure').first().waitFor();

  step('a medication: ten rapid taps on Record store one entry');
  await tab(page, 'medication');
  await page.getByTestId('md-med').selectOption('salbutamol');
  await page.getByTestId('md-dose').fill('5');
  await page.getByTestId('md-unit').selectOption('mg');
  await page.getByTestId('md-route').selectOption('nebulizer');
  await page.evaluate(() => { const b = document.querySelector('[data-testid=md-save]'); for (let i = 0; i < 10; i++) b.click(); });
  await page.getByTestId('entry-medication').first().waitFor();
  // Whatever is still in flight has landed once the form is free again.
  await page.waitForFunction(() => !document.querySelector('#md').dataset.busy);
  await tab(page, 'medication');
  check(await page.getByTestId('entry-medication').count() === 1, 'one tap → one medication');

  step('impression, history and allergies');
  await tab(page, 'situation');
  await page.getByTestId('si-primary').fill('J44.1');
  await page.getByTestId('si-save').click();
  await page.locator('#panel').filter({ hasText: 'COPD exacerbation' }).waitFor();
  await tab(page, 'history');
  await page.getByTestId('hi-allergies').fill('penicillin');
  await page.getByTestId('hi-history').fill('COPD, hypertension');
  await page.getByTestId('hi-save').click();
  await page.getByTestId('hi-allergies').and(page.locator('[value="penicillin"]')).waitFor();

  step('the patient is identified and edited');
  await page.getByTestId('edit-patient').click();
  await page.getByTestId('pf-first_name').fill('Grace');
  await page.getByTestId('pf-last_name').fill('Okafor');
  await page.getByTestId('pf-date_of_birth').fill('1959-05-17');
  await page.getByTestId('patient-save').click();
  await page.getByTestId('case-title').filter({ hasText: 'Grace Okafor' }).waitFor();

  step('an empty manual vital is refused; an entered-in-error vital leaves the screen');
  await tab(page, 'vitals');
  await page.getByTestId('mv-name').selectOption('glucose');
  await page.getByTestId('mv-save').click();
  await page.getByTestId('mv-error').filter({ hasText: 'Enter a value' }).waitFor();
  await page.getByTestId('mv-value').fill('6a');
  await page.getByTestId('mv-save').click();
  await page.getByTestId('mv-error').filter({ hasText: 'number' }).waitFor();
  await page.getByTestId('mv-value').fill('64');
  await page.getByTestId('mv-save').click();
  await page.getByTestId('value-glucose').filter({ hasText: '64' }).waitFor();
  await tab(page, 'vitals');
  await page.getByTestId('eie-vital').first().click();
  // The hand-entered 64 leaves the tile (the monitor's own glucose shows again) and the list.
  await page.waitForFunction(() => {
    const t = document.querySelector('[data-testid=tile-glucose]');
    return !t || !t.innerText.includes('manual');
  });
  await page.getByTestId('manual-vital').waitFor({ state: 'detached' });
  await shot(page, 'vitals-entered-in-error');

  step('left scene, destination and ETA');
  await now(page, 'left_scene_ms');
  await tab(page, 'disposition');
  await page.getByTestId('di-patient').selectOption('care_provided');
  await page.getByTestId('di-transport').selectOption('this_unit');
  await page.getByTestId('di-destination').fill('Logan Regional Hospital');
  const eta = new Date(Date.now() + 10 * 60000);
  await page.getByTestId('di-eta').fill(new Date(eta - eta.getTimezoneOffset() * 60000).toISOString().slice(0, 16));
  await page.getByTestId('di-save').click();
  await page.getByTestId('di-destination').and(page.locator('[value="Logan Regional Hospital"]')).waitFor();
  await now(page, 'at_destination_ms');

  step('a scene photo from the camera: the Wi-Fi link drops mid-upload, the upload resumes');
  await tab(page, 'attachments');
  await page.getByTestId('att-kind').selectOption('scene_photo');
  await page.getByTestId('att-caption').fill('Scene: kitchen, patient seated');
  // The third piece reaches the daemon (committed) but its answer is lost on the way back.
  let pieces = 0, dropped = 0;
  await page.route('**/attachments/*/content', async (route) => {
    if (route.request().method() !== 'PATCH') return route.continue();
    pieces += 1;
    if (pieces !== 3) return route.continue();
    dropped += 1;
    await route.fetch();
    return route.abort('connectionreset');
  });
  await page.getByTestId('att-camera').setInputFiles(env('H3N_PHOTO'));
  // Progress shows while the pieces go (the retry after the drop waits a moment).
  await page.waitForFunction(() => {
    const p = document.querySelector('[data-testid=att-progress]');
    return p && p.value > 0 && p.value < p.max;
  });
  await page.getByTestId('att-item').first().waitFor();
  await page.getByTestId('att-upload').waitFor({ state: 'detached' });
  await page.unroute('**/attachments/*/content');
  check(dropped === 1 && pieces > 4, `photo sent in ${pieces} pieces, ${dropped} answer dropped`);
  check(/EXIF/.test(await page.getByTestId('att-stripped').first().innerText()), 'what was removed is shown');
  await page.waitForFunction(() => { const i = document.querySelector('[data-testid=att-thumb]'); return i && i.complete && i.naturalWidth > 0; });

  step('a 12-lead ECG PDF from a file; a GIF is refused by name');
  await page.getByTestId('att-kind').selectOption('ecg');
  await page.getByTestId('att-caption').fill('12-lead at scene');
  await page.getByTestId('att-file').setInputFiles(env('H3N_ECG_PDF'));
  await page.locator('[data-testid=att-item][data-kind=ecg]').waitFor();
  await page.getByTestId('att-kind').selectOption('wound');
  const gif = Buffer.concat([Buffer.from('GIF89a'), Buffer.alloc(200, 7)]);
  await page.getByTestId('att-file').setInputFiles({ name: 'wound.gif', mimeType: 'image/gif', buffer: gif });
  await page.getByTestId('att-error').filter({ hasText: 'GIF' }).waitFor();
  check(await page.getByTestId('att-item').count() === 2, 'the refused GIF left nothing');
  await shot(page, 'attachments');

  step('the viewer: the photo upright, the PDF in the browser');
  await page.locator('[data-testid=att-item][data-kind=scene_photo]').click();
  await page.waitForFunction(() => { const i = document.querySelector('[data-testid=viewer-image]'); return i && i.complete && i.naturalWidth > 0; });
  check(await page.getByTestId('viewer-image').getAttribute('data-orient') === '6', 'EXIF orientation kept for the viewer');
  // The photo as the daemon serves it to the tablet, for the Rust side to check for metadata
  // (the page's CSP keeps even its own blob: URLs out of fetch).
  const photoId = await page.locator('[data-testid=att-item][data-kind=scene_photo]').getAttribute('data-att');
  const stored = await page.evaluate(async ([c, a]) => {
    const r = await fetch(`/api/v1/cases/${c}/attachments/${a}/content`, { headers: { Authorization: `Bearer ${sessionStorage.getItem('h3n.token')}`, 'Territory-Id': sessionStorage.getItem('h3n.territory') } });
    if (!r.ok) throw new Error(`content: ${r.status}`);
    const b = new Uint8Array(await r.arrayBuffer());
    let s = '';
    b.forEach((x) => { s += String.fromCharCode(x); });
    return btoa(s);
  }, [caseId, photoId]);
  fs.writeFileSync(env('H3N_STORED_PHOTO'), Buffer.from(stored, 'base64'));
  await shot(page, 'attachment-photo', false);
  await page.getByTestId('viewer-close').click();
  await page.locator('[data-testid=att-item][data-kind=ecg]').click();
  const pdfSrc = await page.getByTestId('viewer-pdf').getAttribute('src');
  await (await (await page.getByTestId('viewer-pdf').elementHandle()).contentFrame()).waitForLoadState('load');
  check(pdfSrc.startsWith('blob:') && await page.getByTestId('att-viewer').getAttribute('data-media') === 'application/pdf', `the viewer shows the PDF: ${pdfSrc}`);
  // Chromium's PDF viewer paints a moment after its frame loads: only the picture waits for it.
  await page.waitForTimeout(2000);
  await shot(page, 'attachment-pdf', false);
  await page.getByTestId('viewer-close').click();
  await page.getByTestId('att-viewer').waitFor({ state: 'detached' });

  step('handoff: SBAR for a medical call, MIST on request, the PDF, transfer of care');
  await page.getByTestId('handoff').click();
  const blocks = page.getByTestId('handoff-blocks');
  await blocks.waitFor();
  check(await blocks.getAttribute('data-format') === 'sbar', 'a medical call suggests SBAR');
  const sb = await blocks.innerText();
  for (const w of ['Situation', 'Background', 'Assessment', 'Recommendation', 'Salbutamol', 'IV access', 'Oxygen', 'Logan Regional Hospital']) {
    check(sb.includes(w), `SBAR lacks ${w}: ${sb}`);
  }
  check(!/\d\.\d{3,}/.test(sb), `unrounded values in handoff: ${sb}`);
  check(!/\b(spo2|heart_rate|resp_rate)\b/.test(sb), `raw vital names in handoff: ${sb}`);
  check(/penicillin/.test(await page.getByTestId('handoff-allergies').innerText()), 'allergies on the handoff');
  check((await page.getByTestId('handoff-reasons').innerText()).trim() !== '', 'triage reasons on the handoff');
  check(/Call received/.test(await page.getByTestId('handoff-times').innerText()), 'times on the handoff');
  check(await page.locator('[data-testid=handoff-trend] polyline').count() >= 3, 'vitals trend drawn');
  await shot(page, 'handoff-sbar');
  await page.getByTestId('handoff-mist').click();
  await page.locator('[data-testid=handoff-blocks][data-format=mist]').waitFor();
  check(/Mechanism/.test(await page.getByTestId('handoff-blocks').innerText()), 'MIST on request');
  await page.getByTestId('handoff-sbar').click();
  await page.locator('[data-testid=handoff-blocks][data-format=sbar]').waitFor();
  const [dl] = await Promise.all([page.waitForEvent('download'), page.getByTestId('handoff-pdf').click()]);
  if (process.env.H3N_PDF_FILE) await dl.saveAs(process.env.H3N_PDF_FILE);
  await page.getByTestId('transfer-name').fill('Dr. R. Patel');
  await page.getByTestId('transfer-role').fill('ED attending');
  await page.getByTestId('transfer-submit').click();
  await page.getByTestId('handoff-status').filter({ hasText: 'handed off' }).waitFor();
  await page.getByTestId('handoff-transfer').filter({ hasText: 'Dr. R. Patel' }).waitFor();
  await shot(page, 'handoff-handed-off');
  await page.goto(`${URL}#/case/${caseId}`);
  await page.getByTestId('case-title').waitFor();
  await now(page, 'in_service_ms');

  step('twenty navigations between cases leave the tab responsive');
  for (let i = 0; i < 10; i++) {
    await page.getByTestId('nav-cases').click();
    await page.getByTestId('case-row').first().click();
    await page.getByTestId('case-title').waitFor();
  }
  const ms = await page.evaluate(async () => {
    const t0 = performance.now();
    const r = await fetch('/api/v1/auth/me', { headers: { Authorization: `Bearer ${sessionStorage.getItem('h3n.token')}`, 'Territory-Id': sessionStorage.getItem('h3n.territory') } });
    if (!r.ok) throw new Error(`me: ${r.status}`);
    return performance.now() - t0;
  });
  check(ms < 1000, `a request took ${ms} ms after 20 navigations`);

  step('close the case; the bundle is receipted by the cloud');
  await page.getByTestId('close-case').click();
  await page.getByTestId('case-status').filter({ hasText: 'closed' }).waitFor();
  await tab(page, 'devices');
  for (let i = 0; i < 60; i++) {
    const s = await page.getByTestId('sync-state').innerText();
    if (/bundle:\s*receipted/.test(s)) break;
    await page.waitForTimeout(500);
    await page.reload();
    await page.getByTestId('case-title').waitFor();
    await tab(page, 'devices');
  }
  const sync = await page.getByTestId('sync-state').innerText();
  check(/bundle:\s*receipted/.test(sync), `sync state: ${sync}`);
  await shot(page, 'case-closed-receipted');

  step('a trauma call suggests MIST');
  await page.goto(`${URL}#/cases`);
  await page.getByTestId('new-patient').click();
  await page.getByTestId('pf-estimated_age_years').fill('34');
  await page.getByTestId('pf-sex').selectOption('male');
  await page.getByTestId('complaint').fill('fell 3 m from a ladder, painful right thigh');
  await page.getByTestId('register').click();
  await page.getByTestId('case-title').filter({ hasText: 'Unknown patient' }).waitFor();
  const traumaId = page.url().split('/').pop();
  await tab(page, 'situation');
  await page.getByTestId('si-primary').fill('S72.90XA');
  await page.locator('#si select[name=injury]').selectOption('true');
  await page.getByTestId('si-save').click();
  await page.locator('#panel').filter({ hasText: 'Fracture of femur' }).waitFor();
  await page.goto(`${URL}#/handoff/${traumaId}`);
  await page.locator('[data-testid=handoff-blocks][data-format=mist]').waitFor();
  const mi = await page.getByTestId('handoff-blocks').innerText();
  for (const w of ['Mechanism', 'Injuries', 'Fracture of femur', 'Signs', 'Treatment']) check(mi.includes(w), `MIST lacks ${w}: ${mi}`);
  await shot(page, 'handoff-mist');

  step('portrait: the key vitals still on the first screen');
  const pctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 800, height: 1280 }, deviceScaleFactor: 1 });
  const pp = await pctx.newPage();
  pp.setDefaultTimeout(30000);
  pp.on('pageerror', (e) => errors.push(String(e)));
  await login(pp, env('H3N_USER'));
  await pp.goto(`${URL}#/case/${caseId}`);
  await pp.getByTestId('tile-heart_rate').waitFor();
  check(await topOf(pp, '[data-testid=tile-heart_rate]') < 1280, 'first vital below the fold (portrait)');
  await shot(pp, 'case-portrait');
  for (const [id, fmt] of [[caseId, 'sbar'], [traumaId, 'mist']]) {
    await pp.goto(`${URL}#/handoff/${id}`);
    await pp.locator(`[data-testid=handoff-blocks][data-format=${fmt}]`).waitFor();
    await shot(pp, `handoff-${fmt}-portrait`);
  }
  await pp.goto(`${URL}#/cases`);
  await pp.getByTestId('case-row').first().waitFor();
  await shot(pp, 'cases-portrait');
  await pctx.close();

  step('idle logoff: warned first, then back on the same case, unsaved typing restored');
  // The patient calls again: found by name, a new case for her; a narrative typed and not
  // saved when the crew walks away.
  await page.goto(`${URL}#/new`);
  await page.getByTestId('ps-last').fill('Okafor');
  await page.getByTestId('complaint').fill('dyspnoea again');
  await page.getByTestId('ps-search').click();
  await page.getByTestId('ps-open').first().click();
  await page.getByTestId('case-status').filter({ hasText: 'open' }).waitFor();
  await page.getByTestId('case-title').filter({ hasText: 'Grace Okafor' }).waitFor();
  await tab(page, 'narrative');
  const typed = 'Found sitting on the kerb, speaking full sentences';
  await page.getByTestId('na-text').fill(typed);
  const idle = Number(env('H3N_IDLE_SECS'));
  await page.getByTestId('idle-warn').waitFor({ state: 'visible', timeout: idle * 1000 });
  await shot(page, 'idle-warning');
  await page.getByTestId('login-user').waitFor({ timeout: (idle + 10) * 1000 });
  const banner = await page.locator('#banner').innerText();
  check(/inactivity/i.test(banner), `banner after idle: ${banner}`);
  await shot(page, 'idle-logoff');
  const token = await page.evaluate(() => sessionStorage.getItem('h3n.token'));
  check(!token, 'token kept after logoff');
  await page.getByTestId('login-user').fill(env('H3N_USER'));
  await page.getByTestId('login-pin').fill(env('H3N_PIN'));
  await page.getByTestId('login-territory').fill(env('H3N_TERRITORY'));
  await page.getByTestId('login-submit').click();
  await page.getByTestId('draft-restored').waitFor();
  const restored = await page.getByTestId('na-text').inputValue();
  check(restored === typed, `restored narrative: ${restored}`);
  await shot(page, 'draft-restored');
  await page.getByTestId('na-save').click();
  await page.getByTestId('draft-restored').waitFor({ state: 'detached' });

  step('staff cannot open clinical data');
  await page.getByTestId('logout').click();
  await login(page, env('H3N_STAFF'));
  await page.getByTestId('case-row').first().click();
  await page.getByTestId('forbidden').waitFor();
  check(await page.getByTestId('vitals').count() === 0, 'staff saw vitals');
  check(await page.getByTestId('triage').count() === 0, 'staff saw triage');
  const staffFiles = await page.evaluate(async (id) => (await fetch(`/api/v1/cases/${id}/attachments`, { headers: { Authorization: `Bearer ${sessionStorage.getItem('h3n.token')}`, 'Territory-Id': sessionStorage.getItem('h3n.territory') } })).status, caseId);
  check(staffFiles === 403, `staff listing attachments: ${staffFiles}`);
  await shot(page, 'staff-forbidden');
  check(await page.getByTestId('nav-compliance').isHidden(), 'staff sees the compliance view');

  step('the supervisor sees the HIPAA self-check');
  await page.getByTestId('logout').click();
  await login(page, env('H3N_SUPERVISOR'));
  await page.getByTestId('nav-review').click();
  const summary = await page.getByTestId('compliance-summary').innerText();
  check(/HIPAA self-check: \d+ pass · \d+ warn · \d+ fail/.test(summary), `summary: ${summary}`);
  await page.getByTestId('compliance-open').click();
  await page.getByTestId('compliance-table').waitFor();
  const items = await page.getByTestId('compliance-item').evaluateAll((rows) => rows.map((r) => `${r.dataset.item}=${r.dataset.status}`));
  check(items.length === 10, `compliance items: ${items}`);
  check(items.includes('automatic_logoff=pass'), `automatic logoff: ${items}`);
  await shot(page, 'compliance');

  step('the supervisor filters the audit trail and exports a patient\'s accounting');
  await page.getByTestId('nav-audit').click();
  await page.getByTestId('audit-user').fill(env('H3N_USER'));
  await page.getByTestId('audit-apply').click();
  // The filtered table replaces the whole trail (wait for it, not for the old rows).
  await page.locator(`[data-testid=audit-table][data-filter*="user=${env('H3N_USER')}"]`).waitFor();
  const actors = await page.getByTestId('audit-row').evaluateAll((rows) => rows.map((r) => r.dataset.actor));
  check(actors.length > 0 && actors.every((a) => a === env('H3N_USER')), `audit actors: ${actors}`);
  await page.getByTestId('audit-patient-link').first().click();
  await page.getByTestId('acct-csv').waitFor();
  const [acct] = await Promise.all([page.waitForEvent('download'), page.getByTestId('acct-csv').click()]);
  const acctCsv = fs.readFileSync(await acct.path(), 'utf8');
  check(acctCsv.startsWith('seq,time,user,role,kind,action,purpose,phi_fields'), `accounting: ${acctCsv.slice(0, 80)}`);
  check(acctCsv.includes(`,${env('H3N_USER')},paramedic,read,case.read,`), `accounting lists the medic's reads: ${acctCsv}`);
  await shot(page, 'audit-accounting');

  step('the supervisor manages access grants');
  await page.getByTestId('nav-grants').click();
  await page.getByTestId('grant-user').fill(env('H3N_USER'));
  await page.getByTestId('grant-id').fill(caseId);
  await page.getByTestId('grant-reason').fill('receiving crew continues care');
  await page.getByTestId('grant-submit').click();
  await page.waitForFunction(() => document.querySelector('[data-testid=grant-error]').textContent.length > 0);
  const grantErr = await page.getByTestId('grant-error').innerText();
  check(/only for users of another/.test(grantErr), `a grant to a user of this territory: ${grantErr}`);
  await shot(page, 'grants');

  check(!errors.length, `page errors: ${errors.join('; ')}`);
  await browser.close();
  step('ok');
})().catch(async (e) => {
  console.error(`[browser] FAILED: ${e.stack || e}`);
  // What the screen showed when it failed.
  if (failurePage) await shot(failurePage, 'FAILED').catch(() => {});
  process.exit(1);
});
