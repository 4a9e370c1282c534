/* otelprof viewer: shared helpers (DOM, formatting, API, tooltip).
 * Plain JavaScript, no dependencies, nothing loaded from the network.
 * All text is inserted with textContent, never as HTML. */
(function () {
  'use strict';
  var O = window.OtelProf = window.OtelProf || {};
  var SVGNS = 'http://www.w3.org/2000/svg';
  O.API = '/api/v1';
  O.LABELS = { cpu: 'CPU time', wall: 'Wall time', samples: 'Samples' };

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
  O.el = el; O.append = append; O.svg = svg;

  O.getJSON = function (url) {
    return fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) { var e = new Error(body.error || ('HTTP ' + r.status)); e.status = r.status; e.body = body; throw e; }
        return body;
      });
    });
  };
  O.query = function (params) {
    var q = new URLSearchParams();
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v !== undefined && v !== null && v !== '') q.set(k, v);
    });
    var s = q.toString();
    return s ? '?' + s : '';
  };
  O.setURL = function (params) {
    var q = new URLSearchParams(location.search);
    Object.keys(params).forEach(function (k) { if (params[k] !== '' && params[k] !== null && params[k] !== undefined) q.set(k, params[k]); else q.delete(k); });
    var s = q.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  };
  O.param = function (name, dflt) { var v = new URLSearchParams(location.search).get(name); return v === null ? (dflt || '') : v; };

  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }
  O.fmtTime = function (unixNano, short) {
    if (!unixNano) return '—';
    var d = new Date(unixNano / 1e6);
    var t = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (short) return t;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + t + '.' + pad(d.getMilliseconds(), 3);
  };
  O.fmtMs = function (ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return '—';
    var a = Math.abs(ms);
    if (a >= 10000) return (ms / 1000).toFixed(1) + ' s';
    if (a >= 1000) return (ms / 1000).toFixed(2) + ' s';
    if (a >= 100) return ms.toFixed(0) + ' ms';
    if (a >= 10) return ms.toFixed(1) + ' ms';
    return ms.toFixed(2) + ' ms';
  };
  O.fmtNum = function (n) {
    if (n === null || n === undefined) return '—';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: 2 });
  };
  O.fmtValue = function (v, unit) {
    if (unit === 'nanoseconds') return O.fmtMs(v / 1e6);
    if (unit === 'count') return O.fmtNum(v) + (v === 1 ? ' sample' : ' samples');
    return O.fmtNum(v) + (unit ? ' ' + unit : '');
  };
  O.signed = function (v, unit) { return (v > 0 ? '+' : v < 0 ? '−' : '±') + O.fmtValue(Math.abs(v), unit); };
  O.pct = function (part, whole) {
    if (!whole) return '0%';
    var p = 100 * part / whole;
    return (Math.abs(p) >= 10 || p === 0 ? p.toFixed(1) : p.toFixed(2)) + '%';
  };
  O.shortId = function (id) { return id ? id.slice(0, 8) + '…' : '—'; };
  O.basename = function (path) { if (!path) return ''; var i = Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\')); return path.slice(i + 1); };
  function hash(s) { var h = 2166136261; for (var i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); } return h >>> 0; }
  O.isLibrary = function (file) {
    return !file || /(^|[\\/<{])(site|dist)-packages([\\/>}]|$)/.test(file) || /(^|[\\/])(lib|Lib)[\\/]python\d/.test(file) || /^</.test(file);
  };
  O.colorFor = function (name, file) {
    var h = hash(name);
    if (O.isLibrary(file)) return 'hsl(' + (28 + h % 22) + ',' + (35 + (h >> 5) % 20) + '%,' + (68 + (h >> 9) % 10) + '%)';
    return 'hsl(' + (h % 48) + ',' + (72 + (h >> 7) % 20) + '%,' + (56 + (h >> 11) % 10) + '%)';
  };
  O.statusClass = function (status) {
    if (status === null || status === undefined) return '';
    if (status >= 500) return 's5xx';
    if (status >= 400) return 's4xx';
    return 'sok';
  };

  // ---- tooltip
  var tooltip = null;
  O.showTooltip = function (evt, content) {
    tooltip = tooltip || document.getElementById('tooltip');
    tooltip.textContent = '';
    append(tooltip, content);
    tooltip.hidden = false;
    var gap = 14, w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    var x = evt.clientX + gap, y = evt.clientY + gap;
    if (x + w > window.innerWidth - 4) x = Math.max(4, evt.clientX - w - gap);
    if (y + h > window.innerHeight - 4) y = Math.max(4, evt.clientY - h - gap);
    tooltip.style.left = x + 'px';
    tooltip.style.top = y + 'px';
  };
  O.hideTooltip = function () { tooltip = tooltip || document.getElementById('tooltip'); if (tooltip) tooltip.hidden = true; };

  // ---- text measurement for frame labels
  var charWidth = 6.3;
  O.initMeasure = function () {
    try {
      var ctx = document.createElement('canvas').getContext('2d');
      ctx.font = '11px ' + getComputedStyle(document.body).fontFamily;
      charWidth = ctx.measureText('abcdefghijklmnopqrstuvwxyz_.<>').width / 30 || 6.3;
    } catch (e) { /* keep the default */ }
  };
  O.fitText = function (text, width) {
    var max = Math.floor((width - 6) / charWidth);
    if (max < 3) return '';
    if (text.length <= max) return text;
    return text.slice(0, max - 1) + '…';
  };

  // ---- selector helpers: set or remove one key's term in a selector string
  O.setTerm = function (selector, key, value) {
    var terms = (selector || '').match(/(?:[^\s"]+|"(?:\\.|[^"\\])*")+/g) || [];
    var re = new RegExp('^' + key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '(!=|>=|<=|=|>|<|~)', 'i');
    terms = terms.filter(function (t) { return !re.test(t); });
    if (value) terms.push(key + '=' + (/[\s"]/.test(value) ? '"' + value.replace(/(["\\])/g, '\\$1') + '"' : value));
    return terms.join(' ');
  };
  O.getTerm = function (selector, key) {
    var terms = (selector || '').match(/(?:[^\s"]+|"(?:\\.|[^"\\])*")+/g) || [];
    for (var i = 0; i < terms.length; i++) {
      if (terms[i].toLowerCase().indexOf(key + '=') === 0) {
        var v = terms[i].slice(key.length + 1);
        if (v[0] === '"') v = v.slice(1, -1).replace(/\\(.)/g, '$1');
        return v;
      }
    }
    return '';
  };
  O.quote = function (value) { return /[\s"]/.test(value) ? '"' + value.replace(/(["\\])/g, '\\$1') + '"' : value; };

  O.errorBox = function (e, what) {
    return el('p', { className: 'error', id: 'load-error', text: (what ? what + ': ' : '') + (e && e.message ? e.message : String(e)) });
  };

  // ---- navigation bar state
  // folder: the API's folder info ({display, directory}); the whole path shows on hover
  O.setNav = function (name, folder) {
    if (name !== undefined) {
      Array.prototype.forEach.call(document.querySelectorAll('.nav a'), function (a) {
        a.classList.toggle('active', a.getAttribute('data-page') === name);
      });
    }
    if (folder !== undefined) {
      var node = document.getElementById('folder');
      node.textContent = (folder && (folder.display || folder.directory)) || '';
      node.title = (folder && folder.directory) || '';
    }
  };
})();
