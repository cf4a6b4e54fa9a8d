"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var REFRESH_MS = 5000;

  // Builds an element; text goes through textContent only, never markup.
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }
  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }
  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
  }
  function append(node, children) {
    if (children === undefined || children === null) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    });
  }
  function byId(id) { return document.getElementById(id); }
  // An absolute URL next to the page, without credentials from the address bar (fetch refuses
  // URLs with a user name or password, which the address of a page opened with them keeps).
  function api(path) {
    return window.location.origin + window.location.pathname.replace(/[^\/]*$/, "") + path;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function fmtInt(n) { return (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US"); }
  function pad(n) { return n < 10 ? "0" + n : "" + n; }
  function fmtTime(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }
  function fmtShortTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "never";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "running";
    return ms < 1000 ? ms + " ms" : fmtSeconds(ms / 1000);
  }
  function fmtMB(bytes) {
    var mb = bytes / 1048576;
    return (mb >= 10 ? mb.toFixed(0) : mb.toFixed(1)) + " MB";
  }
  function dirLabel(d) { return d === "marketo_to_crm" ? "Marketo → CRM" : d === "crm_to_marketo" ? "CRM → Marketo" : String(d); }
  function badge(text, cls) { return el("span", { "class": "badge " + (cls || text), text: text }); }
  var PALETTE = ["#2f6fde", "#1f9d55", "#d97706", "#7c3aed", "#c62828", "#0891b2"];
  function jsonText(v) { return v === null || v === undefined ? "–" : typeof v === "string" ? v : JSON.stringify(v); }
  function backlogText(b) {
    if (!b) return "–";
    var t = fmtInt(b.pending) + " pending";
    if (b.waiting_for_operator) t += " · " + fmtInt(b.waiting_for_operator) + " need an operator";
    return t;
  }

  function setBar(id, used, budget) {
    var bar = byId(id);
    var pct = budget > 0 ? Math.min(100, 100 * used / budget) : 0;
    bar.firstElementChild.style.width = pct.toFixed(1) + "%";
    bar.className = "bar" + (pct >= 100 ? " full" : pct >= 80 ? " warn" : "");
  }

  function fillTable(id, rows, columns, empty) {
    var body = byId(id).tBodies[0];
    clear(body);
    if (!rows.length) {
      body.appendChild(el("tr", null, el("td", { "class": "empty", colspan: columns, text: empty })));
      return;
    }
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function td(content, cls) {
    var cell = el("td", cls ? { "class": cls } : null);
    append(cell, content);
    return cell;
  }

  // A bar chart of API calls per cycle with the average as a line.
  function drawQuotaChart(points) {
    var box = byId("chart-quota");
    clear(box);
    var W = 560, H = 200, L = 48, R = 12, T = 12, B = 28;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": "API calls per cycle", id: "svg-quota" });
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p.calls); });
    max = niceMax(max);
    axes(s, W, H, L, R, T, B, max);
    var n = Math.max(points.length, 1);
    var slot = (W - L - R) / n;
    var bw = Math.max(2, Math.min(28, slot * 0.7));
    points.forEach(function (p, i) {
      var h = (H - T - B) * p.calls / max;
      var x = L + i * slot + (slot - bw) / 2;
      s.appendChild(svg("rect", { x: x.toFixed(1), y: (H - B - h).toFixed(1), width: bw.toFixed(1), height: Math.max(h, 0.5).toFixed(1), fill: "#2f6fde", rx: 2 },
        svg("title", { text: p.cycle_id + ": " + p.calls + " calls" })));
    });
    labelsX(s, points.map(function (p) { return fmtShortTime(p.at); }), L, slot, H - B + 16);
    if (!points.length) emptyNote(s, W, H);
    box.appendChild(s);
  }

  // Two lines: records written into the CRM and into Marketo.
  function drawRecordsChart(points) {
    var box = byId("chart-records");
    clear(box);
    var W = 560, H = 200, L = 48, R = 24, T = 12, B = 28;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": "Records synced over time", id: "svg-records" });
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p.marketo_to_crm, p.crm_to_marketo); });
    max = niceMax(max);
    axes(s, W, H, L, R, T, B, max);
    var n = points.length;
    var step = n > 1 ? (W - L - R) / (n - 1) : 0;
    function xy(i, v) {
      var x = n > 1 ? L + i * step : L + (W - L - R) / 2;
      return [x, H - B - (H - T - B) * v / max];
    }
    [["marketo_to_crm", "#2f6fde"], ["crm_to_marketo", "#1f9d55"]].forEach(function (series) {
      var key = series[0], color = series[1];
      var d = points.map(function (p, i) { var c = xy(i, p[key]); return (i ? "L" : "M") + c[0].toFixed(1) + " " + c[1].toFixed(1); }).join(" ");
      if (d) s.appendChild(svg("path", { d: d, fill: "none", stroke: color, "stroke-width": 2, "class": "series-" + key }));
      points.forEach(function (p, i) {
        var c = xy(i, p[key]);
        s.appendChild(svg("circle", { cx: c[0].toFixed(1), cy: c[1].toFixed(1), r: 3, fill: color },
          svg("title", { text: fmtTime(p.at) + " " + dirLabel(key) + ": " + p[key] })));
      });
    });
    var slot = n > 1 ? step : (W - L - R);
    var labels = points.map(function (p) { return fmtShortTime(p.at); });
    labelsX(s, labels, n > 1 ? L - step / 2 : L, slot, H - B + 16);
    if (!n) emptyNote(s, W, H);
    box.appendChild(s);
    box.appendChild(el("div", { "class": "legend" }, [
      el("span", { "class": "m2c", text: "Marketo → CRM" }),
      el("span", { "class": "c2m", text: "CRM → Marketo" })
    ]));
  }

  // Cumulative calls today against the budget, with a dashed projection to the day's end.
  function drawBurnChart(b) {
    var box = byId("chart-burn");
    clear(box);
    var W = 560, H = 200, L = 56, R = 24, T = 12, B = 28;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": "Quota burn today", id: "svg-burn" });
    var start = b && b.day_start ? new Date(b.day_start).getTime() : NaN;
    var end = b && b.day_end ? new Date(b.day_end).getTime() : NaN;
    if (!b || isNaN(start) || isNaN(end) || end <= start) {
      axes(s, W, H, L, R, T, B, 4);
      emptyNote(s, W, H);
      box.appendChild(s);
      return;
    }
    var max = niceMax(Math.max(1, b.budget, b.projected, b.used));
    axes(s, W, H, L, R, T, B, max);
    function x(t) { return L + (W - L - R) * (t - start) / (end - start); }
    function y(v) { return H - B - (H - T - B) * v / max; }
    if (b.budget > 0) {
      s.appendChild(svg("line", { x1: L, x2: W - R, y1: y(b.budget).toFixed(1), y2: y(b.budget).toFixed(1), stroke: "#c62828", "stroke-width": 1.5, "class": "budget-line" },
        svg("title", { text: "daily budget: " + fmtInt(b.budget) + " calls" })));
    }
    var pts = b.points || [];
    var d = pts.map(function (p, i) { return (i ? "L" : "M") + x(new Date(p.at).getTime()).toFixed(1) + " " + y(p.calls).toFixed(1); }).join(" ");
    if (d) s.appendChild(svg("path", { d: d, fill: "none", stroke: "#2f6fde", "stroke-width": 2, "class": "burn-line" }));
    var last = pts.length ? pts[pts.length - 1] : null;
    if (last) {
      s.appendChild(svg("line", { x1: x(new Date(last.at).getTime()).toFixed(1), y1: y(last.calls).toFixed(1), x2: x(end).toFixed(1), y2: y(b.projected).toFixed(1),
        stroke: "#d97706", "stroke-width": 2, "stroke-dasharray": "5 4", "class": "projection-line" },
        svg("title", { text: "projected at the day's end: " + fmtInt(b.projected) + " calls" })));
    }
    var hours = (end - start) / 3600000;
    var labels = [];
    for (var h = 0; h <= hours; h += 6) labels.push(h);
    labels.forEach(function (h) {
      s.appendChild(svg("text", { x: x(start + h * 3600000).toFixed(1), y: H - B + 16, "text-anchor": "middle", text: fmtShortTime(new Date(start + h * 3600000).toISOString()) }));
    });
    box.appendChild(s);
    box.appendChild(el("div", { "class": "legend" }, [
      el("span", { "class": "m2c", text: "used" }),
      el("span", { "class": "budget", text: "budget" }),
      el("span", { "class": "projection", text: "projection to the Marketo day's end (midnight America/Chicago)" })
    ]));
  }

  // One horizontal bar per object: its lag.
  function drawLagChart(objects) {
    var box = byId("chart-lag");
    clear(box);
    var rows = objects.length || 1;
    var W = 560, L = 110, R = 70, T = 8, ROW = 26, H = T * 2 + rows * ROW;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": "Lag per object", id: "svg-lag" });
    var max = 60;
    objects.forEach(function (o) { if (o.lag_seconds) max = Math.max(max, o.lag_seconds); });
    objects.forEach(function (o, i) {
      var yy = T + i * ROW;
      s.appendChild(svg("text", { x: L - 8, y: yy + ROW / 2 + 4, "text-anchor": "end", text: o.object }));
      var v = o.lag_seconds;
      var w = v === null || v === undefined ? 0 : (W - L - R) * v / max;
      s.appendChild(svg("rect", { x: L, y: yy + 4, width: Math.max(w, 0.5).toFixed(1), height: ROW - 8, rx: 2, fill: v > 3600 ? "#c62828" : v > 900 ? "#d97706" : "#1f9d55", "data-lag": o.object },
        svg("title", { text: o.object + ": " + (v === null || v === undefined ? "never synced" : fmtSeconds(v)) })));
      s.appendChild(svg("text", { x: (L + w + 6).toFixed(1), y: yy + ROW / 2 + 4, text: v === null || v === undefined ? "never synced" : fmtSeconds(v) }));
    });
    if (!objects.length) emptyNote(s, W, H);
    box.appendChild(s);
  }

  // Records written per hour, one line per object (both directions together).
  function drawHourlyChart(rows) {
    var box = byId("chart-hourly");
    clear(box);
    var W = 560, H = 200, L = 48, R = 16, T = 12, B = 28;
    var s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": "Records per hour per object", id: "svg-hourly" });
    var hours = [], objects = [], values = {};
    rows.forEach(function (r) {
      if (hours.indexOf(r.hour) < 0) hours.push(r.hour);
      if (objects.indexOf(r.object) < 0) objects.push(r.object);
      values[r.object + "|" + r.hour] = (r.marketo_to_crm || 0) + (r.crm_to_marketo || 0);
    });
    hours.sort();
    var max = 1;
    Object.keys(values).forEach(function (k) { max = Math.max(max, values[k]); });
    max = niceMax(max);
    axes(s, W, H, L, R, T, B, max);
    var n = hours.length;
    var slot = (W - L - R) / Math.max(n, 1);
    var bw = Math.max(2, Math.min(18, slot * 0.8 / Math.max(objects.length, 1)));
    objects.forEach(function (o, oi) {
      hours.forEach(function (h, hi) {
        var v = values[o + "|" + h] || 0;
        var bh = (H - T - B) * v / max;
        var x = L + hi * slot + (slot - bw * objects.length) / 2 + oi * bw;
        s.appendChild(svg("rect", { x: x.toFixed(1), y: (H - B - bh).toFixed(1), width: bw.toFixed(1), height: Math.max(bh, 0.5).toFixed(1), fill: PALETTE[oi % PALETTE.length], "class": "hourly-" + o },
          svg("title", { text: o + " " + fmtShortTime(h) + ": " + fmtInt(v) + " records" })));
      });
    });
    labelsX(s, hours.map(function (h) { return fmtShortTime(h); }), L, slot, H - B + 16);
    if (!n) emptyNote(s, W, H);
    box.appendChild(s);
    box.appendChild(el("div", { "class": "legend" }, objects.map(function (o, i) { return el("span", { "class": "o" + (i % PALETTE.length), text: o }); })));
  }

  // Returns a round axis maximum whose quarter ticks are whole numbers.
  function niceMax(v) {
    var quarter = Math.max(1, v / 4);
    var p = Math.pow(10, Math.floor(Math.log10(quarter)));
    var m = [1, 2, 5, 10].find(function (k) { return k * p >= quarter; });
    return 4 * m * p;
  }
  function axes(s, W, H, L, R, T, B, max) {
    for (var i = 0; i <= 4; i++) {
      var y = H - B - (H - T - B) * i / 4;
      s.appendChild(svg("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e3e7ee" }));
      s.appendChild(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", text: fmtInt(Math.round(max * i / 4)) }));
    }
  }
  function labelsX(s, labels, L, slot, y) {
    var every = Math.max(1, Math.ceil(labels.length / 8));
    labels.forEach(function (t, i) {
      if (i % every) return;
      s.appendChild(svg("text", { x: (L + i * slot + slot / 2).toFixed(1), y: y, "text-anchor": "middle", text: t }));
    });
  }
  function emptyNote(s, W, H) {
    s.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", text: "no data yet" }));
  }

  function sumCounts(counts) {
    var t = { read: 0, created: 0, updated: 0, deleted: 0, conflicts: 0, skipped: 0, failed: 0 };
    counts.forEach(function (c) { Object.keys(t).forEach(function (k) { t[k] += c[k] || 0; }); });
    return t;
  }

  function render(r) {
    byId("instance").textContent = r.instance;
    byId("updated").textContent = "updated " + fmtTime(r.generated_at);
    var lease = byId("lease");
    lease.textContent = r.lease === "held" ? "lease held" : r.lease === "standby" ? "standby" : "lease lost";
    lease.className = "badge " + r.lease;

    var pause = byId("pause");
    pause.hidden = false;
    clear(pause);
    if (r.paused) {
      pause.className = "banner paused";
      append(pause, [el("strong", { text: "Paused: " }), r.paused.reason,
        r.paused.until ? " (until " + fmtTime(r.paused.until) + ")" : " (until resumed by an operator)"]);
    } else {
      pause.className = "banner running";
      pause.textContent = "Running: not paused";
    }

    var q = r.quota;
    byId("quota-calls").textContent = fmtInt(q.calls_today) + " / " + fmtInt(q.daily_budget);
    setBar("quota-calls-bar", q.calls_today, q.daily_budget);
    byId("quota-calls-note").textContent = fmtInt(q.remaining) + " remaining";
    byId("quota-bulk").textContent = fmtMB(q.bulk_bytes_today) + " / " + fmtMB(q.bulk_budget_bytes);
    setBar("quota-bulk-bar", q.bulk_bytes_today, q.bulk_budget_bytes);
    byId("quota-bulk-note").textContent = fmtMB(Math.max(0, q.bulk_budget_bytes - q.bulk_bytes_today)) + " remaining";

    var burn = r.quota_burn;
    var proj = byId("quota-projection");
    if (burn && burn.day_end) {
      proj.textContent = "projected " + fmtInt(burn.projected) + " by the Marketo day's end (" + fmtTime(burn.day_end) + ")" +
        (burn.projected_over_budget ? " — over budget" : "");
      proj.className = burn.projected_over_budget ? "reason" : "muted";
    } else {
      proj.textContent = "";
    }

    var last = r.recent_cycles.find(function (c) { return c.outcome !== "running"; });
    var lastBox = byId("last-cycle");
    clear(lastBox);
    var reasonBox = byId("last-cycle-reason");
    reasonBox.textContent = "";
    if (last) {
      append(lastBox, badge(last.outcome));
      byId("last-cycle-note").textContent = last.id + " · ended " + fmtTime(last.ended_at) + " · " + fmtMs(last.duration_ms);
      if (last.message) reasonBox.textContent = last.message;
    } else {
      lastBox.textContent = "none yet";
      byId("last-cycle-note").textContent = "";
    }
    var failedBanner = byId("failed-banner");
    clear(failedBanner);
    if (last && last.outcome === "failed") {
      failedBanner.hidden = false;
      append(failedBanner, [el("strong", { text: "Last cycle failed: " }), last.message || "no reason was recorded", " (" + fmtTime(last.ended_at) + ")"]);
    } else {
      failedBanner.hidden = true;
    }
    byId("errors-total").textContent = fmtInt(r.open_errors_total);
    var ct = r.cycle_totals || {};
    byId("cycle-totals").textContent = fmtInt((ct.succeeded || 0) + (ct.partial || 0) + (ct.failed || 0) + (ct.cancelled || 0));
    byId("cycle-totals-note").textContent = fmtInt(ct.succeeded) + " succeeded · " + fmtInt(ct.partial) + " partial · " +
      fmtInt(ct.failed) + " failed · " + fmtInt(ct.cancelled) + " cancelled · " + fmtInt(ct.api_calls) + " API calls";

    drawBurnChart(burn);
    drawLagChart(r.objects);
    drawHourlyChart(r.records_per_hour || []);
    drawQuotaChart(r.calls_per_cycle);
    drawRecordsChart(r.records_over_time);

    fillTable("objects", r.objects.map(function (o) {
      var a = o.marketo_to_crm, b = o.crm_to_marketo;
      return el("tr", { "data-object": o.object }, [
        td(el("strong", { text: o.object })), td(fmtInt(o.linked), "num"),
        td(backlogText(o.backlog_marketo_to_crm), "num"), td(backlogText(o.backlog_crm_to_marketo), "num"),
        td(o.lag_seconds === null || o.lag_seconds === undefined ? "never synced" : fmtSeconds(o.lag_seconds), "num"),
        td(fmtInt(o.records_last_hour), "num"),
        td(fmtInt(a.created), "num sep"), td(fmtInt(a.updated), "num"), td(fmtInt(a.deleted), "num"), td(fmtInt(a.failed), "num"),
        td(fmtInt(b.created), "num sep"), td(fmtInt(b.updated), "num"), td(fmtInt(b.deleted), "num"), td(fmtInt(b.failed), "num"),
        td(fmtInt(a.conflicts + b.conflicts), "num sep"), td(fmtTime(o.last_success_at))
      ]);
    }), 16, "no objects synced yet");

    fillTable("failed", (r.failed_cycles || []).map(function (c) {
      return el("tr", { "data-failed-cycle": c.id }, [
        td(fmtTime(c.started_at)), td(el("code", { text: c.id })), td(c.message || "no reason was recorded", "wrap")
      ]);
    }), 3, "no failed cycles");

    fillTable("cycles", r.recent_cycles.map(function (c) {
      var t = sumCounts(c.counts);
      var objects = {};
      c.counts.forEach(function (x) { objects[x.object] = true; });
      return el("tr", { "data-cycle": c.id }, [
        td(el("code", { text: c.id })), td(fmtTime(c.started_at)), td(fmtMs(c.duration_ms), "num"), td(badge(c.outcome)),
        td(fmtInt(c.api_calls), "num"), td(fmtInt(t.read), "num"), td(fmtInt(t.created), "num"), td(fmtInt(t.updated), "num"),
        td(fmtInt(t.deleted), "num"), td(fmtInt(t.conflicts), "num"), td(fmtInt(t.skipped), "num"), td(fmtInt(t.failed), "num"),
        td(Object.keys(objects).join(", ")), td(c.message || "", "wrap")
      ]);
    }), 14, "no cycles yet");

    byId("errors-shown").textContent = r.open_errors.length < r.open_errors_total
      ? "(newest " + r.open_errors.length + " of " + fmtInt(r.open_errors_total) + ")" : "";
    fillTable("errors", r.open_errors.map(function (e) {
      var retry = el("button", { type: "button", "data-action": "retry", "data-id": e.id, text: "Retry" });
      var discard = el("button", { type: "button", "class": "danger", "data-action": "discard", "data-id": e.id, text: "Discard" });
      return el("tr", { "data-error": e.id }, [
        td(e.object), td(dirLabel(e.direction)), td(el("code", { text: e.key })), td(el("code", { text: e.code })),
        td(e.message, "wrap"), td(fmtInt(e.attempts), "num"), td(fmtTime(e.first_seen_at)),
        td(e.next_retry_at ? fmtTime(e.next_retry_at) : "waits for an operator"), td([retry, discard])
      ]);
    }), 9, "no open errors");
  }

  function renderConflicts(list, total, filtered) {
    byId("conflicts-shown").textContent = filtered
      ? "(" + fmtInt(list.length) + " matching)"
      : (list.length < total ? "(newest " + list.length + " of " + fmtInt(total) + ")" : "");
    fillTable("conflicts", list.map(function (c) {
      var mk = c.winner === "marketo", cr = c.winner === "crm";
      return el("tr", { "data-conflict": String(c.id) }, [
        td(fmtTime(c.at)), td(c.object), td([el("code", { text: c.marketo_key }), " / ", el("code", { text: c.crm_key })]),
        td(el("code", { text: c.field })),
        td(jsonText(c.marketo_value), "value" + (mk ? " winner" : "")), td(jsonText(c.crm_value), "value" + (cr ? " winner" : "")),
        td(jsonText(c.base_value), "value"), td(mk ? "Marketo" : cr ? "CRM" : c.winner), td(el("code", { text: c.policy }))
      ]);
    }), 9, filtered ? "no conflicts match the filter" : "no conflicts yet");
  }

  function conflictQuery() {
    var params = [];
    function add(name, value) { if (value) params.push(name + "=" + encodeURIComponent(value)); }
    add("object", byId("cf-object").value.trim());
    add("field", byId("cf-field").value.trim());
    add("winner", byId("cf-winner").value);
    var since = byId("cf-since").value;
    if (since) {
      var d = new Date(since + (since.length === 16 ? ":00" : "") + "Z");
      if (!isNaN(d.getTime())) add("since", d.toISOString());
    }
    return params.join("&");
  }

  var lastReport = null;
  function refreshConflicts() {
    var q = conflictQuery();
    if (!q) {
      if (lastReport) renderConflicts(lastReport.recent_conflicts || [], lastReport.conflicts_total || 0, false);
      return Promise.resolve();
    }
    return fetch(api("api/conflicts?" + q), { cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (res) {
        if (!res.ok) return res.json().then(function (b) { throw new Error(b.error || ("HTTP " + res.status)); });
        return res.json();
      })
      .then(function (list) { renderConflicts(list.conflicts, list.conflicts.length, true); })
      .catch(function (err) { byId("conflicts-shown").textContent = "(" + err.message + ")"; });
  }

  function act(action, id) {
    var note = byId("action-note");
    note.textContent = (action === "retry" ? "Retrying " : "Discarding ") + id + "…";
    return fetch(api("api/errors/" + encodeURIComponent(id) + "/" + action), { method: "POST", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (res) {
        return res.json().then(function (body) {
          if (!res.ok) throw new Error(body.error || ("HTTP " + res.status));
          return body;
        });
      })
      .then(function () {
        note.textContent = action === "retry" ? "Error " + id + " will be retried at the next cycle." : "Error " + id + " was discarded.";
        refresh();
      })
      .catch(function (err) { note.textContent = "Could not " + action + " " + id + ": " + err.message; });
  }

  // Records the page's own width against the viewport (a phone-width check for tests and people).
  function measure() {
    var doc = document.documentElement;
    document.body.setAttribute("data-page-width", String(Math.max(doc.scrollWidth, document.body.scrollWidth)));
    document.body.setAttribute("data-viewport-width", String(window.innerWidth));
    document.body.setAttribute("data-overflow", Math.max(doc.scrollWidth, document.body.scrollWidth) > window.innerWidth ? "true" : "false");
  }

  function refresh() {
    fetch(api("api/status"), { cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (res) {
        if (!res.ok) throw new Error("status request failed with HTTP " + res.status);
        return res.json();
      })
      .then(function (report) {
        byId("load-error").hidden = true;
        lastReport = report;
        render(report);
        return refreshConflicts().then(function () {
          measure();
          document.body.setAttribute("data-loaded", "true");
        });
      })
      .catch(function (err) {
        var box = byId("load-error");
        box.hidden = false;
        box.textContent = "Could not load the status: " + err.message + ". Retrying…";
      });
  }

  byId("errors").addEventListener("click", function (ev) {
    var target = ev.target;
    if (!target || !target.getAttribute) return;
    var action = target.getAttribute("data-action");
    var id = target.getAttribute("data-id");
    if (!action || !id) return;
    if (action === "discard" && !window.confirm("Discard error " + id + "? The record will not be retried.")) return;
    act(action, id);
  });
  byId("cf-apply").addEventListener("click", function () { refreshConflicts(); });
  byId("cf-clear").addEventListener("click", function () {
    ["cf-object", "cf-field", "cf-winner", "cf-since"].forEach(function (id) { byId(id).value = ""; });
    refreshConflicts();
  });
  ["cf-object", "cf-field"].forEach(function (id) {
    byId(id).addEventListener("keydown", function (ev) { if (ev.key === "Enter") refreshConflicts(); });
  });

  // Filters and actions can also come from the address: #object=lead&winner=crm.
  (function applyHash() {
    var hash = window.location.hash.replace(/^#/, "");
    if (!hash) return;
    hash.split("&").forEach(function (pair) {
      var kv = pair.split("=");
      var value = decodeURIComponent(kv[1] || "");
      if (kv[0] === "object") byId("cf-object").value = value;
      if (kv[0] === "field") byId("cf-field").value = value;
      if (kv[0] === "winner") byId("cf-winner").value = value;
    });
  })();

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
