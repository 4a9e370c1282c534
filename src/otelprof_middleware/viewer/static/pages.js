/* otelprof viewer pages: the profile list, one profile, Explore (merge a selection) and
 * Compare (two selections).  Every page keeps its state in the URL, in the same selector
 * language the API and the CLI use (q=, a=, b=). */
(function () {
  'use strict';
  var O = window.OtelProf;
  var el = O.el, append = O.append, svg = O.svg;
  var PAGE = 50;
  var RANGES = [['15m', 'now-15m'], ['1h', 'now-1h'], ['6h', 'now-6h'], ['24h', 'now-24h'], ['7d', 'now-7d'], ['all', '']];

  function folderNote(folder) {
    if (!folder) return null;
    var bits = [];
    if (folder.unreadable_files) bits.push(folder.unreadable_files + ' unreadable file' + (folder.unreadable_files === 1 ? '' : 's'));
    if (folder.foreign_files) bits.push(folder.foreign_files + ' foreign file' + (folder.foreign_files === 1 ? '' : 's'));
    if (!bits.length) return null;
    return el('span', { className: 'skipped', id: 'skipped-files', title: 'files in the folder that are not readable profiles of the file exporter: never listed, never deleted' },
      bits.join(', ') + ' skipped');
  }

  function statusBadge(status) {
    if (status === null || status === undefined) return el('span', { className: 'muted', text: '—' });
    return el('span', { className: 'status ' + O.statusClass(status), text: String(status) });
  }

  function rangeButtons(current, onPick) {
    var seg = el('div', { className: 'seg', id: 'range', role: 'group', 'aria-label': 'Time range' });
    RANGES.forEach(function (r) {
      seg.appendChild(el('button', { type: 'button', 'data-range': r[0], className: current === r[1] ? 'active' : '',
        onclick: function () { onPick(r[1]); } }, r[0]));
    });
    return seg;
  }

  // ------------------------------------------------------------------ list page
  function showList(app) {
    document.title = 'Profiles — otelprof viewer';
    O.setNav('list');
    var state = { q: O.param('q'), sort: O.param('sort', '-start'), offset: Number(O.param('offset', '0')) || 0, timer: null };
    var search = el('input', { type: 'search', id: 'search', value: state.q, 'aria-label': 'Selector or id',
      placeholder: 'route=/checkout status=5xx from=now-1h, or paste a trace id' });
    var routeSel = el('select', { id: 'filter-route', 'aria-label': 'Route' });
    var trigSel = el('select', { id: 'filter-trigger', 'aria-label': 'Trigger' });
    var statusSel = el('select', { id: 'filter-status', 'aria-label': 'Status' },
      ['', '2xx', '3xx', '4xx', '5xx'].map(function (s) { return el('option', { value: s, text: s || 'any status' }); }));
    var auto = el('input', { type: 'checkbox', id: 'auto-refresh' });
    var summary = el('p', { className: 'summary', id: 'summary' });
    var hint = el('p', { className: 'muted', id: 'search-hint' });
    var cols = [['start', 'Start', ''], ['status', 'Status', 'num'], ['name', 'Name', ''], ['trigger', 'Trigger', ''],
      ['duration', 'Duration', 'num'], ['cpu', 'CPU', 'num'], ['samples', 'Samples', 'num'], [null, 'Trace id / span id', ''], [null, 'Top function', '']];
    var headRow = el('tr');
    cols.forEach(function (c) {
      var th = el('th', { className: (c[2] ? c[2] + ' ' : '') + (c[0] ? 'sortable' : ''), 'data-sort': c[0], text: c[1] });
      if (c[0]) th.addEventListener('click', function () {
        var want = (c[0] === 'name' || c[0] === 'trigger') ? c[0] : '-' + c[0];
        state.sort = state.sort === want ? (want[0] === '-' ? want.slice(1) : '-' + want) : want;
        state.offset = 0;
        O.setURL({ sort: state.sort === '-start' ? '' : state.sort, offset: '' });
        load();
      });
      headRow.appendChild(th);
    });
    var tbody = el('tbody');
    var table = el('table', { className: 'data', id: 'profiles' }, el('thead', null, headRow), tbody);
    var prev = el('button', { type: 'button', id: 'newer', onclick: function () { state.offset = Math.max(0, state.offset - PAGE); O.setURL({ offset: state.offset || '' }); load(); } }, '← Newer');
    var next = el('button', { type: 'button', id: 'older', onclick: function () { state.offset += PAGE; O.setURL({ offset: state.offset }); load(); } }, 'Older →');
    var empty = el('div', { className: 'panel', id: 'empty', hidden: true });
    var explore = el('a', { id: 'explore-link', className: 'button' }, 'Merge these → Explore');
    var compare = el('a', { id: 'compare-link', className: 'button' }, 'Compare…');

    app.textContent = '';
    append(app, [
      el('h1', { text: 'Profiles' }),
      el('form', { className: 'controls', id: 'search-form', onsubmit: function (e) { e.preventDefault(); apply(); } },
        search, el('button', { type: 'submit', id: 'apply' }, 'Search'),
        el('label', null, 'Route', routeSel), el('label', null, 'Trigger', trigSel), el('label', null, 'Status', statusSel),
        el('button', { type: 'button', id: 'refresh', onclick: function () { refresh(); } }, 'Refresh'),
        el('label', null, auto, 'auto-refresh')),
      hint, el('div', { className: 'summary-row' }, summary, explore, compare),
      table, el('div', { className: 'pager' }, prev, next), empty
    ]);

    function fillSelect(sel, values, current, allLabel) {
      sel.textContent = '';
      sel.appendChild(el('option', { value: '', text: allLabel }));
      values.forEach(function (v) { sel.appendChild(el('option', { value: v.value, text: v.value + ' (' + v.count + ')' })); });
      if (current && !values.some(function (v) { return v.value === current; })) sel.appendChild(el('option', { value: current, text: current }));
      sel.value = current;
    }
    function apply() {
      state.q = search.value.trim();
      state.offset = 0;
      O.setURL({ q: state.q, offset: '' });
      load();
    }
    [[routeSel, 'route'], [trigSel, 'trigger'], [statusSel, 'status']].forEach(function (p) {
      p[0].addEventListener('change', function () { search.value = O.setTerm(search.value, p[1], p[0].value); apply(); });
    });
    function render(data) {
      O.setNav('list', data.folder);
      tbody.textContent = '';
      data.profiles.forEach(function (p) {
        var href = '/profile/' + p.profile_id;
        var top = (p.top && p.top[0]) ? p.top[0].function : '';
        var name = p.name || (p.route ? (p.method + ' ' + p.route) : '(not in index)');
        var tr = el('tr', { className: 'clickable' + (p.status >= 500 ? ' error-row' : ''), 'data-profile-id': p.profile_id },
          el('td', { className: 'mono', text: O.fmtTime(p.start_unix_nano) }),
          el('td', { className: 'num' }, statusBadge(p.status)),
          el('td', null, el('a', { href: href, className: 'pname', text: name })),
          el('td', null, (p.triggers || []).map(function (t) { return el('span', { className: 'pill', text: t }); })),
          el('td', { className: 'num', text: O.fmtMs(p.duration_ms) }),
          el('td', { className: 'num', text: O.fmtMs(p.cpu_ms) }),
          el('td', { className: 'num', text: O.fmtNum(p.samples) }),
          el('td', { className: 'ids', title: p.trace_id ? ('trace ' + p.trace_id + '\nspan ' + p.span_id) : 'no span link' },
            p.trace_id ? O.shortId(p.trace_id) + ' / ' + O.shortId(p.span_id) : '—'),
          el('td', { className: 'topfn', title: top, text: top }));
        tr.addEventListener('click', function (e) { if (e.target.tagName !== 'A') location.href = href; });
        tbody.appendChild(tr);
      });
      Array.prototype.forEach.call(headRow.children, function (th) {
        var k = th.getAttribute('data-sort');
        th.classList.toggle('sorted', !!k && state.sort.replace('-', '') === k);
        th.classList.toggle('asc', !!k && state.sort === k);
      });
      var first = data.count ? state.offset + 1 : 0, last = state.offset + data.profiles.length;
      summary.textContent = '';
      append(summary, [(data.count ? first + '–' + last + ' of ' : '') + data.count + ' profile' + (data.count === 1 ? '' : 's') +
        (data.selector ? ' matching ' : '') , data.selector ? el('code', { text: data.selector }) : null,
        ' · ' + data.folder.profiles + ' in the folder', folderNote(data.folder) ? ' · ' : '', folderNote(data.folder)]);
      prev.disabled = state.offset <= 0;
      next.disabled = last >= data.count;
      explore.href = '/explore' + O.query({ q: data.selector });
      compare.href = '/compare' + O.query({ a: data.selector });
      table.hidden = !data.profiles.length;
      empty.hidden = !!data.profiles.length;
      empty.textContent = '';
      if (!data.profiles.length) {
        if (!data.folder.profiles) {
          append(empty, [el('p', null, el('strong', { text: 'No profiles yet' }), ' in ', el('code', { text: data.folder.directory }),
            data.folder.exists ? '' : ' (the folder does not exist yet)', '.'),
          el('p', { className: 'muted' }, 'Run your app with ', el('code', { text: 'OTELPROF_EXPORTER=file' }),
            ' and ', el('code', { text: 'OTELPROF_OUTPUT_DIR=' + data.folder.directory }), ', then press Refresh.')]);
        } else append(empty, el('p', { className: 'muted', text: 'No profile matches this selector.' }));
      }
      hint.textContent = '';
      if (data.profiles.length === 1 && state.q && !/[=<>~]/.test(state.q)) {
        append(hint, ['One profile has this id: ', el('a', { href: '/profile/' + data.profiles[0].profile_id, id: 'open-match', text: 'open it' })]);
      }
    }
    function load() {
      search.value = state.q;
      var sel = state.q;
      O.getJSON(O.API + '/profiles' + O.query({ q: sel, limit: PAGE, offset: state.offset, sort: state.sort })).then(render).catch(function (e) {
        summary.textContent = '';
        tbody.textContent = '';
        append(summary, el('span', { className: 'error', id: 'selector-error', text: e.status === 400 ? e.message : 'Could not load the profile list: ' + e.message }));
      });
      var range = O.getTerm(sel, 'from') ? 'from=' + O.getTerm(sel, 'from') : '';
      O.getJSON(O.API + '/values/route' + O.query({ q: range })).then(function (d) { fillSelect(routeSel, d.values.filter(function (v) { return v.value; }), O.getTerm(sel, 'route'), 'all routes'); }).catch(function () {});
      O.getJSON(O.API + '/values/trigger' + O.query({ q: range })).then(function (d) { fillSelect(trigSel, d.values, O.getTerm(sel, 'trigger'), 'all triggers'); }).catch(function () {});
      statusSel.value = O.getTerm(sel, 'status');
    }
    function refresh() { O.getJSON(O.API + '/folder?sync=1').then(load, load); }
    auto.addEventListener('change', function () {
      if (state.timer) { clearInterval(state.timer); state.timer = null; }
      if (auto.checked) state.timer = setInterval(refresh, 5000);
    });
    load();
  }

  // ------------------------------------------------------------------ profile page
  var OTELPROF_LABELS = {
    'otelprof.sampler': 'Sampler', 'otelprof.effective_hz': 'Effective sampling rate (Hz)', 'otelprof.sample_hz': 'Requested rate (Hz)',
    'otelprof.rates': 'Sampling rates used', 'otelprof.governor_level': 'Overhead governor level', 'otelprof.ticks_missed': 'Sampler ticks missed',
    'otelprof.truncated': 'Stopped early because', 'otelprof.promoted_after_ms': 'Promoted to a profile after (ms)',
    'otelprof.unsampled_head_ms': 'Not sampled: first (ms)', 'otelprof.duration_ms': 'Request duration (ms)',
    'otelprof.flight_recorder_hz': 'Flight recorder rate (Hz)', 'otelprof.error': 'Profiler error'
  };
  function profilerBlock(attrs) {
    var keys = Object.keys(attrs).filter(function (k) { return k.indexOf('otelprof.') === 0; }).sort();
    if (!keys.length) return null;
    var rows = keys.map(function (k) {
      return el('div', { 'data-key': k }, el('dt', { text: OTELPROF_LABELS[k] || k.slice(9).replace(/[._]/g, ' ') }), el('dd', { text: String(attrs[k]) }));
    });
    var thin = [];
    if (Number(attrs['otelprof.governor_level']) > 0) thin.push('the overhead governor lowered the sampling rate');
    if (Number(attrs['otelprof.ticks_missed']) > 0) thin.push(attrs['otelprof.ticks_missed'] + ' sampler ticks were missed (GIL contention or a busy process)');
    if (attrs['otelprof.truncated']) thin.push('sampling stopped early (' + attrs['otelprof.truncated'] + ')');
    return el('div', { className: 'profiler-block', id: 'profiler-facts' },
      el('h2', { text: 'How it was sampled' }),
      thin.length ? el('p', { className: 'note', id: 'thin-note', text: 'Fewer samples than expected: ' + thin.join('; ') + '.' }) : null,
      el('dl', { className: 'meta' }, rows));
  }

  function showProfile(app, id) {
    document.title = 'Profile ' + id.slice(0, 8) + ' — otelprof viewer';
    O.setNav('');
    var byThread = O.param('by_thread') === '1', myCode = O.param('view') === 'mycode';
    app.textContent = '';
    append(app, el('p', null, el('a', { href: '/', id: 'back', text: '← All profiles' })));
    var body = el('div', { id: 'profile' });
    append(app, body);
    append(body, el('p', { className: 'muted', text: 'Loading profile…' }));
    O.getJSON(O.API + '/profiles/' + encodeURIComponent(id) + '/flame' + O.query({ by_thread: byThread ? 1 : '', view: myCode ? 'mycode' : '' })).then(function (data) {
      if (data.profile.profile_id !== id) history.replaceState(null, '', '/profile/' + data.profile.profile_id + location.search);
      renderProfile(body, data, byThread, myCode);
    }).catch(function (e) {
      body.textContent = '';
      append(body, el('p', { className: 'error', id: 'load-error' },
        e.status === 404 ? 'Profile ' + id + ' was not found: its file may have been removed by retention.'
          : e.status === 409 ? e.message : 'Could not load this profile: ' + e.message));
    });
  }

  function renderProfile(body, data, byThread, myCode) {
    var p = data.profile || {};
    var types = data.sample_types.map(function (t) { return t.type; });
    document.title = (p.name || p.profile_id) + ' — otelprof viewer';
    O.setNav('', { display: data.display_directory, directory: data.directory });
    body.textContent = '';
    var meta = el('dl', { className: 'meta' });
    function fact(label, value, id) { meta.appendChild(el('div', null, el('dt', { text: label }), el('dd', { id: id }, value))); }
    fact('Profile id', el('code', { text: p.profile_id }), 'profile-id');
    fact('Start (local time)', el('span', { title: p.start ? p.start + ' UTC' : '', text: O.fmtTime(p.start_unix_nano || data.time_nanos) }));
    fact('Duration', O.fmtMs(p.duration_ms !== undefined && p.duration_ms !== null ? p.duration_ms : data.duration_nanos / 1e6));
    if (p.status !== null && p.status !== undefined) fact('Status', statusBadge(p.status), 'status');
    var ci = types.indexOf('cpu'), wi = types.indexOf('wall'), si = types.indexOf('samples');
    fact('CPU (sampled threads)', ci >= 0 ? O.fmtMs(data.totals[ci] / 1e6) : O.fmtMs(p.cpu_ms));
    fact('Wall (sampled threads)', wi >= 0 ? O.fmtMs(data.totals[wi] / 1e6) : O.fmtMs(p.wall_ms));
    fact('Samples', si >= 0 ? O.fmtNum(data.totals[si]) : O.fmtNum(p.samples));
    fact('Trigger', p.trigger || '—');
    fact('Trace id', p.trace_id ? el('code', { text: p.trace_id }) : '— (no span link)', 'trace-id');
    fact('Span id', p.span_id ? el('code', { text: p.span_id }) : '—', 'span-id');
    if (p.link_source) fact('Linked from', p.link_source);
    if (data.period) fact('Sampling period', O.fmtValue(data.period, data.period_type && data.period_type.unit));
    if (data.threads && data.threads.length) fact('Threads', data.threads.map(function (t) { return t.name || '?'; }).join(', '));

    var attrs = p.attributes || {};
    var attrKeys = Object.keys(attrs).filter(function (k) { return k.indexOf('otelprof.') !== 0; }).sort();
    var attrTable = el('table', { className: 'attrs', id: 'attributes' }, el('tbody', null, attrKeys.map(function (k) {
      return el('tr', null, el('td', { text: k }), el('td', { text: String(attrs[k]) }));
    })));
    var shown = data.display_directory || data.directory;  // relative to where the viewer runs, as the top bar
    var path = (shown ? shown.replace(/\/$/, '') + '/' : '') + (p.file || 'FILE');
    var links = el('div', { className: 'actions' },
      el('a', { className: 'download', id: 'download', href: data.download, download: p.profile_id + '.pb.gz', text: 'Download pprof' }),
      el('span', { className: 'muted' }, 'or ', el('code', { id: 'pprof-command', text: 'go tool pprof -http=: ' + path,
        title: data.directory ? data.directory.replace(/\/$/, '') + '/' + (p.file || 'FILE') : '' })));
    var group = p.route ? 'route=' + O.quote(p.route) + (p.method ? ' method=' + p.method : '') : (p.name ? 'name=' + O.quote(p.name) : '');
    var related = el('div', { className: 'actions' });
    if (group) {
      var typical = group + ' from=now-24h';
      append(related, [
        el('a', { id: 'compare-typical', href: '/compare' + O.query({ a: typical, b: 'id=' + p.profile_id }),
          title: 'this request (B) against the average request of ' + group + ' over the last 24 hours (A)' }, 'Compare with this route\'s typical request'),
        el('a', { id: 'explore-route', href: '/explore' + O.query({ q: typical }) }, 'Explore ' + (p.route || p.name))]);
    }
    append(body, el('div', { className: 'panel' },
      el('h1', { id: 'profile-name', text: p.name || '(profile not in the index)' }),
      meta,
      el('h2', { text: 'Attributes' }),
      attrKeys.length ? attrTable : el('p', { className: 'muted', id: 'attributes', text: 'none' }),
      profilerBlock(attrs),
      links, related,
      (data.comments || []).filter(function (c) { return /truncated/.test(c); }).map(function (c) { return el('p', { className: 'muted', text: 'Note: ' + c }); })));

    if (!data.tree || !data.tree.v || !data.tree.v.some(function (x) { return x > 0; })) {
      append(body, el('p', { className: 'panel muted', id: 'no-samples', text: 'This profile has no samples (the work finished before the first sample).' }));
      return;
    }
    var threadBox = el('input', { type: 'checkbox', id: 'by-thread' });
    threadBox.checked = byThread;
    var mine = el('input', { type: 'checkbox', id: 'my-code' });
    mine.checked = myCode;
    function reloadWith(params) {
      var q = new URLSearchParams(location.search);
      Object.keys(params).forEach(function (k) { if (params[k]) q.set(k, params[k]); else q.delete(k); });
      location.search = q.toString();
    }
    threadBox.addEventListener('change', function () { reloadWith({ by_thread: threadBox.checked ? '1' : '' }); });
    mine.addEventListener('change', function () { reloadWith({ view: mine.checked ? 'mycode' : '' }); });
    append(body, el('h2', { text: 'Flame graph' + (myCode ? ' (my code)' : '') }));
    var panel = O.flamePanel(body, data, { metric: O.param('metric'), extraControls: [
      el('label', { title: 'fold library, framework and standard-library frames into their callers' }, mine, 'my code'),
      el('label', null, threadBox, 'split by thread')] });
    O.topTable(body, data, panel);
  }

  // ------------------------------------------------------------------ explore
  function scatter(container, timeline, onPick) {
    var pts = timeline.points.filter(function (p) { return p.duration_ms !== null; });
    var W = Math.max(400, container.clientWidth - 20), H = 220, L = 56, B = 24, T = 10, R = 10;
    var s = svg('svg', { class: 'scatter', id: 'scatter', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'Request duration over time' });
    container.appendChild(s);
    if (!pts.length) { container.appendChild(el('p', { className: 'muted', text: 'No request durations in this selection.' })); return; }
    var t0 = Infinity, t1 = -Infinity, dmax = 0;
    pts.forEach(function (p) { t0 = Math.min(t0, p.start_unix_nano); t1 = Math.max(t1, p.start_unix_nano); dmax = Math.max(dmax, p.duration_ms); });
    if (t1 === t0) { t0 -= 30e9; t1 += 30e9; }
    dmax = dmax * 1.1 || 1;
    function x(t) { return L + (W - L - R) * (t - t0) / (t1 - t0); }
    function y(d) { return H - B - (H - B - T) * d / dmax; }
    s.appendChild(svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    s.appendChild(svg('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }));
    [0, 0.5, 1].forEach(function (f) {
      var t = svg('text', { x: L - 6, y: y(dmax * f / 1.1) + 4, class: 'tick', 'text-anchor': 'end' });
      t.textContent = O.fmtMs(dmax * f / 1.1);
      s.appendChild(t);
    });
    [t0, (t0 + t1) / 2, t1].forEach(function (tt, i) {
      var t = svg('text', { x: x(tt), y: H - 6, class: 'tick', 'text-anchor': i === 0 ? 'start' : i === 2 ? 'end' : 'middle' });
      t.textContent = O.fmtTime(tt, true);
      s.appendChild(t);
    });
    var p95 = timeline.buckets.filter(function (b) { return b.p95_ms !== null; });
    if (p95.length > 1) {
      var half = timeline.step_s * 5e8;
      s.appendChild(svg('polyline', { class: 'p95', points: p95.map(function (b) { return x(Math.min(t1, Math.max(t0, b.start_unix_nano + half))).toFixed(1) + ',' + y(b.p95_ms).toFixed(1); }).join(' ') }));
    }
    pts.forEach(function (p) {
      var c = svg('circle', { cx: x(p.start_unix_nano).toFixed(1), cy: y(p.duration_ms).toFixed(1), r: 4, class: 'pt ' + O.statusClass(p.status), 'data-profile-id': p.profile_id });
      c.addEventListener('mousemove', function (evt) {
        O.showTooltip(evt, [el('div', { className: 'fn', text: O.fmtMs(p.duration_ms) + (p.status ? '  ·  ' + p.status : '') }),
          el('div', { className: 'loc', text: O.fmtTime(p.start_unix_nano) + '  ·  CPU ' + O.fmtMs(p.cpu_ms) }),
          el('div', { className: 'hint', text: 'click: open this request\'s profile' })]);
      });
      c.addEventListener('mouseleave', O.hideTooltip);
      c.addEventListener('click', function () { onPick(p.profile_id); });
      s.appendChild(c);
    });
  }

  function pyroscopeBlock(py, id) {
    if (!py) return null;
    var cli = 'profilecli query merge --query=\'' + py.label_selector + '\' --profile-type=' + py.profile_type + ' --from=' + py.from + ' --to=' + py.until;
    return el('details', { className: 'pyroscope', id: id || 'pyroscope' },
      el('summary', { text: 'The same query in Grafana Pyroscope' }),
      el('p', { className: 'muted', text: 'When one machine is not enough: send profiles to Pyroscope (exporter=pyroscope or otlp) and ask it the same thing.' }),
      el('pre', null, el('code', { className: 'pyro-query', text: py.query })),
      el('p', { className: 'muted', text: 'range: from=' + py.from + ' until=' + py.until }),
      el('pre', null, el('code', { text: cli })),
      py.note ? el('p', { className: 'muted', text: py.note }) : null);
  }

  function selectorBar(opts) {
    // a route picker, range buttons and the raw selector, all writing one selector string
    var input = el('input', { type: 'search', id: opts.id || 'selector', value: opts.value, className: 'selector', 'aria-label': opts.label || 'Selector',
      placeholder: 'route=/checkout method=GET from=now-1h' });
    var route = el('select', { id: (opts.id || 'selector') + '-route', 'aria-label': 'Route' }, el('option', { value: '', text: 'any route' }));
    var ranges = rangeButtons(O.getTerm(opts.value, 'from') ? 'now' + O.getTerm(opts.value, 'from').slice(3) : '', function (from) {
      input.value = O.setTerm(O.setTerm(input.value, 'until', ''), 'from', from);
      opts.onApply(input.value.trim());
    });
    route.addEventListener('change', function () { input.value = O.setTerm(input.value, 'route', route.value); opts.onApply(input.value.trim()); });
    input.addEventListener('keydown', function (e) { if (e.key === 'Enter') opts.onApply(input.value.trim()); });
    O.getJSON(O.API + '/values/route').then(function (d) {
      d.values.forEach(function (v) { if (v.value) route.appendChild(el('option', { value: v.value, text: v.value + ' (' + v.count + ')' })); });
      route.value = O.getTerm(opts.value, 'route');
    }).catch(function () {});
    return { input: input, node: el('div', { className: 'controls selector-bar' }, opts.title ? el('strong', { text: opts.title }) : null, route, ranges, input,
      el('button', { type: 'button', className: 'apply', onclick: function () { opts.onApply(input.value.trim()); } }, 'Apply')) };
  }

  function showExplore(app) {
    document.title = 'Explore — otelprof viewer';
    O.setNav('explore');
    var q = O.param('q', 'from=now-24h'), agg = O.param('aggregate', 'average'), myCode = O.param('view') === 'mycode';
    app.textContent = '';
    var bar = selectorBar({ value: q, onApply: function (sel) { O.setURL({ q: sel }); showExplore(app); } });
    var aggSel = el('select', { id: 'aggregate', 'aria-label': 'Aggregate' }, el('option', { value: 'average', text: 'per request (average)' }), el('option', { value: 'total', text: 'total (sum)' }));
    aggSel.value = agg;
    aggSel.addEventListener('change', function () { O.setURL({ aggregate: aggSel.value === 'average' ? '' : aggSel.value }); showExplore(app); });
    var mine = el('input', { type: 'checkbox', id: 'my-code' });
    mine.checked = myCode;
    mine.addEventListener('change', function () { O.setURL({ view: mine.checked ? 'mycode' : '' }); showExplore(app); });
    var status = el('p', { className: 'summary', id: 'merge-summary', text: 'Merging…' });
    var chart = el('div', { className: 'panel chart', id: 'chart' });
    var flame = el('div', { id: 'merged' });
    append(app, [el('h1', { text: 'Explore' }), bar.node,
      el('div', { className: 'controls' }, el('label', null, 'Values', aggSel), el('label', { title: 'fold library, framework and standard-library frames into their callers' }, mine, 'my code')),
      status, el('h2', { text: 'Request duration over time' }), chart, flame]);
    var base = { q: q };
    O.getJSON(O.API + '/timeline' + O.query(base)).then(function (t) {
      scatter(chart, t, function (pid) { location.href = '/profile/' + pid; });
      append(chart, el('p', { className: 'muted legend', text: t.points.length + ' requests shown (newest ' + t.points.length + ' at most); line: p95 per ' + (t.step_s >= 3600 ? t.step_s / 3600 + ' h' : t.step_s / 60 + ' min') + '; red: 5xx; click a point to open that request\'s profile.' }));
    }).catch(function (e) { chart.textContent = ''; append(chart, O.errorBox(e, 'Timeline')); });
    O.getJSON(O.API + '/merge' + O.query({ q: q, aggregate: agg, view: myCode ? 'mycode' : '' })).then(function (data) {
      status.textContent = '';
      var m = data.merge;
      var dl = function (fmt, text) { return el('a', { href: O.API + '/merge' + O.query({ q: q, format: fmt, aggregate: agg, view: myCode ? 'mycode' : '' }), className: 'dl', 'data-format': fmt, text: text }); };
      append(status, [m.profiles + ' profile' + (m.profiles === 1 ? '' : 's') + ' merged' + (m.truncated ? ' (the newest ' + m.profiles + ' of ' + m.matched + ')' : ''),
        m.skipped.length ? ', ' + m.skipped.length + ' unreadable skipped' : '', agg === 'average' ? ', values per request' : ', total values',
        ' · download ', dl('pprof', 'pprof'), ', ', dl('collapsed', 'collapsed stacks'), ', ', dl('speedscope', 'speedscope'), ', ', dl('d3', 'd3 JSON'),
        ' · ', el('a', { href: '/compare' + O.query({ a: q }), id: 'to-compare' }, 'compare with…'), ' · ', el('a', { href: '/' + O.query({ q: q }) }, 'list')]);
      if (!m.profiles) { append(flame, el('p', { className: 'panel muted', id: 'no-samples', text: 'No profile matches this selector.' })); return; }
      append(flame, el('h2', { text: 'Merged flame graph' + (myCode ? ' (my code)' : '') }));
      var panel = O.flamePanel(flame, data, { metric: O.param('metric') });
      O.topTable(flame, data, panel);
      append(flame, pyroscopeBlock(data.pyroscope));
    }).catch(function (e) { status.textContent = ''; append(status, el('span', { className: 'error', id: 'selector-error', text: e.message })); });
  }

  // ------------------------------------------------------------------ compare
  function showCompare(app) {
    document.title = 'Compare — otelprof viewer';
    O.setNav('compare');
    var a = O.param('a', ''), b = O.param('b', ''), myCode = O.param('view') === 'mycode';
    var normalize = O.param('normalize') !== '0';
    app.textContent = '';
    function go(params) { O.setURL(params); showCompare(app); }
    var barA = selectorBar({ id: 'sel-a', title: 'A (baseline)', value: a, onApply: function (s) { go({ a: s }); } });
    var barB = selectorBar({ id: 'sel-b', title: 'B', value: b, onApply: function (s) { go({ b: s }); } });
    var mine = el('input', { type: 'checkbox', id: 'my-code' });
    mine.checked = myCode;
    mine.addEventListener('change', function () { go({ view: mine.checked ? 'mycode' : '' }); });
    var norm = el('input', { type: 'checkbox', id: 'normalize' });
    norm.checked = normalize;
    norm.addEventListener('change', function () { go({ normalize: norm.checked ? '' : '0' }); });
    var presets = el('div', { className: 'controls presets' }, el('span', { className: 'muted', text: 'Quick: ' }),
      el('button', { type: 'button', id: 'preset-hour', onclick: function () {
        var base = O.setTerm(O.setTerm(a || b, 'from', ''), 'until', '');
        go({ a: (base + ' from=now-2h until=now-1h').trim(), b: (base + ' from=now-1h').trim() });
      } }, 'last hour vs the hour before'),
      el('button', { type: 'button', id: 'preset-slow', onclick: function () {
        var base = O.setTerm(a || b, 'duration', '').trim();
        O.getJSON(O.API + '/timeline' + O.query({ q: base, points: 5000 })).then(function (t) {
          var d = t.points.map(function (p) { return p.duration_ms; }).filter(function (x) { return x !== null; }).sort(function (x, y) { return x - y; });
          if (!d.length) return;
          var median = d[Math.floor((d.length - 1) / 2)];
          var cut = Math.round(median * 1000) / 1000 + 'ms';
          go({ a: (base + ' duration<=' + cut).trim(), b: (base + ' duration>' + cut).trim() });
        });
      } }, 'fast vs slow requests'),
      el('label', null, norm, 'per request'), el('label', { title: 'fold library, framework and standard-library frames into their callers' }, mine, 'my code'));
    var status = el('p', { className: 'summary', id: 'diff-summary' });
    var out = el('div', { id: 'diff' });
    append(app, [el('h1', { text: 'Compare' }), barA.node, barB.node, presets, status, out]);
    if (!a && !b) { status.textContent = 'Choose two selections: A is the baseline, B is compared with it.'; return; }
    status.textContent = 'Comparing…';
    O.getJSON(O.API + '/diff' + O.query({ a: a, b: b, view: myCode ? 'mycode' : '', normalize: normalize ? '' : '0' })).then(function (data) {
      status.textContent = '';
      var types = data.sample_types.map(function (t) { return t.type; });
      var mi = types.indexOf(O.param('metric') || data.default_type);
      if (mi < 0) mi = 0;
      var unit = data.sample_types[mi].unit;
      var lt = data.left_totals[mi], rt = data.right_totals[mi];
      append(status, [el('span', { className: 'side' }, 'A: ' + data.left.profiles + ' profiles'), ' · ', el('span', { className: 'side' }, 'B: ' + data.right.profiles + ' profiles'), ' · ',
        (O.LABELS[types[mi]] || types[mi]) + (normalize ? ' per request' : ' in total') + ': A ' + O.fmtValue(lt, unit) + ', B ' + O.fmtValue(rt, unit) + ' ',
        el('strong', { id: 'total-change', className: rt > lt ? 'worse' : rt < lt ? 'better' : '', text: '(' + O.signed(rt - lt, unit) + (lt ? ', ' + (rt >= lt ? '+' : '') + O.pct(rt - lt, lt) : '') + ')' }),
        ' · ', el('a', { href: O.API + '/diff' + O.query({ a: a, b: b, format: 'collapsed', view: myCode ? 'mycode' : '', normalize: normalize ? '' : '0' }), text: 'download (flamegraph.pl diff input)' })]);
      if (!data.left.profiles || !data.right.profiles) {
        append(out, el('p', { className: 'panel muted', id: 'no-samples', text: (!data.left.profiles ? 'A' : 'B') + ' matches no readable profile.' }));
        return;
      }
      append(out, el('h2', { text: 'Differential flame graph' + (myCode ? ' (my code)' : '') }));
      var panel = O.flamePanel(out, data, { diff: true, metric: O.param('metric') });
      var tbody = el('tbody');
      append(out, [el('h2', { text: 'Biggest changes (B − A' + (normalize ? ' per request' : '') + '; functions whose own time changed first)' }),
        el('table', { className: 'data', id: 'regressions' }, el('thead', null, el('tr', null, el('th', { text: 'Function' }), el('th', { text: 'File' }),
          el('th', { className: 'num', text: 'A' }), el('th', { className: 'num', text: 'B' }), el('th', { className: 'num', text: 'Change' }),
          el('th', { className: 'num', text: 'Change %' }), el('th', { className: 'num', text: 'Self change' }))), tbody)]);
      function renderTable(metric) {
        var u = data.sample_types[metric].unit;
        tbody.textContent = '';
        var rows = data.functions_changed.filter(function (r) { return r.delta_total[metric] || r.delta_self[metric]; });
        rows.sort(function (x, y) { return Math.abs(y.delta_self[metric]) - Math.abs(x.delta_self[metric]) || Math.abs(y.delta_total[metric]) - Math.abs(x.delta_total[metric]) || y.delta_total[metric] - x.delta_total[metric]; });
        rows.slice(0, 30).forEach(function (r) {
          var fn = data.functions[r.f], d = r.delta_total[metric];
          tbody.appendChild(el('tr', { className: 'clickable ' + (d > 0 ? 'worse' : 'better'), 'data-function': fn.name, onclick: function () { panel.highlight(fn.name); } },
            el('td', { className: 'mono', text: fn.name }),
            el('td', { className: 'mono muted', title: fn.file, text: O.basename(fn.file) + (fn.start_line ? ':' + fn.start_line : '') }),
            el('td', { className: 'num', text: O.fmtValue(r.left_total[metric], u) }),
            el('td', { className: 'num', text: O.fmtValue(r.right_total[metric], u) }),
            el('td', { className: 'num change', text: O.signed(d, u) }),
            el('td', { className: 'num', text: r.left_total[metric] ? (d >= 0 ? '+' : '') + O.pct(d, r.left_total[metric]) : 'new' }),
            el('td', { className: 'num', text: O.signed(r.delta_self[metric], u) })));
        });
      }
      panel.onChange(function (metric) { renderTable(metric); });
      renderTable(panel.metric());
      var pa = el('div', { className: 'pyro-pair' });
      O.getJSON(O.API + '/merge' + O.query({ q: a, format: 'json', limit: 1 })).then(function (d) { append(pa, pyroscopeBlock(d.pyroscope, 'pyroscope-a')); }).catch(function () {});
      append(out, pa);
    }).catch(function (e) { status.textContent = ''; append(status, el('span', { className: 'error', id: 'selector-error', text: e.message })); });
  }

  // ------------------------------------------------------------------ start
  function start() {
    O.initMeasure();
    O.getJSON(O.API + '/folder').then(function (f) { O.setNav(undefined, f); }).catch(function () {});
    var app = document.getElementById('app');
    var path = location.pathname.replace(/\/+$/, '') || '/';
    var m = /^\/profile\/([0-9a-fA-F]{4,32})$/.exec(path);
    if (m) showProfile(app, m[1].toLowerCase());
    else if (path === '/explore') showExplore(app);
    else if (path === '/compare') showCompare(app);
    else showList(app);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
