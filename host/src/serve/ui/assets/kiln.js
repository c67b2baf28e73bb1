// Kiln web UI: the few things a server-rendered page cannot do. Everything
// here is optional; the pages read fine without it.
'use strict';

(() => {
  const log = document.getElementById('log');
  if (!log) return;

  // Search: hide the lines that do not contain the text (any case).
  const search = document.getElementById('log-search');
  const filter = () => {
    const term = search ? search.value.trim().toLowerCase() : '';
    for (const line of log.children) {
      line.classList.toggle('hidden', term !== '' && !line.textContent.toLowerCase().includes(term));
    }
  };
  if (search) search.addEventListener('input', filter);

  // Live: follow the log from the byte offset the page stopped at.
  if (log.dataset.live !== '1' || !window.EventSource) return;
  let next = log.querySelectorAll('.line').length + 1;
  const errorLike = /error|failed|panicked|fatal/i;
  const append = (text) => {
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    const term = search ? search.value.trim().toLowerCase() : '';
    for (const body of text.split('\n')) {
      const n = next++;
      const line = document.createElement('span');
      line.className = errorLike.test(body) ? 'line error' : 'line';
      line.id = `L${n}`;
      const a = document.createElement('a');
      a.className = 'n';
      a.href = `#L${n}`;
      a.dataset.n = String(n);
      a.setAttribute('aria-label', `line ${n}`);
      line.append(a, document.createTextNode(body));
      if (term !== '' && !body.toLowerCase().includes(term)) line.classList.add('hidden');
      log.append(line);
    }
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  };
  const source = new EventSource(`${log.dataset.stream}?from=${log.dataset.offset || 0}`);
  source.onmessage = (e) => append(e.data);
  source.addEventListener('end', (e) => {
    source.close();
    let end = {};
    try { end = JSON.parse(e.data); } catch (_) { /* keep the page as it is */ }
    const status = document.getElementById('job-status');
    if (status && end.status) {
      status.textContent = end.status.replace(/_/g, ' ');
      status.className = `state status-${end.status}`;
      status.dataset.status = end.status;
    }
  });
})();
