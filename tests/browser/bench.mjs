// The benchmark of `node run.mjs --bench <url>`: how long a browser takes to
// show the job graph of a run page. A script installed before the page's own
// watches the parser; once an element after `#job-graph` exists (or the
// document is parsed) the graph is complete, its layout is forced
// (`getBBox`), and the first frame after that is taken as painted. Times are
// milliseconds from navigation start (`performance.timeOrigin`), so they
// include the server's answer; `browser_ms` leaves out the wait for the first
// byte. Each load is a fresh browser context (cold cache). Nothing is
// asserted here: the caller compares with its budget.

/** Runs in the page before anything else; leaves its marks in window.kilnGraph. */
function watchGraph() {
  const marks = {};
  window.kilnGraph = marks;
  let done = false;
  const finish = () => {
    const graph = document.getElementById('job-graph');
    if (done || !graph) return;
    done = true;
    observer.disconnect();
    marks.parsed_ms = performance.now();
    graph.getBBox();
    graph.getBoundingClientRect();
    marks.laid_out_ms = performance.now();
    marks.nodes = graph.querySelectorAll('.node').length;
    marks.edges = graph.querySelectorAll('.edge').length;
    requestAnimationFrame(() =>
      setTimeout(() => {
        marks.painted_ms = performance.now();
      }, 0),
    );
  };
  const observer = new MutationObserver((records) => {
    const graph = document.getElementById('job-graph');
    if (!graph) return;
    for (const r of records) {
      for (const n of r.addedNodes) {
        const after = graph.compareDocumentPosition(n) & Node.DOCUMENT_POSITION_FOLLOWING;
        if (after && !graph.contains(n)) return finish();
      }
    }
  });
  observer.observe(document, { childList: true, subtree: true });
  document.addEventListener('DOMContentLoaded', finish);
}

async function once(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const page = await context.newPage();
    await page.addInitScript(watchGraph);
    const response = await page.goto(url, { waitUntil: 'commit', timeout: 60_000 });
    if (!response || response.status() !== 200) {
      throw new Error(`GET ${url} answered ${response ? response.status() : 'nothing'}`);
    }
    await page.waitForFunction(() => window.kilnGraph && window.kilnGraph.painted_ms !== undefined, null, {
      timeout: 60_000,
      polling: 50,
    });
    await page.waitForLoadState('domcontentloaded');
    return await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const m = window.kilnGraph;
      return {
        nodes: m.nodes,
        edges: m.edges,
        first_byte_ms: nav.responseStart,
        html_ms: nav.responseEnd,
        html_bytes: nav.decodedBodySize,
        graph_parsed_ms: m.parsed_ms,
        graph_laid_out_ms: m.laid_out_ms,
        graph_ms: m.painted_ms,
        browser_ms: m.painted_ms - nav.responseStart,
        dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      };
    });
  } finally {
    await context.close();
  }
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const round = (ms) => Math.round(ms * 10) / 10;

export async function bench(browser, url, repeat) {
  const loads = [];
  for (let i = 0; i < repeat; i++) loads.push(await once(browser, url));
  const missing = loads.find((l) => l.nodes === undefined);
  if (missing) throw new Error(`no #job-graph on ${url}`);
  const keys = ['first_byte_ms', 'html_ms', 'graph_parsed_ms', 'graph_laid_out_ms', 'graph_ms', 'browser_ms', 'dom_content_loaded_ms'];
  const summary = Object.fromEntries(keys.map((k) => [k, round(median(loads.map((l) => l[k])))]));
  return {
    url,
    browser: browser.version(),
    repeat,
    nodes: loads[0].nodes,
    edges: loads[0].edges,
    html_bytes: loads[0].html_bytes,
    median: summary,
    loads: loads.map((l) => Object.fromEntries(Object.entries(l).map(([k, v]) => [k, k.endsWith('_ms') ? round(v) : v]))),
  };
}
