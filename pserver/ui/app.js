// peerdex web UI: one page over the PServer's control API (/api/v1), the
// same API and token as the `peerdex` CLI.
//
// Layout of this file: helpers (elements, units), the API client and the
// token prompt, then one block per page (Search, Transfers, Wanted, My
// files, Network), then the router and start-up.
//
// Rules it keeps: every text from the server goes in with textContent, never
// innerHTML; no inline script or style (the page's Content-Security-Policy
// forbids both); the token lives in sessionStorage only; the Transfers page
// is fed by the live stream GET /api/v1/events, not by polling.
'use strict';

(() => {
  const TOKEN_KEY = 'peerdex-token';
  const SEARCH_DEBOUNCE_MS = 250;
  const SEARCH_PAGE = 50;
  const NETWORK_POLL_MS = 5000;
  // The server sends a line at least every 15 s; silence longer than this
  // means the connection is dead even if the socket does not say so.
  const EVENTS_SILENCE_MS = 40000;
  const EVENTS_BACKOFF_MAX_MS = 15000;

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** A new element: `props` are set as properties (className, title, …),
   *  except `dataset` (merged) and `attrs` (setAttribute); children are
   *  nodes or strings (as text). */
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k === 'attrs') for (const [a, av] of Object.entries(v)) e.setAttribute(a, av);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return e;
  }

  /** A file name as text (never markup). A name whose words mix scripts
   *  (Latin with a Cyrillic `а`, say: the PServer tells with `lookalike`)
   *  gets a visible marker, as `peerdex` prints one: it may imitate another
   *  name letter for letter. */
  function nameNode(name, lookalike) {
    if (!lookalike) return name;
    const mark = el('span', {
      className: 'lookalike',
      title: 'This name mixes scripts (for example Latin and Cyrillic letters): it may imitate another name',
      attrs: { role: 'img', 'aria-label': 'Warning: this name mixes scripts' },
    }, '\u26a0\ufe0e ');
    return el('span', { className: 'lookalike-name' }, mark, name);
  }

  function setText(node, text) {
    const t = String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function show(node, on) {
    node.hidden = !on;
  }

  function showError(node, err) {
    if (err) {
      setText(node, typeof err === 'string' ? err : describe(err));
      node.hidden = false;
    } else {
      node.hidden = true;
      node.textContent = '';
    }
  }

  const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

  /** Bytes in binary units, as `peerdex` prints them. */
  function humanSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    let v = bytes / 1024;
    let u = 0;
    while (v >= 1024 && u < UNITS.length - 1) {
      v /= 1024;
      u += 1;
    }
    const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
    return `${v.toFixed(digits)} ${UNITS[u]}`;
  }

  const humanRate = (bps) => `${humanSize(Math.round(bps))}/s`;

  function humanDuration(secs) {
    const s = Math.max(0, Math.round(secs));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    const h = Math.floor(s / 3600);
    return `${h} h ${Math.floor((s % 3600) / 60)} min`;
  }

  const shortId = (id) => (id && id.length > 16 ? `${id.slice(0, 12)}…` : id || '');

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ------------------------------------------------------- API and the token

  /** A refused request: the HTTP status and the server's ApiError. */
  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      super(body.message || `HTTP ${status}`);
      this.status = status;
      this.code = body.code || '';
      this.candidates = body.candidates || [];
      this.retryAfter = retryAfter;
    }
  }

  /** The ApiError JSON of a refused answer (or its text, if not JSON). */
  function parseError(status, text, retryAfter) {
    let body = {};
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text.trim() || `HTTP ${status}` };
    }
    if (typeof body !== 'object' || body === null) body = { message: String(body) };
    return new ApiError(status, body, retryAfter);
  }

  async function errorOf(resp) {
    return parseError(resp.status, await resp.text(), resp.headers.get('Retry-After'));
  }

  /** One readable sentence for a failure, by HTTP status. */
  function describe(err) {
    if (!(err instanceof ApiError)) {
      if (err && err.name === 'TypeError') {
        return `Cannot reach the PServer (${err.message}). Is it running?`;
      }
      return String((err && err.message) || err);
    }
    const m = err.message;
    const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : '';
    switch (err.status) {
      case 400: return `Not accepted: ${m}`;
      case 403: return `Refused: ${m}`;
      case 404: return `Not found: ${m}`;
      case 409:
        return err.code === 'ambiguous_name'
          ? `Several files carry that name: ${m}`
          : `Name taken by a different file: ${m}`;
      case 413: return `Too large: ${m}`;
      case 429: return `Too many requests: the directory or a neighbour is rate-limiting this peer.${wait} (${m})`;
      case 503: return `Unavailable right now: ${m}.${wait}`;
      case 507: return `Not enough disk space on the PServer: ${m}`;
      default: return `Error ${err.status}: ${m}`;
    }
  }

  const getToken = () => sessionStorage.getItem(TOKEN_KEY) || '';
  const authHeader = (token) => (token ? { Authorization: `Bearer ${token}` } : {});

  // Every request that answers 401 waits on this one prompt.
  let tokenWaiter = null;

  /** Show the token prompt (with `error`, if any); resolves once a token
   *  has been entered. */
  function askToken(error) {
    const prompt = $('token-prompt');
    showError($('token-error'), error || null);
    if (!tokenWaiter) {
      let resolve;
      const promise = new Promise((r) => {
        resolve = r;
      });
      tokenWaiter = { promise, resolve };
      prompt.hidden = false;
      $('app').inert = true;
      document.querySelector('header.top').inert = true;
      $('token-input').value = '';
      $('token-input').focus();
    }
    return tokenWaiter.promise;
  }

  function tokenEntered(ev) {
    ev.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-input').value = '';
    $('token-prompt').hidden = true;
    $('app').inert = false;
    document.querySelector('header.top').inert = false;
    const w = tokenWaiter;
    tokenWaiter = null;
    if (w) w.resolve();
  }

  /** What to say when a token was sent and refused. */
  const refused = (err) => `This token was refused: ${err.message}`;

  /** fetch() with the token; a 401 asks for one and tries again; any other
   *  refusal throws an ApiError. */
  async function api(path, opts = {}) {
    for (;;) {
      const token = getToken();
      const headers = Object.assign({}, opts.headers, authHeader(token));
      const resp = await fetch(path, Object.assign({}, opts, { headers, cache: 'no-store' }));
      if (resp.status === 401) {
        const err = await errorOf(resp);
        // Another request may have brought a new token meanwhile.
        if (getToken() !== token) continue;
        await askToken(token ? refused(err) : null);
        continue;
      }
      if (!resp.ok) throw await errorOf(resp);
      return resp;
    }
  }

  const apiJson = async (path, opts) => (await api(path, opts)).json();

  const postJson = (path, body) => apiJson(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });

  /** Copy `text` to the clipboard; says how it went next to `button`. */
  async function copyText(text, button) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        ok = true;
      }
    } catch {
      ok = false;
    }
    if (!ok) {
      // Pages not on a secure context (http:// to a non-loopback address).
      const area = el('textarea', { className: 'sr-only', readOnly: true });
      area.value = text;
      document.body.append(area);
      area.select();
      try {
        ok = document.execCommand('copy');
      } catch {
        ok = false;
      }
      area.remove();
    }
    const note = el('span', { className: 'copied', attrs: { role: 'status' } },
      ok ? 'copied' : `copy failed: ${text}`);
    const old = button.parentNode.querySelector('.copied');
    if (old) old.remove();
    button.after(note);
    setTimeout(() => note.remove(), ok ? 2000 : 15000);
  }

  // ----------------------------------------------------------------- status

  // The last GET /api/v1/status (the peer-API URL of a file needs it).
  let status = null;

  async function loadStatus() {
    status = await apiJson('/api/v1/status');
    renderStatus(status);
    return status;
  }

  /** This PServer's peer-API URL of a file (what other peers fetch). */
  async function peerUrlOf(fileId) {
    const s = status || (await loadStatus());
    return `${s.public_url.replace(/\/+$/, '')}/peer/v1/files/${fileId}`;
  }

  // ----------------------------------------------------------------- Search

  const search = {
    seq: 0, // answers to an older request are dropped
    abort: null,
    timer: null,
    q: '',
    next: null,
    shown: 0,
  };

  function searchTyped() {
    clearTimeout(search.timer);
    search.timer = setTimeout(() => runSearch($('search-input').value, null), SEARCH_DEBOUNCE_MS);
  }

  async function runSearch(text, page) {
    const q = text.trim();
    const seq = ++search.seq;
    if (search.abort) search.abort.abort();
    search.abort = null;
    const table = $('search-results');
    const body = table.tBodies[0];
    showError($('search-error'), null);
    if (!q) {
      body.replaceChildren();
      show(table, false);
      show($('search-more'), false);
      show($('search-truncated'), false);
      setText($('search-status'), '');
      search.q = '';
      return;
    }
    const ctrl = new AbortController();
    search.abort = ctrl;
    setText($('search-status'), page ? 'Loading more…' : 'Searching…');
    const params = new URLSearchParams({ q, limit: String(SEARCH_PAGE) });
    if (page) params.set('page', page);
    try {
      const res = await apiJson(`/api/v1/search?${params}`, { signal: ctrl.signal });
      if (seq !== search.seq) return;
      if (!page) {
        body.replaceChildren();
        search.shown = 0;
      }
      for (const hit of res.hits) body.append(hitRow(hit));
      search.q = q;
      search.shown += res.hits.length;
      search.next = res.next_page || null;
      show(table, search.shown > 0);
      show($('search-more'), Boolean(search.next));
      show($('search-truncated'), Boolean(res.truncated));
      setText($('search-status'), search.shown === 0
        ? `Nothing matches “${q}”.`
        : `${search.shown} result${search.shown === 1 ? '' : 's'} for “${q}”${search.next ? ' (more available)' : ''}.`);
    } catch (err) {
      if (seq !== search.seq || (err && err.name === 'AbortError')) return;
      setText($('search-status'), '');
      showError($('search-error'), err);
    }
  }

  function hitRow(hit) {
    const dl = el('button', { type: 'button', className: 'download' }, 'Download');
    dl.setAttribute('aria-label', `Download ${hit.name}`);
    dl.addEventListener('click', () => startDownload(hit, dl));
    const copy = el('button', { type: 'button', className: 'secondary copy-id', title: 'Copy the file id' }, 'Copy id');
    copy.setAttribute('aria-label', `Copy the id of ${hit.name}`);
    copy.addEventListener('click', () => copyText(hit.file_id, copy));
    // A file in a folder of its holder's share: its whole folder can come
    // too, as one job.
    const cut = hit.name.lastIndexOf('/');
    const actions = [copy, dl];
    if (cut > 0) {
      const folder = hit.name.slice(0, cut);
      const all = el('button', { type: 'button', className: 'secondary download-folder', title: `Download every file under ${folder}/ from one peer` }, 'Download folder');
      all.setAttribute('aria-label', `Download the folder ${folder}`);
      all.addEventListener('click', () => startFolderDownload(folder, all));
      actions.push(all);
    }
    return el('tr', { dataset: { fileId: hit.file_id, name: hit.name } },
      el('td', { className: 'name' }, nameNode(hit.name, hit.lookalike)),
      el('td', { className: 'num', title: `${hit.size} bytes` }, humanSize(hit.size)),
      el('td', { className: 'num' }, String(hit.holders)),
      el('td', { className: 'island' }, hit.island || ''),
      el('td', {}, el('code', { className: 'id', title: hit.file_id }, shortId(hit.file_id))),
      el('td', { className: 'actions' }, ...actions));
  }

  async function startFolderDownload(folder, button) {
    button.disabled = true;
    setText(button, 'Starting…');
    showError($('search-error'), null);
    try {
      const job = await postJson('/api/v1/downloads', { folder });
      transfers.highlight = job.job_id;
      transfers.asked.set(job.job_id, `${folder}/`);
      upsertJob(job);
      setText(button, 'Started');
      location.hash = '#transfers';
    } catch (err) {
      showError($('search-error'), err);
    } finally {
      setTimeout(() => {
        button.disabled = false;
        setText(button, 'Download folder');
      }, 1500);
    }
  }

  async function startDownload(hit, button) {
    button.disabled = true;
    setText(button, 'Starting…');
    showError($('search-error'), null);
    try {
      const job = await postJson('/api/v1/downloads', { file_id: hit.file_id });
      transfers.highlight = job.job_id;
      transfers.asked.set(job.job_id, hit.name);
      upsertJob(job);
      setText(button, 'Started');
      location.hash = '#transfers';
    } catch (err) {
      showError($('search-error'), err);
      setText(button, 'Download');
    } finally {
      setTimeout(() => {
        button.disabled = false;
        setText(button, 'Download');
      }, 1500);
    }
  }

  // -------------------------------------------------------------- Transfers

  const transfers = {
    views: new Map(), // job id → its card's parts
    states: new Map(), // job id → last state seen
    highlight: null, // job id to flash once shown
    asked: new Map(), // job id → the name of the search hit it came from
  };

  const FINAL = new Set(['done', 'failed', 'cancelled']);

  function jobTitle(j) {
    // The server names a job once it has confirmed the file's manifest.
    if (j.request.folder) return `${j.request.folder}/`;
    return j.name || j.request.name || transfers.asked.get(j.job_id)
      || (j.file_id || j.request.file_id || '').slice(0, 16) || j.job_id;
  }

  function jobView(j) {
    const v = {};
    v.name = el('span', { className: 'job-name' });
    v.state = el('span', { className: 'state' });
    v.cancel = el('button', { type: 'button', className: 'danger secondary cancel' }, 'Cancel');
    v.cancel.addEventListener('click', () => cancelJob(j.job_id, v));
    v.progress = el('progress', { max: 100, value: 0 });
    v.pct = el('span', { className: 'pct' });
    v.bytes = el('b');
    v.rate = el('b');
    v.eta = el('b');
    v.elapsed = el('b');
    v.id = el('code', { className: 'id' });
    v.error = el('p', { className: 'error', hidden: true, attrs: { role: 'alert' } });
    v.sourcesBody = el('tbody');
    v.sources = el('table', { className: 'sources', hidden: true },
      el('caption', { className: 'sr-only' }, 'Sources'),
      el('thead', {}, el('tr', {},
        ...['Peer', 'Rate', 'Bytes', 'Chunks', 'Strikes', 'In flight', 'Dropped'].map((h) =>
          el('th', { scope: 'col', className: h === 'Peer' || h === 'Dropped' ? '' : 'num' }, h)))),
      v.sourcesBody);
    v.root = el('article', { className: 'job', dataset: { jobId: j.job_id } },
      el('div', { className: 'job-head' }, v.name, v.state, v.cancel),
      el('div', { className: 'progress-row' }, v.progress, v.pct),
      el('div', { className: 'job-meta' },
        el('span', {}, 'bytes ', v.bytes),
        el('span', {}, 'rate ', v.rate),
        el('span', {}, 'ETA ', v.eta),
        el('span', {}, 'elapsed ', v.elapsed),
        el('span', {}, 'id ', v.id)),
      v.error,
      el('div', { className: 'table-wrap' }, v.sources));
    return v;
  }

  function updateJob(v, j) {
    const title = jobTitle(j);
    setText(v.name, title);
    setText(v.state, j.state);
    v.state.className = `state state-${j.state}`;
    v.root.dataset.state = j.state;
    if (j.file_id) v.root.dataset.fileId = j.file_id;
    if (j.name) v.root.dataset.name = j.name;
    const final = FINAL.has(j.state);
    show(v.cancel, !final);
    v.cancel.setAttribute('aria-label', `Cancel the download of ${title}`);

    const total = j.bytes_total;
    let pct = 0;
    if (j.state === 'done') pct = 100;
    else if (total) pct = Math.min(99, Math.floor((j.bytes_done / total) * 100));
    v.progress.value = pct;
    v.progress.setAttribute('aria-label', `Progress of ${title}`);
    setText(v.pct, `${pct} %`);

    setText(v.bytes, total === undefined || total === null
      ? humanSize(j.bytes_done)
      : `${humanSize(j.bytes_done)} of ${humanSize(total)}`);
    const recent = j.sources.reduce((sum, s) => sum + (s.rate_bps || 0), 0);
    const average = j.elapsed_secs > 0 ? j.bytes_done / j.elapsed_secs : 0;
    const rate = final ? average : recent || average;
    setText(v.rate, final ? `${humanRate(rate)} average` : humanRate(rate));
    if (final) setText(v.eta, '—');
    else if (total && rate > 0) setText(v.eta, humanDuration((total - j.bytes_done) / rate));
    else setText(v.eta, 'unknown');
    setText(v.elapsed, humanDuration(j.elapsed_secs));
    const id = j.file_id || j.request.file_id || '';
    setText(v.id, shortId(id));
    v.id.title = id;
    if (j.error) showError(v.error, j.error);
    else showError(v.error, null);

    v.sourcesBody.replaceChildren(...j.sources.map((s) => el('tr', {},
      el('td', { className: 'name' }, el('code', {}, s.peer_url)),
      el('td', { className: 'num' }, humanRate(s.rate_bps)),
      el('td', { className: 'num', title: `${s.bytes} bytes` }, humanSize(s.bytes)),
      el('td', { className: 'num' }, String(s.chunks || 0)),
      el('td', { className: 'num' }, String(s.strikes || 0)),
      el('td', { className: 'num' }, String(s.in_flight || 0)),
      el('td', {}, s.dropped || ''))));
    show(v.sources, j.sources.length > 0);
  }

  /** Show or refresh one job (a 202 answer, a cancel answer). */
  function upsertJob(j) {
    let v = transfers.views.get(j.job_id);
    if (!v) {
      v = jobView(j);
      transfers.views.set(j.job_id, v);
      $('jobs').prepend(v.root);
    }
    updateJob(v, j);
    noteState(j);
    jobsChanged();
  }

  /** A JobList from the stream: every job, oldest first. */
  function renderJobs(jobs) {
    const list = $('jobs');
    const seen = new Set();
    const newest = jobs.slice().reverse();
    newest.forEach((j, i) => {
      seen.add(j.job_id);
      let v = transfers.views.get(j.job_id);
      if (!v) {
        v = jobView(j);
        transfers.views.set(j.job_id, v);
      }
      updateJob(v, j);
      // Move only what is out of place (a card under the pointer stays put).
      if (list.children[i] !== v.root) list.insertBefore(v.root, list.children[i] || null);
      noteState(j);
    });
    for (const [id, v] of transfers.views) {
      // A job the server no longer lists (trimmed once finished); a job
      // just started may not be in a list sent a moment before.
      if (!seen.has(id) && FINAL.has(v.root.dataset.state)) {
        v.root.remove();
        transfers.views.delete(id);
      }
    }
    jobsChanged();
  }

  function noteState(j) {
    const before = transfers.states.get(j.job_id);
    transfers.states.set(j.job_id, j.state);
    // A finished download is a new file in the share folder.
    if (j.state === 'done' && before !== 'done') refreshFilesSoon();
  }

  function jobsChanged() {
    const running = [...transfers.views.values()].filter((v) => !FINAL.has(v.root.dataset.state)).length;
    const badge = $('active-count');
    setText(badge, String(running));
    show(badge, running > 0);
    badge.setAttribute('aria-label', `${running} running`);
    show($('transfers-empty'), transfers.views.size === 0);
    flashHighlight();
  }

  function flashHighlight() {
    const id = transfers.highlight;
    if (!id || currentRoute() !== 'transfers') return;
    const v = transfers.views.get(id);
    if (!v) return;
    transfers.highlight = null;
    v.root.classList.remove('flash');
    void v.root.offsetWidth; // restart the animation
    v.root.classList.add('flash');
    // Once: a card shown again later (display: none → block) would replay
    // it; leaving the page cancels it.
    const done = () => v.root.classList.remove('flash');
    v.root.addEventListener('animationend', done, { once: true });
    v.root.addEventListener('animationcancel', done, { once: true });
    v.root.scrollIntoView({ block: 'nearest' });
  }

  async function cancelJob(id, v) {
    v.cancel.disabled = true;
    setText(v.cancel, 'Cancelling…');
    showError($('transfers-error'), null);
    try {
      const job = await apiJson(`/api/v1/downloads/${encodeURIComponent(id)}`, { method: 'DELETE' });
      upsertJob(job);
    } catch (err) {
      showError($('transfers-error'), err);
    } finally {
      v.cancel.disabled = false;
      setText(v.cancel, 'Cancel');
    }
  }

  function setLive(on, text) {
    const live = $('live');
    live.className = `live ${on ? 'on' : 'off'}`;
    setText(live, text);
  }

  /** Follow GET /api/v1/events for as long as the page is open: each line
   *  is an Events (jobs, wants, want notices); a dropped or silent stream
   *  is opened again with backoff. */
  async function followEvents() {
    let backoff = 1000;
    for (;;) {
      const ctrl = new AbortController();
      let silence = null;
      const heard = () => {
        clearTimeout(silence);
        silence = setTimeout(() => ctrl.abort(), EVENTS_SILENCE_MS);
      };
      try {
        const resp = await api('/api/v1/events', {
          signal: ctrl.signal,
          headers: { Accept: 'application/x-ndjson' },
        });
        heard();
        setLive(true, 'live');
        let first = true;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          heard();
          buf += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            const ev = JSON.parse(line);
            renderJobs(ev.jobs);
            renderWants(ev.wants || []);
            noticesArrived(ev.notices || [], first);
            first = false;
            showError($('transfers-error'), null);
            backoff = 1000;
          }
        }
      } catch (err) {
        if (!(err && err.name === 'AbortError')) {
          console.warn('job events:', err);
          if (err instanceof ApiError) showError($('transfers-error'), `Live updates: ${describe(err)}`);
        }
      } finally {
        clearTimeout(silence);
      }
      setLive(false, `reconnecting in ${Math.round(backoff / 1000)} s`);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, EVENTS_BACKOFF_MAX_MS);
      setLive(false, 'reconnecting…');
    }
  }

  // ----------------------------------------------------------------- Wanted

  const wanted = { lastSeq: 0, started: false };
  const TOAST_MS = 12000;

  /** The wants from the stream: a row each, newest first. */
  function renderWants(list) {
    const rows = list.slice().reverse().map(wantRow);
    $('wanted-table').tBodies[0].replaceChildren(...rows);
    show($('wanted-table'), rows.length > 0);
    show($('wanted-empty'), rows.length === 0);
    const open = list.filter((w) => w.state !== 'done').length;
    const badge = $('wanted-count');
    setText(badge, String(open));
    show(badge, open > 0);
    badge.setAttribute('aria-label', `${open} waiting`);
  }

  function wantRow(w) {
    const what = w.file !== undefined && w.file !== null ? w.file : `words: ${w.query}`;
    const state = el('span', { className: `state state-${w.state}` }, w.state === 'ambiguous'
      ? 'ambiguous: several files carry this name; want one by id' : w.state);
    const matched = el('td', {});
    for (const m of w.matches || []) {
      const line = el('div', {}, nameNode(m.name, false), ' ',
        el('code', { className: 'id', title: m.file_id }, shortId(m.file_id)));
      if (w.state === 'ambiguous') {
        const b = el('button', { type: 'button', className: 'secondary want-this' }, 'Want this one');
        b.setAttribute('aria-label', `Want the file ${m.file_id}`);
        b.addEventListener('click', () => addWant({ file: m.file_id, download: w.download }, b));
        line.append(' ', b);
      }
      matched.append(line);
    }
    const remove = el('button', { type: 'button', className: 'danger secondary remove-want' },
      w.state === 'done' ? 'Clear' : 'Stop wanting');
    remove.setAttribute('aria-label', `Stop wanting ${what}`);
    remove.addEventListener('click', () => removeWant(w.want_id, remove));
    return el('tr', { dataset: { wantId: w.want_id, state: w.state } },
      el('td', { className: 'name' }, what, w.error ? el('div', { className: 'warn' }, w.error) : null),
      el('td', {}, w.download ? 'download' : 'tell me'),
      el('td', {}, state),
      matched,
      el('td', { className: 'actions' }, remove));
  }

  async function addWant(body, button) {
    button.disabled = true;
    showError($('wanted-error'), null);
    try {
      await postJson('/api/v1/wants', body);
      return true;
    } catch (err) {
      showError($('wanted-error'), err);
      return false;
    } finally {
      button.disabled = false;
    }
  }

  async function wantSubmitted(e) {
    e.preventDefault();
    const text = $('want-input').value.trim();
    if (!text) return;
    const download = !$('want-notify').checked;
    const body = $('want-words').checked ? { query: text, download } : { file: text, download };
    if (await addWant(body, $('want-add'))) $('want-input').value = '';
  }

  async function removeWant(id, button) {
    button.disabled = true;
    try {
      await api(`/api/v1/wants/${encodeURIComponent(id)}`, { method: 'DELETE' });
      showError($('wanted-error'), null);
    } catch (err) {
      showError($('wanted-error'), err);
      button.disabled = false;
    }
  }

  /** Notices of the stream: a toast for each new one (not for those the
   *  first event of the page's first stream brings: they happened before
   *  the page opened). */
  function noticesArrived(notices, firstOfStream) {
    if (firstOfStream && notices.length && notices[notices.length - 1].seq < wanted.lastSeq) {
      wanted.lastSeq = 0; // the PServer restarted: its notices count again
    }
    for (const n of notices) {
      if (n.seq <= wanted.lastSeq) continue;
      wanted.lastSeq = n.seq;
      if (wanted.started) toast(n);
    }
    wanted.started = true;
  }

  function toast(n) {
    const t = el('div', { className: `toast toast-${n.kind}`, dataset: { kind: n.kind, wantId: n.want_id } },
      el('strong', {}, { matched: 'Match', ambiguous: 'Ambiguous name', downloading: 'Wanted file appeared',
        done: 'Wanted file arrived', failed: 'Download failed' }[n.kind] || 'Wanted'), ' ', n.message);
    if (n.kind === 'done') refreshFilesSoon();
    $('toasts').append(t);
    setTimeout(() => t.remove(), TOAST_MS);
  }

  // --------------------------------------------------------------- My files

  const files = { seq: 0, timer: null };

  async function loadFiles() {
    const seq = ++files.seq;
    try {
      const list = await apiJson('/api/v1/files');
      if (seq !== files.seq) return;
      showError($('files-error'), null);
      renderFiles(list.files);
    } catch (err) {
      if (seq === files.seq) showError($('files-error'), err);
    }
  }

  function refreshFilesSoon() {
    clearTimeout(files.timer);
    files.timer = setTimeout(loadFiles, 200);
  }

  function renderFiles(list) {
    const rows = list
      .slice()
      .sort((a, b) => a.name.localeCompare(b.name))
      .map(fileRow);
    $('files-table').tBodies[0].replaceChildren(...rows);
    show($('files-table'), rows.length > 0);
    show($('files-empty'), rows.length === 0);
  }

  function fileRow(f) {
    const button = (label, cls, what, onClick) => {
      const b = el('button', { type: 'button', className: cls }, label);
      b.setAttribute('aria-label', `${what} ${f.name}`);
      b.addEventListener('click', () => onClick(b));
      return b;
    };
    const actions = el('td', { className: 'actions' });
    const normal = () => [
      button('Save', 'secondary save', 'Save a copy of', (b) => saveFile(f, b)),
      button('Copy id', 'secondary copy-id', 'Copy the id of', (b) => copyText(f.file_id, b)),
      button('Copy URL', 'secondary copy-url', 'Copy the peer URL of', async (b) => {
        try {
          copyText(await peerUrlOf(f.file_id), b);
        } catch (err) {
          showError($('files-error'), err);
        }
      }),
      button('Remove', 'danger secondary remove', 'Stop sharing and delete', () => {
        actions.replaceChildren(
          el('span', {}, 'Delete this copy? '),
          button('Yes, remove', 'danger confirm-remove', 'Confirm removing', (b) => removeFile(f, b)),
          button('Keep', 'secondary keep', 'Keep', () => actions.replaceChildren(...normal())));
      }),
    ];
    actions.replaceChildren(...normal());
    return el('tr', { dataset: { fileId: f.file_id, name: f.name } },
      el('td', { className: 'name' }, nameNode(f.name, f.lookalike)),
      el('td', { className: 'num', title: `${f.size} bytes` }, humanSize(f.size)),
      el('td', {}, el('code', { className: 'id', title: f.file_id }, shortId(f.file_id))),
      actions);
  }

  async function removeFile(f, button) {
    button.disabled = true;
    try {
      await api(`/api/v1/files/${encodeURIComponent(f.file_id)}`, { method: 'DELETE' });
      showError($('files-error'), null);
    } catch (err) {
      showError($('files-error'), err);
    }
    loadFiles();
  }

  /** Save a shared file's bytes: fetched with the token (a plain link
   *  cannot carry it), handed to the browser as an object URL. */
  async function saveFile(f, button) {
    button.disabled = true;
    setText(button, 'Saving…');
    try {
      const resp = await api(`/api/v1/files/${encodeURIComponent(f.file_id)}/content`);
      const url = URL.createObjectURL(await resp.blob());
      const a = el('a', { href: url, download: f.name, className: 'sr-only' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showError($('files-error'), err);
    } finally {
      button.disabled = false;
      setText(button, 'Save');
    }
  }

  // Uploads go one at a time, in the order they were given.
  let uploadQueue = Promise.resolve();

  function uploadFiles(list) {
    for (const file of list) {
      const item = uploadItem(file);
      $('uploads').prepend(item.root);
      uploadQueue = uploadQueue.then(() => uploadOne(file, item));
    }
  }

  function uploadItem(file) {
    const item = {};
    item.progress = el('progress', { max: 100, value: 0 });
    item.progress.setAttribute('aria-label', `Upload of ${file.name}`);
    item.pct = el('span', { className: 'pct' }, '0 %');
    item.msg = el('span', { className: 'up-msg', attrs: { role: 'status' } }, 'waiting…');
    item.root = el('li', { dataset: { name: file.name, state: 'waiting' } },
      el('span', { className: 'up-name' }, file.name),
      item.progress, item.pct, item.msg);
    return item;
  }

  /** PUT one file with XMLHttpRequest (fetch reports no upload progress). */
  function uploadOne(file, item) {
    return new Promise((resolve) => {
      const token = getToken();
      const xhr = new XMLHttpRequest();
      xhr.open('PUT', `/api/v1/files/${encodeURIComponent(file.name)}`);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
      item.root.dataset.state = 'uploading';
      setText(item.msg, `uploading ${humanSize(file.size)}…`);
      xhr.upload.onprogress = (e) => {
        if (!e.lengthComputable || e.total === 0) return;
        const pct = Math.min(99, Math.floor((e.loaded / e.total) * 100));
        item.progress.value = pct;
        setText(item.pct, `${pct} %`);
      };
      xhr.onload = async () => {
        if (xhr.status === 401) {
          const err = parseError(401, xhr.responseText, null);
          if (getToken() === token) await askToken(token ? refused(err) : null);
          resolve(uploadOne(file, item));
          return;
        }
        if (xhr.status === 200 || xhr.status === 201) {
          let info = {};
          try {
            info = JSON.parse(xhr.responseText);
          } catch {
            info = {};
          }
          item.progress.value = 100;
          setText(item.pct, '100 %');
          item.root.dataset.state = 'done';
          if (info.file_id) item.root.dataset.fileId = info.file_id;
          setText(item.msg, xhr.status === 201
            ? `shared, id ${shortId(info.file_id)}`
            : `already shared under this name, id ${shortId(info.file_id)}`);
          refreshFilesSoon();
        } else {
          const err = parseError(xhr.status, xhr.responseText, xhr.getResponseHeader('Retry-After'));
          item.root.dataset.state = 'failed';
          setText(item.pct, 'failed');
          setText(item.msg, describe(err));
        }
        resolve();
      };
      xhr.onerror = () => {
        item.root.dataset.state = 'failed';
        setText(item.pct, 'failed');
        setText(item.msg, 'Upload failed: the connection to the PServer broke.');
        resolve();
      };
      xhr.send(file);
    });
  }

  function wireDropZone() {
    const zone = $('drop-zone');
    const input = $('file-input');
    input.addEventListener('change', () => {
      if (input.files.length) uploadFiles([...input.files]);
      input.value = '';
    });
    for (const ev of ['dragenter', 'dragover']) {
      zone.addEventListener(ev, (e) => {
        e.preventDefault();
        zone.classList.add('over');
      });
    }
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('over');
      const list = e.dataTransfer && e.dataTransfer.files;
      if (list && list.length) uploadFiles([...list]);
    });
    zone.addEventListener('keydown', (e) => {
      if (e.target === zone && (e.key === 'Enter' || e.key === ' ')) {
        e.preventDefault();
        input.click();
      }
    });
    // A file dropped beside the zone must not make the browser leave the page.
    for (const ev of ['dragover', 'drop']) window.addEventListener(ev, (e) => e.preventDefault());
  }

  // ---------------------------------------------------------------- Network

  /** The raw JSON value of a status field, as text (strings as they are). */
  const raw = (v) => (typeof v === 'string' ? v : JSON.stringify(v));

  /** Fill the element marked data-fact=`field`: its text for people, its
   *  data-value the field's raw value (what the browser test compares). */
  function fact(field, value, text) {
    const node = document.querySelector(`[data-fact="${field}"]`);
    if (!node) return null;
    node.dataset.value = raw(value);
    if (text !== undefined) setText(node, text);
    return node;
  }

  function reach(ok) {
    return el('span', { className: ok ? 'ok' : 'bad' }, ok ? 'reachable' : 'unreachable');
  }

  function renderStatus(s) {
    fact('peer_id', s.peer_id, s.peer_id);
    fact('public_url', s.public_url, s.public_url);
    // Every central of the list, in its order; the one in use says so,
    // with the name it gave in its Join answer or last heartbeat answer.
    const name = s.central_name ?? null;
    const central = el('li', {},
      el('code', { dataset: { fact: 'central_url', value: raw(s.central_url) } }, s.central_url), ' ',
      el('span', { dataset: { fact: 'central_reachable', value: raw(s.central_reachable) } },
        reach(s.central_reachable)),
      ' (in use',
      el('span', { dataset: { fact: 'central_name', value: raw(name) } }, name ? `, "${name}"` : ''),
      ')');
    const list = s.centrals || [s.central_url];
    const others = list
      .filter((u) => u !== s.central_url)
      .map((u) => el('li', {}, el('code', {}, u)));
    fact('centrals', list);
    $('centrals').replaceChildren(central, ...others);
    fact('lease_age_secs', s.lease_age_secs,
      s.lease_age_secs === null || s.lease_age_secs === undefined
        ? 'never joined'
        : `renewed ${s.lease_age_secs} s ago`);
    // Why the last Join or Heartbeat failed, while it does.
    const said = s.lease_error || null;
    fact('lease_error', said, said || '');
    show($('lease-error-term'), Boolean(said));
    show($('lease-error-desc'), Boolean(said));
    const nb = fact('neighbours', s.neighbours);
    nb.replaceChildren(...(s.neighbours.length
      ? s.neighbours.map((n) => el('li', {}, el('code', {}, n.url), ' ', reach(n.reachable)))
      : [el('li', { className: 'note' }, 'none (searches go to the central directly)')]));
    fact('shared_files', s.shared_files, String(s.shared_files));
    fact('shared_bytes', s.shared_bytes, humanSize(s.shared_bytes));
    fact('files_hashed', s.files_hashed, String(s.files_hashed));
    // Files in the share folder that cannot be shared, with why (a few).
    const unshared = s.unshared || [];
    fact('unshared_files', s.unshared_files,
      s.unshared_files ? `${s.unshared_files} files (rename or remove them)` : 'none');
    fact('unshared', unshared,
      unshared.length ? `: ${unshared.map((u) => `${u.name} (${u.reason})`).join('; ')}` : '');
    // New or changed files being hashed (they are shared as each is done).
    const h = s.hashing || null;
    fact('hashing', h, h ? `hashing ${h.done.toLocaleString('en-US')} of ${h.total.toLocaleString('en-US')}` : 'idle');
    // Shared files the directory does not list (its limit per peer).
    const notListed = s.not_listed_files || 0;
    fact('not_listed_files', notListed,
      notListed ? `${notListed.toLocaleString('en-US')} files` : 'none');
    const why = s.not_listed_reason || null;
    fact('not_listed_reason', why, why ? `: ${why}` : '');
    fact('active_uploads', s.active_uploads, String(s.active_uploads));
    fact('active_downloads', s.active_downloads, String(s.active_downloads));
    fact('bytes_sent', s.bytes_sent, humanSize(s.bytes_sent));
    fact('bytes_received', s.bytes_received, humanSize(s.bytes_received));
    // Copies of other peers' files kept for the directory
    // (PSERVER_REPLICA_QUOTA_BYTES), and the ones being fetched.
    const held = s.replicas || [];
    fact('replicas', held, String(held.length));
    fact('replica_used_bytes', s.replica_used_bytes, humanSize(s.replica_used_bytes));
    fact('replica_quota_bytes', s.replica_quota_bytes,
      s.replica_quota_bytes ? humanSize(s.replica_quota_bytes) : 'none');
    const fetching = s.replica_fetches || [];
    fact('replica_fetches', fetching, fetching.length ? `; fetching ${fetching.length}` : '');
    const r = s.lease_renewals || { ok: 0, rejoin: 0, error: 0 };
    fact('lease_renewals', s.lease_renewals, `${r.ok} ok, ${r.rejoin} rejoin, ${r.error} error`);
    fact('max_upload_bytes', s.max_upload_bytes, s.max_upload_bytes ? humanSize(s.max_upload_bytes) : 'no limit');
    fact('version', s.version, s.version);
    // The directory's leader, as the Join or last heartbeat answer named it.
    const leader = s.leader ?? null;
    fact('leader', leader, leader || '—');
    // The directory's island (CENTRAL_ISLAND_NAME).
    const island = s.island ?? null;
    fact('island', island, island || '—');
    // How other peers reach us: directly, or through a relay (behind NAT).
    const nat = s.reachability || null;
    const relaying = nat && nat.relaying_for !== undefined && nat.relaying_for !== null
      ? `; relaying for ${nat.relaying_for} peers behind NAT` : '';
    fact('reachability', nat, nat ? `${nat.summary}${relaying}` : '—');
    setText($('network-updated'), `Updated ${new Date().toLocaleTimeString()}; refreshed every ${NETWORK_POLL_MS / 1000} s on this page.`);
    setText($('footer-peer'), `peer ${shortId(s.peer_id)} · peerdex ${s.version}`);
    setText($('upload-limit'), s.max_upload_bytes ? `Up to ${humanSize(s.max_upload_bytes)} per file.` : '');
    document.body.dataset.ready = 'yes';
  }

  let networkTimer = null;

  async function refreshNetwork() {
    try {
      await loadStatus();
      showError($('network-error'), null);
    } catch (err) {
      showError($('network-error'), err);
    }
  }

  /** Poll the status while the Network page is shown and the tab visible. */
  function networkPolling() {
    const want = currentRoute() === 'network' && document.visibilityState === 'visible';
    if (want && !networkTimer) {
      refreshNetwork();
      networkTimer = setInterval(refreshNetwork, NETWORK_POLL_MS);
    } else if (!want && networkTimer) {
      clearInterval(networkTimer);
      networkTimer = null;
    }
  }

  // ---------------------------------------------------------- Private files

  async function loadPrivate() {
    try {
      const list = await apiJson('/api/v1/private');
      showError($('private-error'), null);
      const rows = list.files.map(privateRow);
      $('private-table').tBodies[0].replaceChildren(...rows);
      show($('private-table'), rows.length > 0);
      show($('private-empty'), rows.length === 0);
      setText($('private-dir'), `Opened files are stored in ${list.private_dir} (never shared).`);
    } catch (err) {
      showError($('private-error'), err);
    }
  }

  function privateRow(f) {
    const button = (label, cls, onClick) => {
      const b = el('button', { type: 'button', className: cls }, label);
      b.setAttribute('aria-label', `${label} ${f.name}`);
      b.addEventListener('click', () => onClick(b));
      return b;
    };
    const actions = el('td', { className: 'actions' },
      button('Copy ticket', 'secondary copy-ticket', (b) => copyText(f.ticket, b)));
    if (f.saved_as) {
      actions.append(button('Save', 'secondary save', (b) => savePrivate(f, b)));
    }
    actions.append(button('Remove', 'danger secondary remove', async (b) => {
      b.disabled = true;
      try {
        await api(`/api/v1/private/${encodeURIComponent(f.file_id)}`, { method: 'DELETE' });
      } catch (err) {
        showError($('private-error'), err);
      }
      loadPrivate();
    }));
    return el('tr', { dataset: { fileId: f.file_id, name: f.name } },
      el('td', { className: 'name' }, nameNode(f.name, false)),
      el('td', { className: 'num', title: `${f.size} bytes` }, humanSize(f.size)),
      el('td', {}, f.origin === 'owned' ? 'yours' : 'received'),
      el('td', {}, el('code', { className: 'id', title: f.file_id }, shortId(f.file_id))),
      actions);
  }

  async function savePrivate(f, button) {
    button.disabled = true;
    try {
      const resp = await api(`/api/v1/private/${encodeURIComponent(f.file_id)}/content`);
      const url = URL.createObjectURL(await resp.blob());
      const a = el('a', { href: url, download: f.saved_as, className: 'sr-only' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showError($('private-error'), err);
    } finally {
      button.disabled = false;
    }
  }

  async function fetchTicket(ev) {
    ev.preventDefault();
    const ticket = $('ticket-input').value.trim();
    showError($('ticket-error'), null);
    $('ticket-submit').disabled = true;
    try {
      const job = await postJson('/api/v1/private/fetch', { ticket });
      $('ticket-input').value = '';
      transfers.highlight = job.job_id;
      upsertJob(job);
      location.hash = '#transfers';
    } catch (err) {
      showError($('ticket-error'), err);
    } finally {
      $('ticket-submit').disabled = false;
    }
  }

  async function uploadPrivate(file) {
    const note = $('private-upload');
    show(note, true);
    showError($('private-error'), null);
    setText(note, `encrypting and uploading ${file.name} (${humanSize(file.size)})…`);
    try {
      const f = await apiJson(`/api/v1/private?name=${encodeURIComponent(file.name)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/octet-stream' },
        body: file,
      });
      setText(note, `${f.name} is private, id ${shortId(f.file_id)}: give its ticket (Copy ticket) to whoever may read it.`);
      loadPrivate();
    } catch (err) {
      show(note, false);
      showError($('private-error'), err);
    }
  }

  // ----------------------------------------------------------------- Router

  const ROUTES = ['search', 'transfers', 'wanted', 'files', 'private', 'network'];

  function currentRoute() {
    const r = location.hash.replace(/^#/, '');
    return ROUTES.includes(r) ? r : 'search';
  }

  function route() {
    const r = currentRoute();
    for (const name of ROUTES) show($(`page-${name}`), name === r);
    for (const a of document.querySelectorAll('nav a[data-route]')) {
      if (a.dataset.route === r) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `peerdex · ${{ search: 'Search', transfers: 'Transfers', wanted: 'Wanted', files: 'My files', private: 'Private', network: 'Network' }[r]}`;
    document.body.dataset.route = r;
    if (r === 'files') loadFiles();
    if (r === 'private') loadPrivate();
    if (r === 'transfers') flashHighlight();
    if (r === 'search' && !tokenWaiter) $('search-input').focus();
    networkPolling();
  }

  function start() {
    $('token-form').addEventListener('submit', tokenEntered);
    $('search-form').addEventListener('submit', (e) => {
      e.preventDefault();
      clearTimeout(search.timer);
      runSearch($('search-input').value, null);
    });
    $('search-input').addEventListener('input', searchTyped);
    $('want-form').addEventListener('submit', wantSubmitted);
    $('search-more').addEventListener('click', () => {
      if (search.next) runSearch(search.q, search.next);
    });
    wireDropZone();
    $('ticket-form').addEventListener('submit', fetchTicket);
    $('private-input').addEventListener('change', () => {
      const input = $('private-input');
      if (input.files.length) uploadPrivate(input.files[0]);
      input.value = '';
    });
    window.addEventListener('hashchange', route);
    document.addEventListener('visibilitychange', networkPolling);
    route();
    refreshNetwork();
    if (currentRoute() !== 'files') loadFiles();
    followEvents();
  }

  start();
})();
