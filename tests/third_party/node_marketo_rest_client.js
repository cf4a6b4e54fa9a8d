// Drives the unmodified `node-marketo-rest` client against `marketo-sync simulate`.
//
// Usage: node node_marketo_rest_client.js BASE_URL CLIENT_ID CLIENT_SECRET
//
// The client takes its `endpoint` (`<base>/rest`) and `identity` (`<base>/identity`) URLs as
// options, so it is pointed at the simulator without any change. Prints one line `RESULT ok ...`
// on success; any failure exits non-zero.
'use strict';

const assert = require('assert');
const Marketo = require('node-marketo-rest');

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseCsv(text) {
  // RFC 4180: quoted fields may hold commas, quotes ("") and newlines.
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') { quoted = false; }
      else { field += c; }
    } else if (c === '"') { quoted = true; }
    else if (c === ',') { row.push(field); field = ''; }
    else if (c === '\n') { row.push(field); rows.push(row); row = []; field = ''; }
    else if (c !== '\r') { field += c; }
  }
  if (field !== '' || row.length) { row.push(field); rows.push(row); }
  const header = rows.shift();
  return rows.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i]])));
}

async function runExport(extract, exportId) {
  const enq = await extract.enqueue(exportId);
  assert.ok(enq.success, JSON.stringify(enq));
  let status;
  for (let i = 0; i < 600; i++) {
    status = await extract.status(exportId);
    assert.ok(status.success, JSON.stringify(status));
    const s = status.result[0].status;
    if (s === 'Completed') break;
    assert.ok(s === 'Queued' || s === 'Processing', JSON.stringify(status));
    await sleep(200);
  }
  assert.strictEqual(status.result[0].status, 'Completed', `export ${exportId} never completed`);
  const file = await extract.file(exportId);
  const text = Buffer.isBuffer(file) ? file.toString('utf8') : String(file);
  return parseCsv(text);
}

async function main() {
  const [base, clientId, clientSecret] = process.argv.slice(2);
  const root = base.replace(/\/+$/, '');
  const marketo = new Marketo({
    endpoint: `${root}/rest`,
    identity: `${root}/identity`,
    clientId,
    clientSecret,
  });

  // Authenticate.
  const token = await marketo.getOAuthToken();
  assert.ok(token.access_token, 'no access token');

  // Describe leads.
  const described = await marketo.lead.describe();
  const names = new Set(described.result.filter((f) => f.rest).map((f) => f.rest.name));
  for (const needed of ['id', 'email', 'firstName', 'lastName', 'updatedAt']) {
    assert.ok(names.has(needed), `describe lacks ${needed}`);
  }

  // Sync leads.
  const stamp = Date.now();
  const emails = [0, 1, 2, 3, 4].map((i) => `node${stamp}-${i}@example.com`);
  const synced = await marketo.lead.createOrUpdate(
    emails.map((email, i) => ({ email, firstName: 'Node', lastName: `Client${i}` })),
    { action: 'createOrUpdate', lookupField: 'email' },
  );
  assert.strictEqual(synced.result.length, 5, JSON.stringify(synced));
  assert.ok(synced.result.every((r) => r.status === 'created'), JSON.stringify(synced));
  const ids = synced.result.map((r) => r.id);
  const updated = await marketo.lead.createOrUpdate(
    [{ email: emails[0], lastName: 'Updated' }],
    { action: 'updateOnly', lookupField: 'email' },
  );
  assert.strictEqual(updated.result[0].status, 'updated', JSON.stringify(updated));

  // Page through leads by filter with the client's nextPage().
  let page = await marketo.lead.find('email', emails, { fields: ['id', 'email', 'lastName'], batchSize: 2 });
  const paged = [];
  let pages = 0;
  for (;;) {
    assert.ok(page.success, JSON.stringify(page));
    paged.push(...page.result);
    pages++;
    if (!page.nextPage || page.result.length === 0) break;
    page = await page.nextPage();
  }
  assert.deepStrictEqual(paged.map((r) => r.id).sort((a, b) => a - b), ids.slice().sort((a, b) => a - b));
  assert.ok(pages >= 3, `expected at least 3 pages, got ${pages}`);
  assert.strictEqual(paged.find((r) => r.id === ids[0]).lastName, 'Updated');

  // Lead export and activity export to completion.
  const day = 86400 * 1000;
  const range = {
    startAt: new Date(Date.now() - day).toISOString().replace(/\.\d+Z$/, 'Z'),
    endAt: new Date(Date.now() + day).toISOString().replace(/\.\d+Z$/, 'Z'),
  };
  const leadJob = await marketo.bulkLeadExtract.create(['id', 'email', 'lastName'], { createdAt: range });
  assert.ok(leadJob.success, JSON.stringify(leadJob));
  const leadRows = await runExport(marketo.bulkLeadExtract, leadJob.result[0].exportId);
  const exported = new Map(leadRows.map((r) => [Number(r.id), r]));
  for (const id of ids) assert.ok(exported.has(id), `lead ${id} not in the export`);
  assert.strictEqual(exported.get(ids[0]).lastName, 'Updated');

  const actJob = await marketo.bulkActivityExtract.create({ createdAt: range, activityTypeIds: [12, 13] });
  assert.ok(actJob.success, JSON.stringify(actJob));
  const acts = await runExport(marketo.bulkActivityExtract, actJob.result[0].exportId);
  const newLead = new Set(acts.filter((a) => a.activityTypeId === '12').map((a) => Number(a.leadId)));
  for (const id of ids) assert.ok(newLead.has(id), `no New Lead activity for ${id}`);

  console.log(
    `RESULT ok described=${names.size} synced=${ids.length} paged=${paged.length} pages=${pages} ` +
      `lead_rows=${leadRows.length} activity_rows=${acts.length}`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error('FAILED', err && err.stack ? err.stack : JSON.stringify(err));
    process.exit(1);
  },
);
