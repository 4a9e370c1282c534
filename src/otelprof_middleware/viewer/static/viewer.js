/* otelprof viewer: the list of profiles and one profile's flame graph.
 * Plain JavaScript, no dependencies, nothing loaded from the network: the data
 * comes from this server's JSON endpoints (/api/profiles, /api/profiles/<id>).
 * All text is inserted with textContent, never as HTML. */
(function () {
  'use strict';

  var SVGNS = 'http://www.w3.org/2000/svg';
  var ROW = 18;            // flame graph row height, px
  var MIN_WIDTH = 0.4;     // frames narrower than this (px) are not drawn
  var LABELS = { cpu: 'CPU time', wall: 'Wall time', samples: 'Samples' };

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'className') node.className = v;
        else if (k.slice(0, 2) === 'on') node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? '' : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }
  function getJSON(url) {
    return fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) { var e = new Error(body.error || ('HTTP ' + r.status)); e.status = r.status; throw e; }
        return body;
      });
    });
  }
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }
  function fmtTime(unixNano) {
    if (!unixNano) return '—';
    var d = new Date(unixNano / 1e6);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' +
      pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return '—';
    if (ms >= 10000) return (ms / 1000).toFixed(1) + ' s';
    if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
    if (ms >= 100) return ms.toFixed(0) + ' ms';
    if (ms >= 10) return ms.toFixed(1) + ' ms';
    return ms.toFixed(2) + ' ms';
  }
  function fmtNum(n) { return (n === null || n === undefined) ? '—' : Number(n).toLocaleString('en-US'); }
  function fmtValue(v, unit) {
    if (unit === 'nanoseconds') return fmtMs(v / 1e6);
    if (unit === 'count') return fmtNum(v) + (v === 1 ? ' sample' : ' samples');
    return fmtNum(v) + (unit ? ' ' + unit : '');
  }
  function pct(part, whole) {
    if (!whole) return '0%';
    var p = 100 * part / whole;
    return (p >= 10 || p === 0 ? p.toFixed(1) : p.toFixed(2)) + '%';
  }
  function shortId(id) { return id ? id.slice(0, 8) + '…' : '—'; }
  function basename(path) { if (!path) return ''; var i = Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\')); return path.slice(i + 1); }
  function hash(s) { var h = 2166136261; for (var i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); } return h >>> 0; }
  function colorFor(name, file) {
    var h = hash(name);
    var lib = /(site-packages|dist-packages|[\\/]lib[\\/]python\d)/.test(file || '') || /^<frozen /.test(file || '');
    if (lib) return 'hsl(' + (28 + h % 22) + ',' + (35 + (h >> 5) % 20) + '%,' + (68 + (h >> 9) % 10) + '%)';
    return 'hsl(' + (h % 48) + ',' + (72 + (h >> 7) % 20) + '%,' + (56 + (h >> 11) % 10) + '%)';
  }
  var measureCtx = null;
  var charWidth = 6.3;
  function initMeasure() {
    try {
      measureCtx = document.createElement('canvas').getContext('2d');
      measureCtx.font = '11px ' + getComputedStyle(document.body).fontFamily;
      charWidth = measureCtx.measureText('abcdefghijklmnopqrstuvwxyz_.<>').width / 30 || 6.3;
    } catch (e) { measureCtx = null; }
  }
  function fitText(text, width) {
    var max = Math.floor((width - 6) / charWidth);
    if (max < 3) return '';
    if (text.length <= max) return text;
    return text.slice(0, max - 1) + '…';
  }
  function setQuery(params) {
    var q = new URLSearchParams(location.search);
    Object.keys(params).forEach(function (k) { if (params[k]) q.set(k, params[k]); else q.delete(k); });
    var s = q.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  }
  var tooltip = null;
  function showTooltip(evt, content) {
    tooltip.textContent = '';
    append(tooltip, content);
    tooltip.hidden = false;
    var pad = 14, w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    var x = evt.clientX + pad, y = evt.clientY + pad;
    if (x + w > window.innerWidth - 4) x = Math.max(4, evt.clientX - w - pad);
    if (y + h > window.innerHeight - 4) y = Math.max(4, evt.clientY - h - pad);
    tooltip.style.left = x + 'px';
    tooltip.style.top = y + 'px';
  }
  function hideTooltip() { if (tooltip) tooltip.hidden = true; }

  // ------------------------------------------------------------------ list page
  function showList(app) {
    document.title = 'Profiles — otelprof viewer';
    var params = new URLSearchParams(location.search);
    var state = {
      q: params.get('q') || '', name: params.get('name') || '', trigger: params.get('trigger') || '',
      removed: params.get('removed') === '1', data: null, timer: null
    };
    var search = el('input', { type: 'search', id: 'search', placeholder: 'Search name, trace id, span id, attribute, function…',
      value: state.q, 'aria-label': 'Search profiles' });
    var nameSel = el('select', { id: 'filter-name', 'aria-label': 'Filter by name' });
    var trigSel = el('select', { id: 'filter-trigger', 'aria-label': 'Filter by trigger' });
    var removed = el('input', { type: 'checkbox', id: 'show-removed' });
    removed.checked = state.removed;
    var auto = el('input', { type: 'checkbox', id: 'auto-refresh' });
    var summary = el('p', { className: 'summary', id: 'summary' });
    var tbody = el('tbody');
    var table = el('table', { className: 'data', id: 'profiles' },
      el('thead', null, el('tr', null,
        el('th', { text: 'Start' }), el('th', { text: 'Name' }), el('th', { text: 'Trigger' }),
        el('th', { className: 'num', text: 'Duration' }), el('th', { className: 'num', text: 'CPU' }),
        el('th', { className: 'num', text: 'Samples' }), el('th', { text: 'Trace id / span id' }),
        el('th', { text: 'Top function' }))),
      tbody);
    var empty = el('div', { className: 'panel', id: 'empty', hidden: true });

    app.textContent = '';
    append(app, [
      el('h1', { text: 'Profiles' }),
      el('div', { className: 'controls' },
        search,
        el('label', null, 'Name', nameSel),
        el('label', null, 'Trigger', trigSel),
        el('label', null, removed, 'show removed'),
        el('button', { type: 'button', id: 'refresh', onclick: function () { load(); } }, 'Refresh'),
        el('label', null, auto, 'auto-refresh')),
      summary, table, empty
    ]);

    function fillSelect(sel, values, current, allLabel) {
      sel.textContent = '';
      sel.appendChild(el('option', { value: '', text: allLabel }));
      values.forEach(function (v) { sel.appendChild(el('option', { value: v, text: v })); });
      if (current && values.indexOf(current) < 0) sel.appendChild(el('option', { value: current, text: current }));
      sel.value = current;
    }
    function triggersOf(p) { return (p.trigger || '').split(',').filter(Boolean); }
    function haystack(p) {
      var parts = [p.name, p.trigger, p.profile_id, p.trace_id, p.span_id, p.file];
      Object.keys(p.attributes || {}).forEach(function (k) { parts.push(k + '=' + p.attributes[k]); });
      (p.top || []).forEach(function (t) { parts.push(t.function); });
      return parts.filter(Boolean).join('\n').toLowerCase();
    }
    function render() {
      var data = state.data;
      if (!data) return;
      var all = data.profiles;
      var names = {}, triggers = {};
      all.forEach(function (p) { if (p.name) names[p.name] = 1; triggersOf(p).forEach(function (t) { triggers[t] = 1; }); });
      fillSelect(nameSel, Object.keys(names).sort(), state.name, 'all names');
      fillSelect(trigSel, Object.keys(triggers).sort(), state.trigger, 'all triggers');
      var q = state.q.trim().toLowerCase();
      var terms = q ? q.split(/\s+/) : [];
      var shown = all.filter(function (p) {
        if (!state.removed && !p.available) return false;
        if (state.name && p.name !== state.name) return false;
        if (state.trigger && triggersOf(p).indexOf(state.trigger) < 0) return false;
        if (terms.length) { var h = haystack(p); return terms.every(function (t) { return h.indexOf(t) >= 0; }); }
        return true;
      });
      tbody.textContent = '';
      shown.forEach(function (p) {
        var href = '/profile/' + encodeURIComponent(p.profile_id);
        var top = (p.top && p.top[0]) ? p.top[0].function : '';
        var tr = el('tr', { className: 'clickable' + (p.available ? '' : ' removed'), 'data-profile-id': p.profile_id },
          el('td', { className: 'mono', text: fmtTime(p.start_unix_nano) }),
          el('td', null, p.available ? el('a', { href: href, className: 'pname', text: p.name || '(not in index)' })
            : el('span', { className: 'pname', title: 'the .pb.gz file was removed (retention)', text: (p.name || '?') + ' (removed)' })),
          el('td', null, triggersOf(p).map(function (t) { return el('span', { className: 'pill', text: t }); })),
          el('td', { className: 'num', text: fmtMs(p.duration_ms) }),
          el('td', { className: 'num', text: fmtMs(p.cpu_ms) }),
          el('td', { className: 'num', text: fmtNum(p.samples) }),
          el('td', { className: 'ids', title: p.trace_id ? ('trace ' + p.trace_id + '\nspan ' + p.span_id) : 'no span link' },
            p.trace_id ? shortId(p.trace_id) + ' / ' + shortId(p.span_id) : '—'),
          el('td', { className: 'topfn', title: top, text: top || '' }));
        if (p.available) tr.addEventListener('click', function (e) { if (e.target.tagName !== 'A') location.href = href; });
        tbody.appendChild(tr);
      });
      var avail = all.filter(function (p) { return p.available; }).length;
      var bits = [shown.length + ' shown of ' + avail + ' profile' + (avail === 1 ? '' : 's')];
      if (all.length > avail) bits.push((all.length - avail) + ' removed by retention');
      if (data.skipped_lines) bits.push(data.skipped_lines + ' unreadable index line' + (data.skipped_lines === 1 ? '' : 's') + ' skipped');
      summary.textContent = bits.join(' · ');
      table.hidden = shown.length === 0;
      empty.hidden = shown.length !== 0;
      empty.textContent = '';
      if (!shown.length) {
        if (!all.length) {
          append(empty, [el('p', null, el('strong', { text: 'No profiles yet' }), ' in ', el('code', { text: data.directory }),
            data.directory_exists ? '' : ' (the folder does not exist yet)', '.'),
          el('p', { className: 'muted' }, 'Run your app with ', el('code', { text: 'OTELPROF_EXPORTER=file' }),
            ' and ', el('code', { text: 'OTELPROF_OUTPUT_DIR=' + data.directory }), ', then press Refresh.')]);
        } else {
          append(empty, el('p', { className: 'muted', text: 'No profile matches these filters.' }));
        }
      }
    }
    function load() {
      return getJSON('/api/profiles').then(function (data) {
        state.data = data;
        document.getElementById('folder').textContent = data.directory || '';
        render();
      }).catch(function (e) {
        summary.textContent = '';
        append(summary, el('span', { className: 'error', text: 'Could not load the profile list: ' + e.message }));
      });
    }
    search.addEventListener('input', function () { state.q = search.value; setQuery({ q: state.q }); render(); });
    nameSel.addEventListener('change', function () { state.name = nameSel.value; setQuery({ name: state.name }); render(); });
    trigSel.addEventListener('change', function () { state.trigger = trigSel.value; setQuery({ trigger: state.trigger }); render(); });
    removed.addEventListener('change', function () { state.removed = removed.checked; setQuery({ removed: state.removed ? '1' : '' }); render(); });
    auto.addEventListener('change', function () {
      if (state.timer) { clearInterval(state.timer); state.timer = null; }
      if (auto.checked) state.timer = setInterval(load, 5000);
    });
    load();
  }

  // ------------------------------------------------------------------ profile page
  function showProfile(app, pid) {
    document.title = 'Profile ' + pid.slice(0, 8) + ' — otelprof viewer';
    var params = new URLSearchParams(location.search);
    var byThread = params.get('by_thread') === '1';
    app.textContent = '';
    append(app, el('p', null, el('a', { href: '/', id: 'back', text: '← All profiles' })));
    var body = el('div', { id: 'profile' });
    append(app, body);
    append(body, el('p', { className: 'muted', text: 'Loading profile…' }));
    getJSON('/api/profiles/' + encodeURIComponent(pid) + (byThread ? '?by_thread=1' : '')).then(function (data) {
      renderProfile(body, data, byThread);
    }).catch(function (e) {
      body.textContent = '';
      append(body, el('p', { className: 'error', id: 'load-error' },
        e.status === 404 ? 'Profile ' + pid + ' was not found: its file may have been removed by retention.'
          : 'Could not load this profile: ' + e.message));
    });
  }

  function renderProfile(body, data, byThread) {
    var p = data.profile || {};
    var types = data.sample_types.map(function (t) { return t.type; });
    var functions = data.functions;
    document.title = (p.name || p.profile_id) + ' — otelprof viewer';
    document.getElementById('folder').textContent = data.directory || '';
    body.textContent = '';

    // ---- header and metadata
    var meta = el('dl', { className: 'meta' });
    function fact(label, value, id) { meta.appendChild(el('div', null, el('dt', { text: label }), el('dd', { id: id }, value))); }
    fact('Profile id', el('code', { text: p.profile_id }), 'profile-id');
    fact('Start (local time)', el('span', { title: p.start ? p.start + ' UTC' : '', text: fmtTime(p.start_unix_nano || data.time_nanos) }));
    fact('Duration', fmtMs(p.duration_ms !== undefined && p.duration_ms !== null ? p.duration_ms : data.duration_nanos / 1e6));
    var ti = types.indexOf('cpu'), wi = types.indexOf('wall'), si = types.indexOf('samples');
    fact('CPU', ti >= 0 ? fmtMs(data.totals[ti] / 1e6) : fmtMs(p.cpu_ms));
    fact('Wall (sampled threads)', wi >= 0 ? fmtMs(data.totals[wi] / 1e6) : fmtMs(p.wall_ms));
    fact('Samples', si >= 0 ? fmtNum(data.totals[si]) : fmtNum(p.samples));
    fact('Trigger', (p.trigger || '—'));
    fact('Trace id', p.trace_id ? el('code', { text: p.trace_id }) : '— (no span link)', 'trace-id');
    fact('Span id', p.span_id ? el('code', { text: p.span_id }) : '—', 'span-id');
    if (p.link_source) fact('Linked from', p.link_source);
    if (data.period) fact('Sampling period', fmtValue(data.period, data.period_type && data.period_type.unit));
    if (data.threads && data.threads.length) fact('Threads', data.threads.map(function (t) { return t.name || '?'; }).join(', '));

    var attrs = p.attributes || {};
    var attrKeys = Object.keys(attrs).sort();
    var attrTable = el('table', { className: 'attrs', id: 'attributes' },
      el('tbody', null, attrKeys.map(function (k) {
        return el('tr', null, el('td', { text: k }), el('td', { text: String(attrs[k]) }));
      })));

    append(body, el('div', { className: 'panel' },
      el('h1', { id: 'profile-name', text: p.name || '(profile not in the index)' }),
      meta,
      el('h2', { text: 'Attributes' }),
      attrKeys.length ? attrTable : el('p', { className: 'muted', id: 'attributes', text: 'none' }),
      el('div', { className: 'actions' },
        el('a', { className: 'download', id: 'download', href: data.download, download: p.file || true,
          text: 'Download pprof (' + (p.file || '.pb.gz') + ')' }),
        el('span', { className: 'muted' }, 'open it with ', el('code', { text: 'go tool pprof -http=: ' + (p.file || 'FILE') }))),
      (data.comments || []).filter(function (c) { return /truncated/.test(c); }).map(function (c) {
        return el('p', { className: 'muted', text: 'Note: ' + c });
      })));

    if (!data.tree || !data.tree.v || !data.tree.v.some(function (x) { return x > 0; })) {
      append(body, el('p', { className: 'panel muted', id: 'no-samples', text: 'This profile has no samples (the work finished before the first sample).' }));
      return;
    }

    // ---- metric choice
    var metric = types.indexOf(data.default_type);
    if (metric < 0 || !data.totals[metric]) {
      ['cpu', 'wall', 'samples'].some(function (t) { var i = types.indexOf(t); if (i >= 0 && data.totals[i]) { metric = i; return true; } return false; });
    }
    if (metric < 0) metric = 0;
    var params = new URLSearchParams(location.search);
    if (params.get('metric') && types.indexOf(params.get('metric')) >= 0) metric = types.indexOf(params.get('metric'));

    var seg = el('div', { className: 'seg', id: 'metric', role: 'group', 'aria-label': 'Value shown' });
    var order = types.map(function (t, i) { return i; });
    var rank = { cpu: 0, wall: 1, samples: 2 };
    order.sort(function (a, b) { return (rank[types[a]] !== undefined ? rank[types[a]] : 9) - (rank[types[b]] !== undefined ? rank[types[b]] : 9) || a - b; });
    order.forEach(function (i) {
      var t = types[i];
      seg.appendChild(el('button', { type: 'button', 'data-metric': t, className: i === metric ? 'active' : '',
        onclick: function () { setMetric(i); } }, LABELS[t] || t));
    });
    var find = el('input', { type: 'search', id: 'highlight', placeholder: 'Highlight function or file…', 'aria-label': 'Highlight' });
    var matchInfo = el('span', { className: 'matchinfo', id: 'matchinfo' });
    var threadBox = el('input', { type: 'checkbox', id: 'by-thread' });
    threadBox.checked = byThread;
    threadBox.addEventListener('change', function () {
      var q = new URLSearchParams(location.search);
      if (threadBox.checked) q.set('by_thread', '1'); else q.delete('by_thread');
      q.set('metric', types[metric]);
      location.search = q.toString();
    });
    var reset = el('button', { type: 'button', id: 'reset-zoom', onclick: function () { zoomTo(root); } }, 'Reset zoom');
    var crumbs = el('div', { className: 'crumbs', id: 'crumbs' });
    var svgEl = svg('svg', { class: 'flame', id: 'flame', role: 'img', 'aria-label': 'Flame graph' });
    var wrap = el('div', { className: 'flame-wrap' }, crumbs, svgEl);

    append(body, [
      el('h2', { text: 'Flame graph' }),
      el('div', { className: 'controls' }, seg, find, matchInfo, el('label', null, threadBox, 'split by thread'), reset),
      wrap,
      el('p', { className: 'muted', text: 'Callers on top, callees below; width = share of the chosen value. Hover for details, click a frame to zoom, Esc to reset.' })
    ]);

    // ---- the tree, with parent links
    var root = data.tree;
    (function link(node) {
      var stack = [[node, null, 0]];
      while (stack.length) {
        var it = stack.pop(), n = it[0];
        n.parent = it[1]; n.depth = it[2];
        if (!n.s) n.s = n.v.map(function () { return 0; });
        n.label = n.f >= 0 ? functions[n.f].name : (n.name || 'all');
        (n.c || []).forEach(function (c) { stack.push([c, n, it[2] + 1]); });
      }
    })(root);
    var zoom = root;
    var needle = '';
    var drawn = [];

    function isMatch(n) {
      if (!needle || n.f < 0) return false;
      var fn = functions[n.f];
      return fn.name.toLowerCase().indexOf(needle) >= 0 || (fn.file || '').toLowerCase().indexOf(needle) >= 0;
    }

    function draw() {
      hideTooltip();
      var width = Math.max(320, wrap.clientWidth - 16);
      var total = zoom.v[metric];
      while (svgEl.firstChild) svgEl.removeChild(svgEl.firstChild);
      drawn = [];
      var maxDepth = 0;
      var frag = document.createDocumentFragment();
      function frame(n, x, w, cls) {
        var y = (n.depth) * ROW;
        if (n.depth > maxDepth) maxDepth = n.depth;
        var fn = n.f >= 0 ? functions[n.f] : null;
        var g = svg('g', { class: 'frame' + (cls ? ' ' + cls : '') + (isMatch(n) ? ' match' : ''), 'data-i': drawn.length });
        if (fn) g.setAttribute('data-function', fn.name);
        var rect = svg('rect', { x: x.toFixed(2), y: y, width: Math.max(0, w - 0.5).toFixed(2), height: ROW - 1, rx: 2,
          fill: fn ? colorFor(fn.name, fn.file) : '#c9d1d9' });
        g.appendChild(rect);
        var label = fitText(n.label, w);
        if (label) {
          var t = svg('text', { x: (x + 4).toFixed(2), y: y + ROW / 2 });
          t.textContent = label;
          g.appendChild(t);
        }
        drawn.push(n);
        frag.appendChild(g);
      }
      // ancestors of the zoomed frame span the full width
      for (var a = zoom.parent; a; a = a.parent) frame(a, 0, width, 'ancestor');
      if (total > 0) {
        var stack = [[zoom, 0]];
        while (stack.length) {
          var it = stack.pop(), n = it[0], x = it[1];
          var w = width * n.v[metric] / total;
          if (w < MIN_WIDTH) continue;
          frame(n, x, w, needle && !isMatch(n) ? 'dim' : '');
          var kids = (n.c || []).filter(function (c) { return c.v[metric] > 0; });
          kids.sort(function (p, q) { return q.v[metric] - p.v[metric] || (p.label < q.label ? -1 : 1); });
          var cx = x;
          for (var i = 0; i < kids.length; i++) { stack.push([kids[i], cx]); cx += width * kids[i].v[metric] / total; }
        }
      }
      svgEl.appendChild(frag);
      var height = (maxDepth + 1) * ROW + 2;
      svgEl.setAttribute('height', height);
      svgEl.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
      svgEl.setAttribute('width', width);
      // breadcrumbs
      crumbs.textContent = '';
      var path = [];
      for (var z = zoom; z; z = z.parent) path.unshift(z);
      path.forEach(function (n, i) {
        if (i) crumbs.appendChild(document.createTextNode(' › '));
        if (n === zoom) crumbs.appendChild(el('strong', { text: n.label }));
        else crumbs.appendChild(el('a', { text: n.label, onclick: function () { zoomTo(n); } }));
      });
      crumbs.appendChild(document.createTextNode('  —  ' + fmtValue(zoom.v[metric], data.sample_types[metric].unit) +
        ' (' + pct(zoom.v[metric], root.v[metric]) + ' of all)'));
      // highlight summary: the value of matching frames, counted once per stack
      if (needle) {
        var matched = 0, st = [root];
        while (st.length) { var m = st.pop(); if (isMatch(m)) matched += m.v[metric]; else (m.c || []).forEach(function (c) { st.push(c); }); }
        matchInfo.textContent = 'matches: ' + fmtValue(matched, data.sample_types[metric].unit) + ' (' + pct(matched, root.v[metric]) + ')';
      } else matchInfo.textContent = '';
    }

    function zoomTo(n) { zoom = n; draw(); }

    function nodeAt(evt) {
      var g = evt.target.closest ? evt.target.closest('g.frame') : null;
      if (!g) return null;
      return drawn[Number(g.getAttribute('data-i'))] || null;
    }
    svgEl.addEventListener('mousemove', function (evt) {
      var n = nodeAt(evt);
      if (!n) { hideTooltip(); return; }
      var unit = data.sample_types[metric].unit;
      var fn = n.f >= 0 ? functions[n.f] : null;
      var loc = fn ? (fn.file || '?') + ':' + (n.line || fn.start_line || '?') : (n.f === -2 ? 'thread' : 'all samples');
      var rows = [
        el('tr', null, el('td', { text: (LABELS[types[metric]] || types[metric]) }), el('td', { className: 'num', text: fmtValue(n.v[metric], unit) }),
          el('td', { className: 'num', text: pct(n.v[metric], root.v[metric]) })),
        el('tr', null, el('td', { text: 'self' }), el('td', { className: 'num', text: fmtValue(n.s[metric], unit) }),
          el('td', { className: 'num', text: pct(n.s[metric], root.v[metric]) }))
      ];
      if (zoom !== root && zoom.v[metric]) {
        rows.push(el('tr', null, el('td', { text: 'of zoomed' }), el('td'), el('td', { className: 'num', text: pct(n.v[metric], zoom.v[metric]) })));
      }
      types.forEach(function (t, i) {
        if (i !== metric) rows.push(el('tr', { className: 'muted' }, el('td', { text: LABELS[t] || t }),
          el('td', { className: 'num', text: fmtValue(n.v[i], data.sample_types[i].unit) }), el('td', { className: 'num', text: pct(n.v[i], root.v[i]) })));
      });
      showTooltip(evt, [
        el('div', { className: 'fn', text: n.label }),
        el('div', { className: 'loc', text: loc + (fn && fn.start_line && n.line && n.line !== fn.start_line ? '  (def at line ' + fn.start_line + ')' : '') }),
        el('table', null, el('tbody', null, rows)),
        el('div', { className: 'hint', text: n === zoom ? (n === root ? '' : 'click: zoom out') : 'click: zoom in' })
      ]);
    });
    svgEl.addEventListener('mouseleave', hideTooltip);
    svgEl.addEventListener('click', function (evt) {
      var n = nodeAt(evt);
      if (!n) return;
      zoomTo(n === zoom && n.parent ? n.parent : n);
    });
    document.addEventListener('keydown', function (evt) { if (evt.key === 'Escape') zoomTo(root); });
    find.addEventListener('input', function () { needle = find.value.trim().toLowerCase(); draw(); renderTop(); });
    var lastWidth = 0;
    window.addEventListener('resize', function () { if (wrap.clientWidth !== lastWidth) { lastWidth = wrap.clientWidth; draw(); } });

    // ---- top functions table
    var sortKey = 'self';
    var showAll = false;
    var topBody = el('tbody');
    var headSelf = el('th', { className: 'num sortable sorted', 'data-sort': 'self', text: 'Self' });
    var headTotal = el('th', { className: 'num sortable', 'data-sort': 'total', text: 'Total' });
    [headSelf, headTotal].forEach(function (h) {
      h.addEventListener('click', function () { sortKey = h.getAttribute('data-sort'); renderTop(); });
    });
    var more = el('button', { type: 'button', id: 'top-more', hidden: true, onclick: function () { showAll = true; renderTop(); } }, 'Show all');
    append(body, [
      el('h2', { text: 'Top functions' }),
      el('table', { className: 'data', id: 'top' },
        el('thead', null, el('tr', null, el('th', { text: 'Function' }), el('th', { text: 'File' }), headSelf,
          el('th', { className: 'num', text: 'Self %' }), headTotal, el('th', { className: 'num', text: 'Total %' }))),
        topBody),
      more
    ]);

    function renderTop() {
      headSelf.classList.toggle('sorted', sortKey === 'self');
      headTotal.classList.toggle('sorted', sortKey === 'total');
      var unit = data.sample_types[metric].unit;
      var all = root.v[metric];
      var rows = data.top.filter(function (r) {
        if (!(r.total[metric] > 0)) return false;
        if (!needle) return true;
        var fn = functions[r.f];
        return fn.name.toLowerCase().indexOf(needle) >= 0 || (fn.file || '').toLowerCase().indexOf(needle) >= 0;
      });
      rows.sort(function (a, b) {
        return b[sortKey][metric] - a[sortKey][metric] || b.total[metric] - a.total[metric] ||
          (functions[a.f].name < functions[b.f].name ? -1 : 1);
      });
      var limit = showAll ? rows.length : 50;
      more.hidden = rows.length <= limit;
      topBody.textContent = '';
      rows.slice(0, limit).forEach(function (r) {
        var fn = functions[r.f];
        var selfPct = all ? 100 * r.self[metric] / all : 0;
        topBody.appendChild(el('tr', { className: 'clickable', 'data-function': fn.name, title: 'highlight in the flame graph',
          onclick: function () { find.value = fn.name; needle = fn.name.toLowerCase(); draw(); renderTop(); } },
          el('td', { className: 'mono', text: fn.name }),
          el('td', { className: 'mono muted', title: fn.file, text: basename(fn.file) + (fn.start_line ? ':' + fn.start_line : '') }),
          el('td', { className: 'num', text: fmtValue(r.self[metric], unit) }),
          el('td', { className: 'num' }, pct(r.self[metric], all), el('span', { className: 'bar', 'data-w': selfPct })),
          el('td', { className: 'num', text: fmtValue(r.total[metric], unit) }),
          el('td', { className: 'num', text: pct(r.total[metric], all) })));
      });
      Array.prototype.forEach.call(topBody.querySelectorAll('.bar'), function (b) {
        b.style.width = Math.round(Number(b.getAttribute('data-w')) * 0.6) + 'px';
      });
    }

    function setMetric(i) {
      metric = i;
      Array.prototype.forEach.call(seg.children, function (b) { b.classList.toggle('active', b.getAttribute('data-metric') === types[i]); });
      setQuery({ metric: types[i] });
      if (!(zoom.v[metric] > 0)) zoom = root;
      draw();
      renderTop();
    }

    lastWidth = wrap.clientWidth;
    draw();
    renderTop();
  }

  // ------------------------------------------------------------------ start
  function start() {
    tooltip = document.getElementById('tooltip');
    initMeasure();
    var app = document.getElementById('app');
    var m = /^\/profile\/([0-9a-fA-F]{8,64})\/?$/.exec(location.pathname);
    if (m) showProfile(app, m[1].toLowerCase());
    else showList(app);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
