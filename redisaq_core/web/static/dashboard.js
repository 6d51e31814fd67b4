"use strict";
// The redisaq dashboard: snapshots from /ws/dashboard, jobs over /ws/jobs, replay over HTTP.
(function () {
  // The token comes in the address's fragment (/#token=...), which browsers never send to
  // the server, and is kept for this tab only; the address bar is cleaned at once.
  const KEY = "redisaq-token";
  const fragment = new URLSearchParams(location.hash.slice(1));
  const params = new URLSearchParams(location.search);
  let token = sessionStorage.getItem(KEY) || "";
  const given = fragment.get("token") || params.get("token");
  if (given !== null) {
    token = given;
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname);
  }

  const $ = (id) => document.getElementById(id);
  const FINAL = new Set(["completed", "dead", "cancelled"]);

  function socketUrl(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path;
  }

  // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol.
  function subprotocols() {
    if (!token) return ["redisaq"];
    const bytes = new TextEncoder().encode(token);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    const encoded = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    return ["redisaq", "redisaq.bearer." + encoded];
  }

  function openSocket(path) {
    return new WebSocket(socketUrl(path), subprotocols());
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function td(value, cls) {
    return el("td", { text: value === null || value === undefined ? "" : value, class: cls });
  }

  function badge(status) {
    return el("span", { class: "status status-" + status, text: status.replace("_", " ") });
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 1) return "just now";
    if (seconds < 90) return seconds.toFixed(1) + " s ago";
    return Math.round(seconds / 60) + " min ago";
  }

  function clock(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
  }

  function short(value) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text === undefined ? "" : text;
  }

  function setConnection(text, kind) {
    const node = $("connection");
    node.textContent = text;
    node.className = "pill pill-" + kind;
  }

  // ---- snapshots ------------------------------------------------------------------------

  function renderWorkers(workers) {
    const body = $("workers").tBodies[0];
    body.replaceChildren(
      ...workers.map((w) => {
        const status = el("td", { class: "status-cell" }, [badge(w.status)]);
        return el("tr", { "data-worker-id": w.worker_id, "data-status": w.status }, [
          el("td", { class: "mono truncate", text: w.worker_id, title: w.worker_id }),
          el("td", {}, [document.createTextNode(w.name), el("br"),
            el("span", { class: "muted small", text: w.service_type })]),
          td(w.host + ":" + w.port, "mono"),
          status,
          td(ago(w.age)),
        ]);
      })
    );
    $("workers-empty").hidden = workers.length > 0;
    $("workers-count").textContent = workers.length ? "(" + workers.length + ")" : "";
  }

  function figure(label, value) {
    return el("span", {}, [document.createTextNode(label + " "), el("b", { text: value })]);
  }

  function renderTopics(topics, total) {
    const host = $("topics");
    host.replaceChildren(
      ...topics.map((t) => {
        const rows = t.rows.map((r) =>
          el("tr", { "data-partition": r.partition }, [
            td(r.partition, "num"),
            td(r.group || "-"),
            td(r.owner || "-", "mono"),
            td(r.lag === null ? "-" : (r.lag_exact ? "" : ">=") + r.lag, "num"),
            td(r.pending, "num"),
            td(r.in_flight, "num"),
            td(r.length, "num"),
            td(r.dead_letters, "num"),
          ])
        );
        const head = el("tr", {}, ["Partition", "Group", "Owner", "Lag", "Pending", "In flight",
          "Length", "DLQ"].map((h, i) => el("th", { text: h, class: i === 1 || i === 2 ? null : "num" })));
        return el("div", { class: "topic", "data-topic": t.topic }, [
          el("h3", { text: t.topic }),
          el("div", { class: "figures" }, [
            figure("partitions", t.partitions),
            figure("groups", t.groups.join(", ") || "none"),
            figure("produced", t.produced),
            figure("handled", t.handled),
            figure("failed", t.failed),
            figure("pending", t.pending),
            figure("lag", t.lag),
            figure("dead letters", t.dead_letters),
            figure("scheduled", t.scheduled ?? 0),
          ]),
          el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)]),
        ]);
      })
    );
    $("topics-empty").hidden = topics.length > 0;
    $("topics-count").textContent = total > topics.length
      ? "(" + topics.length + " of " + total + ")" : total ? "(" + total + ")" : "";
  }

  function renderDeadLetters(groups) {
    const host = $("dead-letters");
    host.replaceChildren(
      ...groups.map((g) => {
        // A dead-letter id is unique within its partition only: PARTITION:ID names one letter.
        const rows = g.items.map((d) => {
          const ref = d.partition + ":" + d.id;
          return el("tr", { "data-dead-letter": ref }, [
            td(d.partition, "num"),
            td(d.msg_id, "mono"),
            el("td", { class: "truncate", title: d.error_type + ": " + d.error },
              [document.createTextNode(d.error_type + ": " + d.error)]),
            td(d.deliveries, "num"),
            el("td", {}, [replayButton(g.topic, [ref], "Replay")]),
          ]);
        });
        return el("div", { class: "topic", "data-topic": g.topic }, [
          el("div", { class: "dlq-head" }, [
            el("h3", { text: g.topic + " (" + g.count + ")" }),
            replayButton(g.topic, null, "Replay all"),
          ]),
          el("table", {}, [el("tbody", {}, rows)]),
        ]);
      })
    );
    $("dlq-empty").hidden = groups.length > 0;
  }

  function renderRecentJobs(jobs) {
    $("recent-jobs").tBodies[0].replaceChildren(
      ...jobs.map((j) =>
        el("tr", { "data-job-id": j.job_id }, [
          el("td", { class: "mono truncate", text: j.job_id, title: j.job_id }),
          el("td", {}, [badge(j.status)]),
          td(j.attempts, "num"),
          td(j.worker || "", "mono"),
          td(clock(j.updated_at)),
        ])
      )
    );
  }

  function moment(ts) {
    if (!ts) return "";
    const date = new Date(ts * 1000);
    const today = date.toDateString() === new Date().toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function renderSchedules(schedules, total) {
    $("schedules").tBodies[0].replaceChildren(
      ...schedules.map((s) => {
        const when = s.cron === null ? "every " + s.every + " s"
          : s.cron + (s.timezone === "UTC" ? "" : " (" + s.timezone + ")");
        return el("tr", { "data-schedule": s.name }, [
          el("td", { class: "mono truncate", text: s.name, title: s.name }),
          td(s.topic, "mono"),
          td(when, "mono when"),
          td(s.last_tick ? moment(s.last_tick) : "never", "last"),
          td(moment(s.next_tick), "next"),
        ]);
      })
    );
    $("schedules-empty").hidden = schedules.length > 0;
    const shown = total > schedules.length ? schedules.length + " of " + total : total;
    $("schedules-count").textContent = total ? "(" + shown + ")" : "";
  }

  // ---- charts ---------------------------------------------------------------------------
  // Each topic's last 15 minutes from GET /topics/{name}/series (read from Redis, so every
  // gateway draws the same lines), redrawn every few seconds with the vendored uPlot.

  const CHART_TOPICS = 10;
  const CHART_EVERY = 2000;
  const COLORS = ["#2874a6", "#1e8449", "#c0392b", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"];
  const charts = new Map(); // topic -> { node, plots: Map(kind -> uPlot), signature }
  let chartTopics = [];

  function chartSpecs(s) {
    const groups = s.groups;
    const ms = (values) => values.map((v) => (v === null ? null : v * 1000));
    return [
      { kind: "throughput", title: "messages / s", points: false, series: [
        { label: "produced", values: s.produced },
        ...groups.map((g) => ({ label: "handled " + g.group, values: g.handled })) ] },
      { kind: "lag", title: "lag (entries)", points: true, series:
        groups.map((g) => ({ label: g.group, values: g.lag })) },
      { kind: "latency", title: "handler time (ms)", points: true, series: groups.flatMap((g) => [
        { label: "p50 " + g.group, values: ms(g.p50) },
        { label: "p99 " + g.group, values: ms(g.p99), dash: [4, 3] } ]) },
    ];
  }

  function chartWidth(node) {
    return Math.max(220, Math.floor(node.clientWidth || 300));
  }

  function makePlot(spec, node) {
    const options = {
      width: chartWidth(node),
      height: 150,
      series: [{}, ...spec.series.map((x, i) => ({
        label: x.label, stroke: COLORS[i % COLORS.length], width: 1.5, dash: x.dash,
        spanGaps: false, points: { show: spec.points, size: 4 } }))],
      axes: [{ stroke: "#6a7380", grid: { stroke: "#e1e4e8" } },
        { stroke: "#6a7380", grid: { stroke: "#e1e4e8" }, size: 48 }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max || 0)] } },
      legend: { show: true, live: false, markers: { fill: (u, i) => u.series[i].stroke(u, i) } },
      cursor: { show: true, drag: { x: false, y: false } },
    };
    return new uPlot(options, [[]].concat(spec.series.map(() => [])), node);
  }

  function chartBlock(topic) {
    let entry = charts.get(topic);
    if (!entry) {
      const node = el("div", { class: "chart-topic", "data-topic": topic }, [
        el("h3", { text: topic }), el("div", { class: "chart-row" })]);
      entry = { node: node, plots: new Map(), signature: "" };
      charts.set(topic, entry);
    }
    return entry;
  }

  const chartTotals = new Map(); // topic -> produced + handled at the previous snapshot

  // The busiest topics get the charts: most messages since the previous snapshot, then most
  // in all, then by name.
  function busiest(topics) {
    const rank = topics.map((t) => {
      const total = (t.produced || 0) + (t.handled || 0);
      const before = chartTotals.get(t.topic);
      chartTotals.set(t.topic, total);
      return { topic: t.topic, recent: before === undefined ? 0 : total - before, total: total };
    });
    rank.sort((a, b) => b.recent - a.recent || b.total - a.total
      || (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0));
    return rank.map((r) => r.topic);
  }

  function syncCharts(topics) {
    chartTopics = busiest(topics).slice(0, CHART_TOPICS);
    for (const [topic, entry] of charts) {
      if (!chartTopics.includes(topic)) {
        for (const plot of entry.plots.values()) plot.destroy();
        charts.delete(topic);
      }
    }
    $("charts").replaceChildren(...chartTopics.map((t) => chartBlock(t).node));
    $("charts-empty").hidden = chartTopics.length > 0;
    $("charts-note").textContent = topics.length > chartTopics.length
      ? "(the " + chartTopics.length + " busiest topics)" : "";
  }

  function drawSeries(topic, s) {
    const entry = charts.get(topic);
    if (!entry) return;
    const specs = chartSpecs(s);
    const signature = JSON.stringify(specs.map((x) => x.series.map((y) => y.label)));
    const row = entry.node.querySelector(".chart-row");
    if (signature !== entry.signature) {
      for (const plot of entry.plots.values()) plot.destroy();
      entry.plots.clear();
      row.replaceChildren(...specs.map((spec) => el("div", {
        class: "chart", "data-chart": spec.kind, "data-draws": "0", role: "img",
        "aria-label": topic + ": " + spec.title + ", last 15 minutes" }, [
        el("div", { class: "chart-title muted small", text: spec.title })])));
      entry.signature = signature;
    }
    for (const spec of specs) {
      const box = row.querySelector('[data-chart="' + spec.kind + '"]');
      let plot = entry.plots.get(spec.kind);
      if (!plot) {
        plot = makePlot(spec, box);
        entry.plots.set(spec.kind, plot);
      }
      plot.setData([s.times].concat(spec.series.map((x) => x.values)));
      const first = spec.series.length ? spec.series[0].values : [];
      const last = first.filter((v) => v !== null).slice(-1)[0];
      box.setAttribute("data-draws", String(Number(box.getAttribute("data-draws")) + 1));
      box.setAttribute("data-total", String(first.reduce((a, v) => a + (v || 0), 0)));
      box.setAttribute("data-last", last === undefined ? "" : String(last));
    }
    entry.node.setAttribute("data-time", String(s.time));
  }

  async function fetchSeries(topic) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch("/topics/" + encodeURIComponent(topic) + "/series",
      { headers: headers, cache: "no-store" });
    if (!response.ok) throw new Error("series of " + topic + ": HTTP " + response.status);
    return response.json();
  }

  async function refreshCharts() {
    try {
      if (document.hidden) return; // a tab in the background draws nothing
      await Promise.all(chartTopics.map(async (topic) => {
        try {
          drawSeries(topic, await fetchSeries(topic));
        } catch (error) {
          const entry = charts.get(topic);
          if (entry) entry.node.setAttribute("data-error", String(error.message || error));
          $("charts-note").textContent = String(error.message || error);
        }
      }));
    } finally {
      setTimeout(refreshCharts, CHART_EVERY);
    }
  }

  window.addEventListener("resize", () => {
    for (const entry of charts.values()) {
      for (const [kind, plot] of entry.plots) {
        const box = entry.node.querySelector('[data-chart="' + kind + '"]');
        plot.setSize({ width: chartWidth(box), height: 150 });
      }
    }
  });

  function render(snapshot) {
    renderWorkers(snapshot.workers);
    syncCharts(snapshot.topics);
    renderTopics(snapshot.topics, snapshot.topics_total);
    renderDeadLetters(snapshot.dead_letters);
    renderRecentJobs(snapshot.jobs);
    renderSchedules(snapshot.schedules || [], snapshot.schedules_total || 0);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  let dashboard = null;
  let dashboardDelay = 500;

  function connectDashboard() {
    const ws = openSocket("/ws/dashboard");
    dashboard = ws;
    ws.onopen = () => { dashboardDelay = 500; setConnection("live", "ok"); };
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "snapshot") render(frame);
      else if (frame.type === "error") setConnection(frame.detail, "bad");
    };
    ws.onclose = (event) => {
      setConnection(event.code === 4401 ? "wrong or missing token" : "reconnecting", "bad");
      setTimeout(connectDashboard, dashboardDelay);
      dashboardDelay = Math.min(dashboardDelay * 2, 10000);
    };
  }

  function refresh() {
    if (dashboard && dashboard.readyState === WebSocket.OPEN) dashboard.send('{"type":"refresh"}');
  }

  // ---- replay ---------------------------------------------------------------------------

  function replayButton(topic, ids, label) {
    const button = el("button", { class: "small", type: "button", text: label });
    button.addEventListener("click", async () => {
      button.disabled = true;
      const headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      const body = ids ? { ids: ids } : { all: true };
      try {
        const response = await fetch("/dlq/" + encodeURIComponent(topic) + "/replay",
          { method: "POST", headers: headers, body: JSON.stringify(body) });
        if (!response.ok) $("submit-error").textContent = "replay failed: " + response.status;
      } finally {
        refresh();
      }
    });
    return button;
  }

  // ---- jobs -----------------------------------------------------------------------------

  let jobs = null;
  let requests = 0;
  const waiting = new Map();
  const queuedFrames = [];

  function jobRow(jobId, topic) {
    let row = document.querySelector('#my-jobs tr[data-job-id="' + CSS.escape(jobId) + '"]');
    if (!row) {
      row = el("tr", { "data-job-id": jobId }, [
        el("td", { class: "mono truncate", text: jobId, title: jobId }),
        td(topic),
        el("td", { class: "status-cell" }, [badge("queued")]),
        el("td", { class: "mono truncate detail" }),
      ]);
      $("my-jobs").tBodies[0].prepend(row);
    }
    return row;
  }

  function onJobFrame(frame) {
    if (frame.type === "job_accepted") {
      waiting.delete(frame.request_id);
      jobRow(frame.job_id, frame.topic).setAttribute("data-status", "queued");
    } else if (frame.type === "job_status") {
      const row = jobRow(frame.job_id, "");
      row.setAttribute("data-status", frame.status);
      row.querySelector(".status-cell").replaceChildren(badge(frame.status));
      const detail = row.querySelector(".detail");
      if ("progress" in frame) detail.textContent = "progress: " + short(frame.progress);
      else if ("result" in frame) detail.textContent = short(frame.result);
      else if (frame.error) detail.textContent = (frame.error_type || "Error") + ": " + frame.error;
      detail.title = detail.textContent;
      if (FINAL.has(frame.status)) refresh();
    } else if (frame.type === "error") {
      $("submit-error").textContent = frame.detail;
    }
  }

  function connectJobs() {
    const ws = openSocket("/ws/jobs");
    jobs = ws;
    ws.onopen = () => { while (queuedFrames.length) ws.send(queuedFrames.shift()); };
    ws.onmessage = (event) => onJobFrame(JSON.parse(event.data));
    ws.onclose = () => {
      jobs = null;
      setTimeout(connectJobs, 1000);
    };
  }

  function sendJobFrame(frame) {
    const text = JSON.stringify(frame);
    if (jobs && jobs.readyState === WebSocket.OPEN) jobs.send(text);
    else queuedFrames.push(text);
  }

  $("submit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("submit-error").textContent = "";
    let payload;
    try {
      payload = JSON.parse($("job-payload").value);
    } catch (error) {
      $("submit-error").textContent = "payload: not valid JSON (" + error.message + ")";
      return;
    }
    const frame = {
      type: "submit_job",
      topic: $("job-topic").value.trim(),
      payload: payload,
      priority: Number($("job-priority").value || 0),
      request_id: ++requests,
    };
    const key = $("job-partition-key").value.trim();
    if (key) frame.partition_key = key;
    waiting.set(frame.request_id, frame.topic);
    sendJobFrame(frame);
  });

  connectDashboard();
  connectJobs();
  refreshCharts();
})();
