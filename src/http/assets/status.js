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

    var last = r.recent_cycles.find(function (c) { return c.outcome !== "running"; });
    var lastBox = byId("last-cycle");
    clear(lastBox);
    if (last) {
      append(lastBox, badge(last.outcome));
      byId("last-cycle-note").textContent = last.id + " · ended " + fmtTime(last.ended_at) + " · " + fmtMs(last.duration_ms);
    } else {
      lastBox.textContent = "none yet";
      byId("last-cycle-note").textContent = "";
    }
    byId("errors-total").textContent = fmtInt(r.open_errors_total);

    drawQuotaChart(r.calls_per_cycle);
    drawRecordsChart(r.records_over_time);

    fillTable("objects", r.objects.map(function (o) {
      var a = o.marketo_to_crm, b = o.crm_to_marketo;
      return el("tr", { "data-object": o.object }, [
        td(el("strong", { text: o.object })), td(fmtInt(o.linked), "num"),
        td(fmtInt(a.created), "num sep"), td(fmtInt(a.updated), "num"), td(fmtInt(a.deleted), "num"), td(fmtInt(a.failed), "num"),
        td(fmtInt(b.created), "num sep"), td(fmtInt(b.updated), "num"), td(fmtInt(b.deleted), "num"), td(fmtInt(b.failed), "num"),
        td(fmtInt(a.conflicts + b.conflicts), "num sep"), td(fmtTime(o.last_success_at)), td(fmtSeconds(o.lag_seconds), "num")
      ]);
    }), 13, "no objects configured");

    fillTable("cycles", r.recent_cycles.map(function (c) {
      var t = sumCounts(c.counts);
      var objects = {};
      c.counts.forEach(function (x) { objects[x.object] = true; });
      return el("tr", { "data-cycle": c.id }, [
        td(el("code", { text: c.id })), td(fmtTime(c.started_at)), td(fmtMs(c.duration_ms), "num"), td(badge(c.outcome)),
        td(fmtInt(c.api_calls), "num"), td(fmtInt(t.read), "num"), td(fmtInt(t.created), "num"), td(fmtInt(t.updated), "num"),
        td(fmtInt(t.deleted), "num"), td(fmtInt(t.conflicts), "num"), td(fmtInt(t.skipped), "num"), td(fmtInt(t.failed), "num"),
        td(Object.keys(objects).join(", "))
      ]);
    }), 13, "no cycles yet");

    byId("errors-shown").textContent = r.open_errors.length < r.open_errors_total
      ? "(newest " + r.open_errors.length + " of " + fmtInt(r.open_errors_total) + ")" : "";
    fillTable("errors", r.open_errors.map(function (e) {
      return el("tr", { "data-error": e.id }, [
        td(e.object), td(dirLabel(e.direction)), td(el("code", { text: e.key })), td(el("code", { text: e.code })),
        td(e.message, "wrap"), td(fmtInt(e.attempts), "num"), td(e.next_retry_at ? fmtTime(e.next_retry_at) : "waits for an operator")
      ]);
    }), 7, "no open errors");
  }

  function refresh() {
    fetch("api/status", { cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (res) {
        if (!res.ok) throw new Error("status request failed with HTTP " + res.status);
        return res.json();
      })
      .then(function (report) {
        byId("load-error").hidden = true;
        render(report);
        document.body.setAttribute("data-loaded", "true");
      })
      .catch(function (err) {
        var box = byId("load-error");
        box.hidden = false;
        box.textContent = "Could not load the status: " + err.message + ". Retrying…";
      });
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
