// Browser test of the web console: a real audit-server, entries recorded with the real `audit`
// CLI, Debian's Chromium driven by playwright-core. Exits non-zero when any check fails.
//
// Usage: node console.test.mjs   (environment: AUDIT_BIN_DIR, the directory of audit-server
// and audit; SCREENSHOT_DIR to keep a screenshot of each view)

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const binDir = process.env.AUDIT_BIN_DIR || new URL('../../target/debug/', import.meta.url).pathname;
const screenshots = process.env.SCREENSHOT_DIR;
const work = mkdtempSync(join(tmpdir(), 'web-console-test-'));
const servers = [];
let failures = 0;
let checks = 0;

function check(ok, what) {
  checks += 1;
  if (ok) {
    console.log(`web-console: PASS  ${what}`);
  } else {
    failures += 1;
    console.error(`web-console: FAIL  ${what}`);
  }
}

/** Starts audit-server with `args`; resolves to its gRPC and web addresses. */
function startServer(name, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(join(binDir, 'audit-server'), [
      '--listen', '127.0.0.1:0', '--web-listen', '127.0.0.1:0',
      '--data-dir', join(work, name), '--checkpoint-interval', '1s', ...args,
    ], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, AUDIT_LOG: 'warn' } });
    servers.push(child);
    const found = {};
    const timer = setTimeout(() => reject(new Error(`${name}: not ready in time`)), 20000);
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const [, what] = /^audit-server listening on (.*)$/.exec(line) || [];
      if (what?.startsWith('web ')) found.web = what.slice(4);
      else if (what?.startsWith('unix ')) found.unix = what.slice(5);
      else if (what) found.grpc = `http://${what}`;
      if (line === 'audit-server ready') {
        clearTimeout(timer);
        resolve(found);
      }
    });
  });
}

/** Records `entries` (proto3 JSON objects) as one batch with the CLI. */
function record(server, entries) {
  execFileSync(join(binDir, 'audit'), ['--server', server, 'record', '--stdin'], {
    input: JSON.stringify(entries),
    stdio: ['pipe', 'ignore', 'inherit'],
  });
}

const HOSTILE_PRINCIPAL = '<img src=x onerror="window.__pwned=1">';
const HOSTILE_RESOURCE = 'keys/\u0007\u202e"quoted"<script>window.__pwned=2</script>';

async function shot(page, name) {
  if (!screenshots) return;
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

async function main() {
  const open = await startServer('open', []);
  const billing = (i) => ({
    source: 'billing-api', method: '/billing.v1.Billing/Charge', outcome: 'OUTCOME_SUCCESS',
    resource: `invoices/${i}`, caller: { principal: 'alice', role: 'admin' }, labels: { env: 'prod', 'é': 'ü', a: 'z' },
    latency: i === 2 ? '0.250s' : undefined, level: i === 1 ? 'LEVEL_WARNING' : undefined,
    details: i === 3 ? { n: 1.5, t: true, z: null, list: [], deep: { a: [{ b: -2 }] } } : undefined,
  });
  record(open.grpc, Array.from({ length: 5 }, (_, i) => billing(i)));
  record(open.grpc, [{
    source: 'billing-api', method: '/billing.v1.Billing/Refund', outcome: 'OUTCOME_DENIED',
    statusCode: 7, event: 'REFUND', resource: HOSTILE_RESOURCE,
    caller: { principal: HOSTILE_PRINCIPAL },
    labels: { note: '"quotes" & <b>bold</b>' },
    details: { html: '<img src=x onerror=window.__pwned=3>', nested: { list: [1, 'two'] } },
  }]);
  record(open.grpc, Array.from({ length: 60 }, (_, i) => ({
    source: 'bulk', method: '/bulk.v1.Bulk/Put', outcome: 'OUTCOME_SUCCESS', resource: `items/${i}`,
  })));

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('dialog', (dialog) => { problems.push(`dialog: ${dialog.message()}`); dialog.dismiss(); });
    page.on('console', (message) => {
      // The bad-input check below is answered 400 on purpose.
      const expected = message.text().includes('status of 400');
      if (message.type() === 'error' && !expected) problems.push(`console: ${message.text()}`);
    });

    // Search with a filter: the table shows the billing entries, the hostile one as text.
    const response = await page.goto(`${open.web}/?view=search&source=billing-api&order=asc`);
    check(response.status() === 200, 'the page loads');
    const csp = response.headers()['content-security-policy'] || '';
    check(csp.includes("default-src 'self'") && csp.includes("frame-ancestors 'none'"), 'the page has a strict CSP');
    await page.waitForSelector('#results tbody tr');
    const rows = await page.locator('#results tbody tr').count();
    check(rows === 6, `search source=billing-api finds 6 entries (found ${rows})`);
    check(await page.locator('input[name="source"]').inputValue() === 'billing-api', 'the form shows the query from the URL');
    const hostileRow = page.locator('#results tbody tr', { hasText: '/billing.v1.Billing/Refund' });
    const callerCell = await hostileRow.locator('td').nth(4).textContent();
    check(callerCell === HOSTILE_PRINCIPAL, 'a hostile principal shows as the text it is');
    const resourceCell = await hostileRow.locator('td').nth(6).textContent();
    check(resourceCell.includes('\\u{0007}') && resourceCell.includes('\\u{202e}') && resourceCell.includes('<script>'),
      `control and bidi characters show as escapes (${JSON.stringify(resourceCell)})`);
    check(await hostileRow.locator('td').nth(3).textContent() === 'PERMISSION_DENIED', 'status codes show by name');
    await shot(page, 'search');

    // Filters: outcome and label parameters narrow the search.
    await page.goto(`${open.web}/?view=search&outcome=DENIED`);
    await page.waitForSelector('#results tbody tr');
    check(await page.locator('#results tbody tr').count() === 1, 'outcome=DENIED finds the one denied entry');
    await page.goto(`${open.web}/?view=search&label=env%3Dprod&method=%2Fbilling.v1.Billing%2F*`);
    await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 5);
    check(true, 'a label and a method prefix find the 5 charges');
    // A bad value is refused, naming its field.
    await page.goto(`${open.web}/?view=search&status_code=99`);
    await page.waitForFunction(() => document.getElementById('notice').textContent.includes('status_code'));
    check(true, 'a bad status code is refused naming status_code');

    // Paging: 60 bulk entries, 50 a page, the next page holds the rest.
    await page.goto(`${open.web}/?view=search&source=bulk`);
    await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 50);
    await page.click('#next-page');
    await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 10);
    check(new URL(page.url()).searchParams.has('page_token'), 'the next page follows the page token, in the URL');
    // With a quick time range, later pages keep the first page's window.
    await page.goto(`${open.web}/?view=search&source=bulk&range=1h`);
    await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 50);
    await page.click('#next-page');
    await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 10);
    check(true, 'pages follow with a quick time range ("last hour")');
    const csvHref = await page.locator('#download-csv').getAttribute('href');
    const download = await page.request.get(new URL(csvHref, page.url()).href);
    const csv = await download.text();
    const csvLines = csv.split('\r\n').filter(Boolean).length;
    check(download.ok() && csvLines === 61, `the CSV download holds every bulk entry and a header (${csvLines} lines)`);

    // Details of the hostile entry: every field as text, details as JSON, no markup.
    await page.goto(`${open.web}/?view=search&source=billing-api&outcome=DENIED`);
    await page.waitForSelector('#results tbody tr');
    await page.locator('#results tbody tr a').first().click();
    await page.waitForSelector('#details dd[data-field="caller.principal"]');
    check(await page.locator('#details dd[data-field="caller.principal"]').textContent() === HOSTILE_PRINCIPAL,
      'details show the caller principal as text');
    check((await page.locator('#details dd[data-field="entryHash"]').textContent()).length === 64,
      'details show the entry hash in hex');
    check((await page.locator('#details-json').textContent()).includes('"html": "<img src=x onerror=window.__pwned=3>"'),
      'details are formatted JSON, as text');
    check((await page.locator('#details-labels').textContent()).includes('"quotes" & <b>bold</b>'), 'labels show as text');
    check(await page.locator('#details-request').getAttribute('href') !== null, 'details link to the request\'s entries');
    await shot(page, 'details');
    const sequence = new URL(page.url()).searchParams.get('sequence');

    // No script of the hostile entry ran, and it left no element.
    const pwned = await page.evaluate(() => window.__pwned);
    check(pwned === undefined, 'no script from the hostile entry ran');
    check(await page.locator('main img, main script, main b').count() === 0, 'no element from entry content exists');

    // Live tail: an entry recorded now appears at the top; while paused, entries are counted.
    await page.goto(`${open.web}/?view=tail&source=live`);
    await page.waitForFunction(() => document.getElementById('tail-state').textContent === 'live');
    record(open.grpc, [{ source: 'live', method: '/live.v1.Live/First', outcome: 'OUTCOME_ERROR', statusCode: 14 }]);
    await page.waitForSelector('#tail tbody tr:has-text("/live.v1.Live/First")', { timeout: 10000 });
    check(true, 'the live tail shows an entry recorded during the test');
    await page.click('#pause');
    record(open.grpc, [
      { source: 'live', method: '/live.v1.Live/Second', outcome: 'OUTCOME_SUCCESS' },
      { source: 'live', method: '/live.v1.Live/Third', outcome: 'OUTCOME_SUCCESS' },
      { source: 'other', method: '/other.v1.Other/Hidden', outcome: 'OUTCOME_SUCCESS' },
    ]);
    await page.waitForFunction(() => document.getElementById('paused-count').textContent === '2 received while paused');
    check(await page.locator('#tail tbody tr').count() === 1, 'while paused, the table stays as it was and 2 are counted');
    await page.click('#pause');
    await page.waitForFunction(() => document.querySelectorAll('#tail tbody tr').length === 3);
    const top = await page.locator('#tail tbody tr').first().locator('td').nth(5).textContent();
    check(top === '/live.v1.Live/Third', 'on resume the held entries appear, newest at the top, filtered');
    await shot(page, 'tail');

    // Integrity: the inclusion proof of the hostile entry, verified in the browser.
    let verdict;
    for (let attempt = 0; attempt < 20 && verdict !== 'verified'; attempt++) {
      await page.goto(`${open.web}/?view=integrity&sequence=${sequence}`);
      await page.waitForSelector('#proof-result[data-verdict]');
      verdict = await page.locator('#proof-result').getAttribute('data-verdict');
      if (verdict !== 'verified') await page.waitForTimeout(500);
    }
    check(verdict === 'verified', `the inclusion proof of entry ${sequence} verifies in the browser`);
    const signature = await page.locator('#checkpoint-signature').textContent();
    check(signature.startsWith('valid Ed25519 signature'), `the checkpoint signature is checked with Web Crypto (${signature})`);

    // The whole log, recomputed in the browser: every entry's hash from its content (the
    // hostile one, details, labels and a latency included), the chain, the signed root.
    await page.click('#verify-log');
    await page.waitForSelector('#verify-result[data-verdict]', { timeout: 20000 });
    const logVerdict = await page.locator('#verify-result').textContent();
    check(await page.locator('#verify-result').getAttribute('data-verdict') === 'verified',
      `the untouched log verifies in the browser (${logVerdict})`);
    await shot(page, 'integrity');

    // A server that lies (a proof hash flipped in transit) is caught by the page.
    await page.route('**/api/proof/*', async (route) => {
      const answer = await route.fetch();
      const body = await answer.json();
      body.hashes[0] = body.hashes[0].replace(/^./, (c) => (c === '0' ? '1' : '0'));
      await route.fulfill({ response: answer, json: body });
    });
    await page.goto(`${open.web}/?view=integrity&sequence=${sequence}`);
    await page.waitForSelector('#proof-result[data-verdict]');
    check(await page.locator('#proof-result').getAttribute('data-verdict') === 'failed', 'a tampered proof is flagged as failed');
    await page.unroute('**/api/proof/*');

    // A server that serves an altered entry is caught by the whole-log check.
    await page.route('**/api/entries?*', async (route) => {
      const answer = await route.fetch();
      const body = await answer.json();
      const victim = body.entries?.find((e) => e.sequence === '3');
      if (victim) victim.resource = 'invoices/altered';
      await route.fulfill({ response: answer, json: body });
    });
    await page.goto(`${open.web}/?view=integrity`);
    await page.click('#verify-log');
    await page.waitForSelector('#verify-result[data-verdict]', { timeout: 20000 });
    const tampered = await page.locator('#verify-result').textContent();
    check(await page.locator('#verify-result').getAttribute('data-verdict') === 'failed'
      && tampered.includes('#3'), `an altered entry is flagged with its sequence (${tampered})`);
    await page.unroute('**/api/entries?*');

    // Charts: counts from the server, drawn as SVG.
    await page.goto(`${open.web}/?view=charts&range=1h`);
    await page.waitForSelector('#chart-outcomes rect.bar-success');
    check(await page.locator('#chart-outcomes rect.bar-denied').count() >= 1, 'the outcome chart has a denied bar');
    check((await page.locator('#chart-principals').textContent()).includes('alice'), 'top principals name alice');
    await shot(page, 'charts');

    check(problems.length === 0, `no page error, dialog or console error (${problems.join(' | ')})`);
    await context.close();

    // A guarded console: without a token the browser is refused (and the refusal recorded);
    // with the token (HTTP Basic) it sees the log, refusals included.
    const token = 'desk-token-0123456789abcdef';
    writeFileSync(join(work, 'tokens'), `desk ${token}\n`);
    writeFileSync(join(work, 'policy.toml'), '[[grant]]\nto = ["token:desk"]\nallow = ["read"]\n');
    const guarded = await startServer('guarded', ['--policy', join(work, 'policy.toml'),
      '--web-token-file', join(work, 'tokens')]);
    const stranger = await browser.newContext();
    const refused = await stranger.request.get(`${guarded.web}/`);
    check(refused.status() === 401, `a caller without a token is refused (${refused.status()})`);
    await stranger.close();
    const desk = await browser.newContext({ httpCredentials: { username: 'desk', password: token } });
    const deskPage = await desk.newPage();
    await deskPage.goto(`${guarded.web}/?view=search&outcome=DENIED&source=audit-server`);
    await deskPage.waitForSelector('#results tbody tr');
    const refusal = await deskPage.locator('#results tbody tr').first().locator('td').nth(5).textContent();
    check(refusal === 'GET /', `the refused page request is recorded as a DENIED entry (${refusal})`);
    await desk.close();
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (error) {
  failures += 1;
  console.error(`web-console: FAIL  ${error.stack || error}`);
} finally {
  for (const server of servers) server.kill('SIGTERM');
  rmSync(work, { recursive: true, force: true });
}
console.log(`web-console: ${failures} failed, ${checks} checks`);
process.exit(failures === 0 ? 0 : 1);
