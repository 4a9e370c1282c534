/* otelprof viewer: the flame graph (icicle: callers on top) for one profile, a merge,
 * or a comparison (diff mode: width = both sides together, colour = change).
 * Tree walks are iterative, so stacks thousands of frames deep draw fine. */
(function () {
  'use strict';
  var O = window.OtelProf;
  var el = O.el, svg = O.svg;
  var ROW = 18;
  var MIN_WIDTH = 0.4;

  // Prepare a tree from the API: parent links, depth, labels, self values.
  O.linkTree = function (root, functions, diff) {
    var stack = [[root, null, 0]];
    while (stack.length) {
      var it = stack.pop(), n = it[0];
      n.parent = it[1]; n.depth = it[2];
      n.label = n.f >= 0 ? functions[n.f].name : (n.name || 'all');
      if (diff) {
        if (!n.ls) n.ls = n.l.map(function () { return 0; });
        if (!n.rs) n.rs = n.r.map(function () { return 0; });
      } else if (!n.s) n.s = n.v.map(function () { return 0; });
      (n.c || []).forEach(function (c) { stack.push([c, n, it[2] + 1]); });
    }
    return root;
  };

  function diffColor(l, r) {
    var base = Math.max(l, r);
    if (!base) return '#d0d7de';
    var rel = (r - l) / base;  // -1 .. 1
    if (Math.abs(rel) < 0.02) return 'hsl(210,8%,80%)';
    var a = Math.min(1, Math.abs(rel));
    if (rel > 0) return 'hsl(0,' + Math.round(55 + 35 * a) + '%,' + Math.round(82 - 30 * a) + '%)';
    return 'hsl(212,' + Math.round(50 + 35 * a) + '%,' + Math.round(82 - 28 * a) + '%)';
  }

  /* opts: {data (API response with functions, sample_types), root (linked), metric (index),
   *        diff (bool), needle (lower-case text), onChange(zoomNode)} -> {draw, zoomTo, root, setMetric, setNeedle} */
  O.flameGraph = function (container, opts) {
    var functions = opts.data.functions;
    var units = opts.data.sample_types.map(function (t) { return t.unit; });
    var types = opts.data.sample_types.map(function (t) { return t.type; });
    var diff = !!opts.diff;
    var root = opts.root;
    var metric = opts.metric;
    var zoom = root, needle = '', drawn = [];
    var crumbs = el('div', { className: 'crumbs', id: opts.idPrefix ? opts.idPrefix + 'crumbs' : 'crumbs' });
    var svgEl = svg('svg', { class: 'flame', id: opts.idPrefix ? opts.idPrefix + 'flame' : 'flame', role: 'img', 'aria-label': diff ? 'Differential flame graph' : 'Flame graph' });
    var wrap = el('div', { className: 'flame-wrap' }, crumbs, svgEl);
    container.appendChild(wrap);

    function width(n) { return diff ? n.l[metric] + n.r[metric] : n.v[metric]; }
    function isMatch(n) {
      if (!needle || n.f < 0) return false;
      var fn = functions[n.f];
      return fn.name.toLowerCase().indexOf(needle) >= 0 || (fn.file || '').toLowerCase().indexOf(needle) >= 0;
    }
    function fill(n) {
      if (diff) return diffColor(n.l[metric], n.r[metric]);
      var fn = n.f >= 0 ? functions[n.f] : null;
      return fn ? O.colorFor(fn.name, fn.file) : '#c9d1d9';
    }

    function draw() {
      O.hideTooltip();
      var w = Math.max(320, wrap.clientWidth - 16);
      var total = width(zoom);
      while (svgEl.firstChild) svgEl.removeChild(svgEl.firstChild);
      drawn = [];
      var maxDepth = 0;
      var frag = document.createDocumentFragment();
      function frame(n, x, fw, cls) {
        var y = n.depth * ROW;
        if (n.depth > maxDepth) maxDepth = n.depth;
        var fn = n.f >= 0 ? functions[n.f] : null;
        var g = svg('g', { class: 'frame' + (cls ? ' ' + cls : '') + (isMatch(n) ? ' match' : ''), 'data-i': drawn.length });
        if (fn) g.setAttribute('data-function', fn.name);
        g.appendChild(svg('rect', { x: x.toFixed(2), y: y, width: Math.max(0, fw - 0.5).toFixed(2), height: ROW - 1, rx: 2, fill: fill(n) }));
        var label = O.fitText(n.label, fw);
        if (label) {
          var t = svg('text', { x: (x + 4).toFixed(2), y: y + ROW / 2 });
          t.textContent = label;
          g.appendChild(t);
        }
        drawn.push(n);
        frag.appendChild(g);
      }
      for (var a = zoom.parent; a; a = a.parent) frame(a, 0, w, 'ancestor');
      if (total > 0) {
        var stack = [[zoom, 0]];
        while (stack.length) {
          var it = stack.pop(), n = it[0], x = it[1];
          var fw = w * width(n) / total;
          if (fw < MIN_WIDTH) continue;
          frame(n, x, fw, needle && !isMatch(n) ? 'dim' : '');
          var kids = (n.c || []).filter(function (c) { return width(c) > 0; });
          kids.sort(function (p, q) { return width(q) - width(p) || (p.label < q.label ? -1 : 1); });
          var cx = x;
          for (var i = 0; i < kids.length; i++) { stack.push([kids[i], cx]); cx += w * width(kids[i]) / total; }
        }
      }
      svgEl.appendChild(frag);
      var height = (maxDepth + 1) * ROW + 2;
      svgEl.setAttribute('height', height);
      svgEl.setAttribute('viewBox', '0 0 ' + w + ' ' + height);
      svgEl.setAttribute('width', w);
      crumbs.textContent = '';
      var path = [];
      for (var z = zoom; z; z = z.parent) path.unshift(z);
      path.forEach(function (n, i) {
        if (i) crumbs.appendChild(document.createTextNode(' › '));
        if (n === zoom) crumbs.appendChild(el('strong', { text: n.label }));
        else crumbs.appendChild(el('a', { text: n.label, onclick: function () { zoomTo(n); } }));
      });
      var unit = units[metric];
      if (diff) {
        crumbs.appendChild(document.createTextNode('  —  A ' + O.fmtValue(zoom.l[metric], unit) + ', B ' +
          O.fmtValue(zoom.r[metric], unit) + ' (' + O.signed(zoom.r[metric] - zoom.l[metric], unit) + ')'));
      } else {
        crumbs.appendChild(document.createTextNode('  —  ' + O.fmtValue(zoom.v[metric], unit) + ' (' + O.pct(zoom.v[metric], root.v[metric]) + ' of all)'));
      }
      if (opts.onDraw) opts.onDraw(api);
    }

    function zoomTo(n) { zoom = n; draw(); }
    function nodeAt(evt) {
      var g = evt.target.closest ? evt.target.closest('g.frame') : null;
      return g ? drawn[Number(g.getAttribute('data-i'))] || null : null;
    }
    svgEl.addEventListener('mousemove', function (evt) {
      var n = nodeAt(evt);
      if (!n) { O.hideTooltip(); return; }
      var unit = units[metric];
      var fn = n.f >= 0 ? functions[n.f] : null;
      var loc = fn ? (fn.file || '?') + ':' + (n.line || fn.start_line || '?') : (n.f === -2 ? 'thread' : 'all samples');
      var rows = [];
      var label = O.LABELS[types[metric]] || types[metric];
      if (diff) {
        var d = n.r[metric] - n.l[metric];
        rows.push(el('tr', null, el('td', { text: label + ' A' }), el('td', { className: 'num', text: O.fmtValue(n.l[metric], unit) }), el('td', { className: 'num', text: O.pct(n.l[metric], root.l[metric]) })));
        rows.push(el('tr', null, el('td', { text: label + ' B' }), el('td', { className: 'num', text: O.fmtValue(n.r[metric], unit) }), el('td', { className: 'num', text: O.pct(n.r[metric], root.r[metric]) })));
        rows.push(el('tr', { className: d > 0 ? 'worse' : d < 0 ? 'better' : '' }, el('td', { text: 'change' }), el('td', { className: 'num', text: O.signed(d, unit) }),
          el('td', { className: 'num', text: n.l[metric] ? (d >= 0 ? '+' : '') + O.pct(d, n.l[metric]) : (n.r[metric] ? 'new' : '') })));
        rows.push(el('tr', { className: 'muted' }, el('td', { text: 'self A / B' }), el('td', { className: 'num', text: O.fmtValue(n.ls[metric], unit) }), el('td', { className: 'num', text: O.fmtValue(n.rs[metric], unit) })));
      } else {
        rows.push(el('tr', null, el('td', { text: label }), el('td', { className: 'num', text: O.fmtValue(n.v[metric], unit) }), el('td', { className: 'num', text: O.pct(n.v[metric], root.v[metric]) })));
        rows.push(el('tr', null, el('td', { text: 'self' }), el('td', { className: 'num', text: O.fmtValue(n.s[metric], unit) }), el('td', { className: 'num', text: O.pct(n.s[metric], root.v[metric]) })));
        if (zoom !== root && zoom.v[metric]) rows.push(el('tr', null, el('td', { text: 'of zoomed' }), el('td'), el('td', { className: 'num', text: O.pct(n.v[metric], zoom.v[metric]) })));
        types.forEach(function (t, i) {
          if (i !== metric) rows.push(el('tr', { className: 'muted' }, el('td', { text: O.LABELS[t] || t }),
            el('td', { className: 'num', text: O.fmtValue(n.v[i], units[i]) }), el('td', { className: 'num', text: O.pct(n.v[i], root.v[i]) })));
        });
      }
      O.showTooltip(evt, [
        el('div', { className: 'fn', text: n.label }),
        el('div', { className: 'loc', text: loc + (fn && fn.start_line && n.line && n.line !== fn.start_line ? '  (def at line ' + fn.start_line + ')' : '') }),
        el('table', null, el('tbody', null, rows)),
        el('div', { className: 'hint', text: n === zoom ? (n === root ? '' : 'click: zoom out') : 'click: zoom in' })
      ]);
    });
    svgEl.addEventListener('mouseleave', O.hideTooltip);
    svgEl.addEventListener('click', function (evt) {
      var n = nodeAt(evt);
      if (n) zoomTo(n === zoom && n.parent ? n.parent : n);
    });
    var lastWidth = wrap.clientWidth;
    window.addEventListener('resize', function () { if (wrap.clientWidth !== lastWidth) { lastWidth = wrap.clientWidth; draw(); } });

    var api = {
      draw: draw, zoomTo: zoomTo, root: root, isMatch: isMatch,
      zoomed: function () { return zoom; },
      setMetric: function (m) { metric = m; if (!(width(zoom) > 0)) zoom = root; draw(); },
      setNeedle: function (s) { needle = s; draw(); },
      matched: function () {  // the value of matching frames, counted once per stack
        var total = 0, st = [root];
        while (st.length) { var m = st.pop(); if (isMatch(m)) total += diff ? m.r[metric] : m.v[metric]; else (m.c || []).forEach(function (c) { st.push(c); }); }
        return total;
      }
    };
    return api;
  };

  // A toolbar (metric switch, highlight, reset) + graph + hint for our tree JSON.
  O.flamePanel = function (body, data, opts) {
    opts = opts || {};
    var types = data.sample_types.map(function (t) { return t.type; });
    var totals = opts.diff ? data.left_totals.map(function (v, i) { return v + data.right_totals[i]; }) : data.totals;
    var metric = types.indexOf(opts.metric || data.default_type);
    if (metric < 0 || !totals[metric]) {
      ['cpu', 'wall', 'samples'].some(function (t) { var i = types.indexOf(t); if (i >= 0 && totals[i]) { metric = i; return true; } return false; });
    }
    if (metric < 0) metric = 0;
    var seg = el('div', { className: 'seg', id: 'metric', role: 'group', 'aria-label': 'Value shown' });
    var rank = { cpu: 0, wall: 1, samples: 2 };
    types.map(function (t, i) { return i; }).sort(function (a, b) {
      return (rank[types[a]] !== undefined ? rank[types[a]] : 9) - (rank[types[b]] !== undefined ? rank[types[b]] : 9) || a - b;
    }).forEach(function (i) {
      seg.appendChild(el('button', { type: 'button', 'data-metric': types[i], className: i === metric ? 'active' : '',
        onclick: function () { setMetric(i); } }, O.LABELS[types[i]] || types[i]));
    });
    var find = el('input', { type: 'search', id: 'highlight', placeholder: 'Highlight function or file…', 'aria-label': 'Highlight' });
    var matchInfo = el('span', { className: 'matchinfo', id: 'matchinfo' });
    var reset = el('button', { type: 'button', id: 'reset-zoom' }, 'Reset zoom');
    var controls = el('div', { className: 'controls' }, seg, find, matchInfo, opts.extraControls || null, reset);
    body.appendChild(controls);
    var holder = el('div');
    body.appendChild(holder);
    var root = O.linkTree(data.tree, data.functions, opts.diff);
    var graph = O.flameGraph(holder, { data: data, root: root, metric: metric, diff: opts.diff, onDraw: function (g) {
      if (find.value.trim()) {
        var unit = data.sample_types[metric].unit;
        var all = opts.diff ? root.r[metric] : root.v[metric];
        matchInfo.textContent = 'matches: ' + O.fmtValue(g.matched(), unit) + ' (' + O.pct(g.matched(), all) + ')';
      } else matchInfo.textContent = '';
    } });
    body.appendChild(el('p', { className: 'muted hint-line', text: opts.diff
      ? 'Width = A and B together; red = more time in B, blue = less. Hover for A, B and the change; click to zoom, Esc to reset.'
      : 'Callers on top, callees below; width = share of the chosen value. Hover for details, click a frame to zoom, Esc to reset.' }));
    reset.addEventListener('click', function () { graph.zoomTo(root); });
    document.addEventListener('keydown', function (evt) { if (evt.key === 'Escape') graph.zoomTo(root); });
    var listeners = [];
    find.addEventListener('input', function () {
      graph.setNeedle(find.value.trim().toLowerCase());
      listeners.forEach(function (f) { f(metric, find.value.trim().toLowerCase()); });
    });
    function setMetric(i) {
      metric = i;
      Array.prototype.forEach.call(seg.children, function (b) { b.classList.toggle('active', b.getAttribute('data-metric') === types[i]); });
      O.setURL({ metric: types[i] });
      graph.setMetric(i);
      listeners.forEach(function (f) { f(metric, find.value.trim().toLowerCase()); });
    }
    graph.draw();
    return {
      graph: graph, metric: function () { return metric; }, find: find,
      onChange: function (f) { listeners.push(f); },
      highlight: function (name) { find.value = name; graph.setNeedle(name.toLowerCase()); listeners.forEach(function (f) { f(metric, name.toLowerCase()); }); }
    };
  };

  // The per-function table under a flame graph (self / total, sortable).
  O.topTable = function (body, data, panel, opts) {
    opts = opts || {};
    var functions = data.functions;
    var sortKey = 'self', showAll = false;
    var tbody = el('tbody');
    var headSelf = el('th', { className: 'num sortable sorted', 'data-sort': 'self', text: 'Self' });
    var headTotal = el('th', { className: 'num sortable', 'data-sort': 'total', text: 'Total' });
    [headSelf, headTotal].forEach(function (h) { h.addEventListener('click', function () { sortKey = h.getAttribute('data-sort'); render(); }); });
    var more = el('button', { type: 'button', id: 'top-more', hidden: true, onclick: function () { showAll = true; render(); } }, 'Show all');
    body.appendChild(el('h2', { text: opts.title || 'Top functions' }));
    body.appendChild(el('table', { className: 'data', id: 'top' },
      el('thead', null, el('tr', null, el('th', { text: 'Function' }), el('th', { text: 'File' }), headSelf,
        el('th', { className: 'num', text: 'Self %' }), headTotal, el('th', { className: 'num', text: 'Total %' }))), tbody));
    body.appendChild(more);
    function render() {
      var metric = panel.metric();
      var needle = panel.find.value.trim().toLowerCase();
      headSelf.classList.toggle('sorted', sortKey === 'self');
      headTotal.classList.toggle('sorted', sortKey === 'total');
      var unit = data.sample_types[metric].unit;
      var all = data.totals[metric];
      var rows = data.top.filter(function (r) {
        if (!(r.total[metric] > 0)) return false;
        if (!needle) return true;
        var fn = functions[r.f];
        return fn.name.toLowerCase().indexOf(needle) >= 0 || (fn.file || '').toLowerCase().indexOf(needle) >= 0;
      });
      rows.sort(function (a, b) {
        return b[sortKey][metric] - a[sortKey][metric] || b.total[metric] - a.total[metric] || (functions[a.f].name < functions[b.f].name ? -1 : 1);
      });
      var limit = showAll ? rows.length : 50;
      more.hidden = rows.length <= limit;
      tbody.textContent = '';
      rows.slice(0, limit).forEach(function (r) {
        var fn = functions[r.f];
        var selfPct = all ? 100 * r.self[metric] / all : 0;
        var bar = el('span', { className: 'bar' });
        bar.style.width = Math.round(selfPct * 0.6) + 'px';
        tbody.appendChild(el('tr', { className: 'clickable', 'data-function': fn.name, title: 'highlight in the flame graph',
          onclick: function () { panel.highlight(fn.name); } },
          el('td', { className: 'mono', text: fn.name }),
          el('td', { className: 'mono muted', title: fn.file, text: O.basename(fn.file) + (fn.start_line ? ':' + fn.start_line : '') }),
          el('td', { className: 'num', text: O.fmtValue(r.self[metric], unit) }),
          el('td', { className: 'num' }, O.pct(r.self[metric], all), bar),
          el('td', { className: 'num', text: O.fmtValue(r.total[metric], unit) }),
          el('td', { className: 'num', text: O.pct(r.total[metric], all) })));
      });
    }
    panel.onChange(render);
    render();
  };
})();
