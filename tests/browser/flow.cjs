// Crew tablet end to end in headless Chromium (Debian's), driven by playwright-core.
// Started by tests/browser.rs, which runs the daemon, broker, simulator and cloud receiver.
// Env: H3N_URL, H3N_USER, H3N_PIN, H3N_STAFF, H3N_TERRITORY, H3N_IDLE_SECS, H3N_SHOTS (dir).
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`missing ${k}`); return v; };
const URL = env('H3N_URL');
const SHOTS = process.env.H3N_SHOTS;
const step = (m) => console.log(`[browser] ${m}`);

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function login(page, user) {
  await page.goto(URL);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-pin').fill(env('H3N_PIN'));
  await page.getByTestId('login-territory').fill(env('H3N_TERRITORY'));
  await page.getByTestId('login-submit').click();
  await page.getByTestId('who').waitFor();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  // A 10" tablet in landscape.
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  page.on('dialog', (d) => d.accept());
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  step('login');
  await page.goto(URL);
  await page.getByTestId('login-user').waitFor();
  await shot(page, 'login');
  await login(page, env('H3N_USER'));
  await page.getByTestId('new-patient').waitFor();
  await shot(page, 'cases-empty');

  step('register a patient with partial data');
  await page.getByTestId('new-patient').click();
  await page.getByTestId('last-name').fill('Okafor');
  await page.getByTestId('first-name').fill('Grace');
  await page.getByTestId('dob').fill('1948-05-17');
  await page.getByTestId('complaint').fill('short of breath, fever');
  await shot(page, 'register');
  await page.getByTestId('register').click();
  await page.getByTestId('case-title').waitFor();
  const title = await page.getByTestId('case-title').innerText();
  if (!title.includes('Grace Okafor')) throw new Error(`case title: ${title}`);

  step('bind the simulated monitor');
  await page.getByTestId('bind-device').selectOption('mon-1');
  await page.getByTestId('bind-submit').click();
  await page.getByTestId('bound-device').filter({ hasText: 'mon-1' }).waitFor();

  step('live vitals arrive over the stream');
  const hr = page.getByTestId('tile-heart_rate');
  await hr.waitFor();
  const first = await hr.innerText();
  await page.waitForFunction((before) => {
    const t = document.querySelector('[data-testid=tile-heart_rate]');
    return t && t.innerText !== before;
  }, first, { timeout: 20000 });
  for (const v of ['spo2', 'resp_rate', 'sbp']) await page.getByTestId(`value-${v}`).waitFor();

  step('triage appears with its reasons');
  await page.getByTestId('triage-esi').waitFor();
  const esi = await page.getByTestId('triage-esi').innerText();
  if (!/^ESI [1-5]$/.test(esi)) throw new Error(`triage level: ${esi}`);
  await page.locator('[data-testid=triage-reasons] li').first().waitFor();
  await shot(page, 'case-live');

  step('manual vitals entry');
  await page.getByTestId('mv-name').selectOption('glucose');
  await page.getByTestId('mv-value').fill('64');
  await page.getByTestId('mv-save').click();
  await page.getByTestId('value-glucose').filter({ hasText: '64' }).waitFor();

  step('handoff summary');
  await page.getByTestId('handoff').click();
  await page.getByTestId('handoff-title').waitFor();
  await shot(page, 'handoff');
  await page.goBack();
  await page.getByTestId('case-title').waitFor();

  step('close the case and see its sync state');
  await page.getByTestId('close-case').click();
  await page.getByTestId('case-status').filter({ hasText: 'closed' }).waitFor();
  // The sealed bundle reaches the cloud receiver and its signed receipt comes back.
  for (let i = 0; i < 60; i++) {
    const s = await page.getByTestId('sync-state').innerText();
    if (/bundle:\s*receipted/.test(s)) break;
    await page.waitForTimeout(500);
    await page.reload();
    await page.getByTestId('sync-state').waitFor();
  }
  const sync = await page.getByTestId('sync-state').innerText();
  if (!/bundle:\s*receipted/.test(sync)) throw new Error(`sync state: ${sync}`);
  await shot(page, 'case-closed-receipted');
  await page.getByTestId('nav-cases').click();
  await page.getByTestId('case-row').first().waitFor();
  await shot(page, 'cases');

  step('idle logoff returns to the login screen');
  const idle = Number(env('H3N_IDLE_SECS'));
  await page.getByTestId('login-user').waitFor({ timeout: (idle + 10) * 1000 });
  const banner = await page.locator('#banner').innerText();
  if (!/inactivity/i.test(banner)) throw new Error(`banner after idle: ${banner}`);
  await shot(page, 'idle-logoff');
  // The old token is dead server-side too.
  const token = await page.evaluate(() => sessionStorage.getItem('h3n.token'));
  if (token) throw new Error('token kept after logoff');

  step('staff cannot open clinical data');
  await login(page, env('H3N_STAFF'));
  await page.getByTestId('case-row').first().click();
  await page.getByTestId('forbidden').waitFor();
  if (await page.getByTestId('vitals').count() !== 0) throw new Error('staff saw vitals');
  if (await page.getByTestId('triage').count() !== 0) throw new Error('staff saw triage');
  await shot(page, 'staff-forbidden');

  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
  await browser.close();
  step('ok');
})().catch((e) => { console.error(`[browser] FAILED: ${e.stack || e}`); process.exit(1); });
