// The check of `node run.mjs check`: a real browser walks the pages of one
// run of a live `kiln serve` and holds them to the DOM contract of the web UI
// (the run page's #run-state, #job-graph nodes and edges, #jobs rows and the
// status filter; the job page's #job-status and #log lines with their
// anchors, .error lines and #log-search; the live log; the 403 page of a
// control form posted signed out; no sideways scrolling at 390 px). The
// REST API is the truth the pages are compared with. Screenshots of every
// page go to the --shots directory; a failure also saves `failure.png`.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

/** Run states after which nothing changes without a rebuild. */
const ACTIVE_RUN_STATES = new Set(['queued', 'running']);
/** The width of a phone, in CSS pixels. */
const PHONE = { width: 390, height: 844 };

class CheckFailed extends Error {}

function assert(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function ok(message) {
  console.log(`ok: ${message}`);
}

export async function check(browser, { base, run, runningJob, shots }) {
  mkdirSync(shots, { recursive: true });
  const state = { base, shots, files: [], pageErrors: [], page: null };
  const result = { run, screenshots: shots };
  try {
    const desktop = await newContext(browser, state, { viewport: { width: 1280, height: 900 } });
    if (runningJob !== undefined) {
      result.live = await liveLog(state, desktop, runningJob);
    }
    await waitForRunEnd(state, run);
    result.run_page = await runPage(state, desktop, run);
    result.failed_job = await failedJob(state, desktop, run);
    await desktop.close();

    const signedOut = await newContext(browser, state, { viewport: { width: 1280, height: 900 } });
    result.denied = await deniedRebuild(state, signedOut, run);
    await signedOut.close();

    const phone = await newContext(browser, state, {
      viewport: PHONE,
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    result.phone = await phoneWidth(state, phone, run, result.failed_job.job);
    await phone.close();

    assert(
      state.pageErrors.length === 0,
      `the pages threw in the browser:\n  ${state.pageErrors.join('\n  ')}`,
    );
  } catch (e) {
    if (state.page && !state.page.isClosed()) {
      await shot(state, state.page, 'failure').catch(() => {});
    }
    console.log(`screenshots in ${shots}: ${state.files.join(', ')}`);
    if (e instanceof CheckFailed) {
      console.error(`FAIL: ${e.message}${state.page ? ` (page ${state.page.url()})` : ''}`);
      process.exit(1);
    }
    throw e;
  }
  result.files = state.files;
  console.log(`screenshots in ${shots}: ${state.files.join(', ')}`);
  console.log(`RESULT ${JSON.stringify(result)}`);
}

async function newContext(browser, state, options) {
  const context = await browser.newContext({ ...options, baseURL: state.base });
  context.on('page', (page) => {
    page.on('pageerror', (e) => state.pageErrors.push(`${page.url()}: ${e.message}`));
  });
  return context;
}

async function open(state, context, path) {
  const page = context.pages()[0] ?? (await context.newPage());
  state.page = page;
  const response = await page.goto(path).catch((e) => {
    throw new CheckFailed(`GET ${path}: ${e.message.split('\n')[0]}`);
  });
  assert(response, `no response for ${path}`);
  assert(response.status() === 200, `GET ${path} answered ${response.status()}`);
  return page;
}

async function shot(state, page, name) {
  const file = `${name}.png`;
  await page.screenshot({ path: join(state.shots, file), fullPage: true });
  state.files.push(file);
}

async function api(state, path) {
  const response = await fetch(state.base + path);
  if (!response.ok) throw new CheckFailed(`GET ${path} answered ${response.status}: ${await response.text()}`);
  return response.json();
}

async function text(page, selector) {
  const found = page.locator(selector);
  const n = await found.count();
  assert(n === 1, `${n} elements match ${selector}, expected one`);
  return (await found.textContent()).trim();
}

/** The lines of #log as the page shows them. */
function logLines(page) {
  return page.$$eval('#log .line', (lines) =>
    lines.map((l) => ({
      id: l.id,
      error: l.classList.contains('error'),
      link: l.querySelector('a[href^="#L"]')?.getAttribute('href') ?? null,
      text: l.textContent,
      visible: l.checkVisibility(),
    })),
  );
}

function assertNumbered(lines) {
  lines.forEach((l, i) => {
    assert(l.id === `L${i + 1}`, `log line ${i + 1} has id ${JSON.stringify(l.id)}, expected L${i + 1}`);
    assert(l.link === `#L${i + 1}`, `log line ${i + 1} links to ${l.link}, expected #L${i + 1}`);
  });
}

/** A running job's page: lines arrive without a reload, once each, in order. */
async function liveLog(state, context, job) {
  const detail = await api(state, `/api/v1/jobs/${job}`);
  assert(
    detail.status === 'running',
    `job ${job} is ${detail.status}, not running: start the browser while it runs`,
  );
  const page = await open(state, context, `/jobs/${job}`);
  const status = await text(page, '#job-status');
  assert(/running/i.test(status), `#job-status says ${JSON.stringify(status)} for a running job`);
  await page.evaluate(() => {
    window.kilnSamePage = true;
  });
  const before = (await logLines(page)).length;
  const grown = before + 3;
  await page
    .waitForFunction((n) => document.querySelectorAll('#log .line').length >= n, grown, {
      timeout: 10_000,
      polling: 100,
    })
    .catch(() => {});
  const lines = await logLines(page);
  assert(
    lines.length >= grown,
    `#log of running job ${job} did not grow: ${before} lines, then ${lines.length} after 10 s`,
  );
  assert(await page.evaluate(() => window.kilnSamePage === true), 'the job page reloaded instead of appending lines');
  assertNumbered(lines);
  // The stream replays what the page already shows: no line twice.
  const ticks = lines.map((l) => /tick (\d+)/.exec(l.text)).filter(Boolean).map((m) => Number(m[1]));
  ticks.forEach((t, i) => {
    assert(i === 0 || t === ticks[i - 1] + 1, `log lines out of order or repeated: ${ticks.join(' ')}`);
  });
  await shot(state, page, 'running-job');
  ok(`job ${job}'s log grew live from ${before} to ${lines.length} lines`);
  return { job, before, after: lines.length, ticks: ticks.length };
}

async function waitForRunEnd(state, run) {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const detail = await api(state, `/api/v1/runs/${run}`);
    if (!ACTIVE_RUN_STATES.has(detail.run.state)) return;
    assert(Date.now() < deadline, `run ${run} still ${detail.run.state} after 180 s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The run page: state, one graph node and one row per job, the filter. */
async function runPage(state, context, run) {
  const detail = await api(state, `/api/v1/runs/${run}`);
  const jobs = await api(state, `/api/v1/runs/${run}/jobs`);
  const page = await open(state, context, `/runs/${run}`);

  assert((await page.locator('#summary #run-state').count()) === 1, '#run-state is not inside #summary');
  const runState = await text(page, '#run-state');
  assert(
    runState.toLowerCase().includes(detail.run.state.replace(/_/g, ' ')) ||
      runState.toLowerCase().includes(detail.run.state),
    `#run-state says ${JSON.stringify(runState)}, the API says ${detail.run.state}`,
  );

  const nodes = await page.$$eval('#job-graph a.node', (as) =>
    as.map((a) => {
      const box = a.getBBox();
      const rect = a.querySelector('rect');
      const inside = a.getBoundingClientRect();
      const svg = a.ownerSVGElement.getBoundingClientRect();
      return {
        href: a.getAttribute('href'),
        classes: [...a.classList],
        attr: a.getAttribute('data-attr'),
        rect: a.querySelector('rect') !== null,
        text: a.querySelector('text')?.textContent ?? null,
        box: [box.width, box.height],
        fill: rect ? getComputedStyle(rect).fill : null,
        clipped:
          inside.left < svg.left - 1 ||
          inside.top < svg.top - 1 ||
          inside.right > svg.right + 1 ||
          inside.bottom > svg.bottom + 1,
      };
    }),
  );
  assert(
    nodes.length === jobs.length,
    `#job-graph has ${nodes.length} nodes for ${jobs.length} jobs: ${JSON.stringify(nodes)}`,
  );
  for (const job of jobs) {
    const mine = nodes.filter((n) => n.href === `/jobs/${job.id}`);
    assert(mine.length === 1, `${mine.length} graph nodes link to /jobs/${job.id} (${job.attr})`);
    const node = mine[0];
    assert(node.attr === job.attr, `node of job ${job.id} has data-attr ${node.attr}, not ${job.attr}`);
    assert(
      node.classes.includes(`status-${job.status}`),
      `node of ${job.attr} has classes ${node.classes.join(' ')}, expected status-${job.status}`,
    );
    const others = node.classes.filter((c) => c.startsWith('status-') && c !== `status-${job.status}`);
    assert(others.length === 0, `node of ${job.attr} also has ${others.join(' ')}`);
    assert(node.rect && node.text !== null, `node of ${job.attr} lacks its <rect> or <text>`);
    assert(node.box[0] > 0 && node.box[1] > 0, `node of ${job.attr} is not drawn (box ${node.box})`);
    assert(!node.clipped, `node of ${job.attr} lies outside #job-graph`);
  }
  // Coloured by status: a failed job's box does not look like a good one's.
  const fill = (status) => nodes.find((n) => n.classes.includes(`status-${status}`))?.fill;
  if (fill('failed') && fill('succeeded')) {
    assert(fill('failed') !== fill('succeeded'), `failed and succeeded nodes are both filled ${fill('failed')}`);
  }
  const edges = await page.locator('#job-graph path.edge').count();
  const critical = await page.locator('#job-graph .critical').count();
  const graph = await page.locator('#job-graph').boundingBox();
  assert(graph && graph.width > 0 && graph.height > 0, '#job-graph takes no room on the page');

  const rows = await page.$$eval('#jobs tr.job', (trs) =>
    trs.map((tr) => [...tr.classList].filter((c) => c.startsWith('status-'))),
  );
  assert(rows.length === jobs.length, `#jobs has ${rows.length} rows for ${jobs.length} jobs`);
  const expected = jobs.map((j) => [`status-${j.status}`]).sort().join();
  assert(
    rows.slice().sort().join() === expected,
    `#jobs rows' statuses ${JSON.stringify(rows)} differ from the API's ${expected}`,
  );
  await shot(state, page, 'run');

  // The status filter, through its link.
  const failed = jobs.filter((j) => j.status === 'failed');
  const link = page.locator('a[href*="status=failed"]').first();
  assert((await link.count()) === 1, 'no filter link to ?status=failed on the run page');
  await link.click();
  await page.waitForURL(/[?&]status=failed/);
  const filtered = await page.$$eval('#jobs tr.job', (trs) => trs.map((tr) => tr.className));
  assert(
    filtered.length === failed.length && filtered.every((c) => c.split(/\s+/).includes('status-failed')),
    `?status=failed shows rows ${JSON.stringify(filtered)}, expected ${failed.length} failed`,
  );
  await shot(state, page, 'run-failed-only');
  ok(`run ${run}: ${runState}, ${nodes.length} nodes, ${edges} edges, ${critical} critical, filter shows ${filtered.length}`);
  return {
    state: runState,
    nodes: jobs.map((j) => ({ job: j.id, attr: j.attr, status: j.status })),
    edges,
    critical,
    filtered: filtered.length,
  };
}

/** Click the failing job's node; its log shows, errors marked, searchable. */
async function failedJob(state, context, run) {
  const page = await open(state, context, `/runs/${run}`);
  const node = page.locator('#job-graph a.node.status-failed').first();
  assert((await node.count()) === 1, 'no failed node in #job-graph');
  await node.click();
  await page.waitForURL(/\/jobs\/[0-9]+$/);
  const job = Number(/\/jobs\/([0-9]+)$/.exec(page.url())[1]);
  const detail = await api(state, `/api/v1/jobs/${job}`);
  assert(detail.status === 'failed', `the failed node led to job ${job}, which is ${detail.status}`);
  const status = await text(page, '#job-status');
  assert(/failed/i.test(status), `#job-status says ${JSON.stringify(status)} for a failed job`);

  const lines = await logLines(page);
  assert(lines.length > 0, `#log of failed job ${job} is empty`);
  assertNumbered(lines);
  const errors = lines.filter((l) => l.error);
  assert(errors.length > 0, `no .error line in the log of failed job ${job}:\n${lines.map((l) => l.text).join('\n')}`);
  await shot(state, page, 'failed-job');

  // The link to a line makes it the target.
  const first = errors[0];
  await page.locator(`#${first.id} a[href="#${first.id}"]`).click();
  const target = await page.evaluate(() => [location.hash, document.querySelector(':target')?.id]);
  assert(
    target[0] === `#${first.id}` && target[1] === first.id,
    `clicking ${first.id}'s link gave hash ${target[0]}, target ${target[1]}`,
  );

  // Searching hides the lines that do not match, and clearing shows them again.
  const term = first.text
    .split(/[^A-Za-z]+/)
    .filter((w) => w.length >= 4 && w.toLowerCase() !== 'error')
    .sort((a, b) => b.length - a.length)[0];
  assert(term, `no word to search for in ${JSON.stringify(first.text)}`);
  await page.fill('#log-search', term);
  const matching = lines.filter((l) => l.text.includes(term)).length;
  await page
    .waitForFunction(
      (n) => [...document.querySelectorAll('#log .line')].filter((l) => l.checkVisibility()).length === n,
      matching,
      { timeout: 5_000 },
    )
    .catch(() => {});
  const searched = await logLines(page);
  const shown = searched.filter((l) => l.visible);
  assert(
    shown.length === matching && shown.every((l) => l.text.toLowerCase().includes(term.toLowerCase())),
    `searching ${JSON.stringify(term)} shows ${shown.length} lines, expected the ${matching} that match`,
  );
  await shot(state, page, 'failed-job-search');
  await page.fill('#log-search', '');
  await page
    .waitForFunction(() => [...document.querySelectorAll('#log .line')].every((l) => l.checkVisibility()), null, {
      timeout: 5_000,
    })
    .catch(() => {});
  const cleared = (await logLines(page)).filter((l) => !l.visible).length;
  assert(cleared === 0, `${cleared} lines stay hidden after the search is cleared`);
  ok(`failed job ${job}: ${lines.length} lines, ${errors.length} marked .error, search ${JSON.stringify(term)} shows ${shown.length}`);
  return { job, lines: lines.length, errors: errors.map((l) => l.text.trim()), search: term };
}

/** Signed out, the run's rebuild form is refused with a reason. */
async function deniedRebuild(state, context, run) {
  const page = await open(state, context, `/runs/${run}`);
  assert((await page.locator('a#sign-in[href="/login"]').count()) === 1, 'no #sign-in link to /login when signed out');
  assert((await page.locator('#user').count()) === 0, '#user shown when signed out');
  const action = `/runs/${run}/rebuild`;
  const form = page.locator(`form.control[method="post" i][action="${action}"]`);
  assert((await form.count()) === 1, `no <form class="control" method="post" action="${action}"> on the run page`);
  assert((await form.locator('input[name="csrf"]').count()) === 0, 'a CSRF token in a signed-out form');
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === action),
    form.locator('button').click(),
  ]);
  await page.waitForLoadState();
  assert(response.status() === 403, `POST ${action} signed out answered ${response.status()}, expected 403`);
  const reason = await text(page, 'p.denied');
  assert(/sign in/i.test(reason), `the refusal does not ask to sign in: ${JSON.stringify(reason)}`);
  await shot(state, page, 'rebuild-denied');
  ok(`signed out, rebuilding run ${run} is refused: ${reason}`);
  return { status: response.status(), reason };
}

/** On a phone, neither the run page nor a job page scrolls sideways. */
async function phoneWidth(state, context, run, job) {
  const widths = {};
  for (const [name, path] of [
    ['run', `/runs/${run}`],
    ['job', `/jobs/${job}`],
  ]) {
    const page = await open(state, context, path);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert(width <= PHONE.width, `${path} is ${width} px wide at ${PHONE.width} px: it scrolls sideways`);
    widths[name] = width;
    await shot(state, page, `phone-${name}`);
  }
  ok(`at ${PHONE.width} px the run page is ${widths.run} px wide and the job page ${widths.job} px`);
  return widths;
}
