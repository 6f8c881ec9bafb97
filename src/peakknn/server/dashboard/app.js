// peakknn dashboard: plain JS, no build step, talks only to the server that serves it.
// Stats (GET /stats) every 2 s; a search by stored id (points/get, then search) or by a pasted vector.
"use strict";

const KEY_STORE = "peakknn-api-key"; // sessionStorage: the key lives as long as the tab
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

// One request to the API; resolves to the JSON body or throws an Error with the server's message.
async function api(method, path, body) {
  const headers = {};
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const msg = (data && data.error) || r.statusText;
    const err = new Error(r.status === 401 ? "API key needed or wrong: " + msg : msg + " (HTTP " + r.status + ")");
    err.status = r.status;
    throw err;
  }
  return data;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function fmtMs(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(2) + " ms"; }
function fmtTime(t) {
  if (t === null || t === undefined || t === "") return "never";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t); // unix seconds or ISO text
  return isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function emptyRow(tbody, cols, text) {
  const tr = document.createElement("tr");
  const td = cell(tr, text, "muted");
  td.colSpan = cols;
  tbody.appendChild(tr);
}
function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "bad");
}

function renderCollections(cols) {
  const body = $("collections-body");
  body.replaceChildren();
  const names = Object.keys(cols).sort();
  if (!names.length) emptyRow(body, 6, "no collections");
  for (const name of names) {
    const c = cols[name];
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    cell(tr, name, "col-name");
    cell(tr, String(c.count), "col-count");
    cell(tr, String(c.dim), "col-dim");
    cell(tr, c.metric, "col-metric");
    cell(tr, c.index, "col-index");
    cell(tr, fmtBytes(c.memory_bytes), "col-memory");
    body.appendChild(tr);
  }
  // the search box's choice of collection, keeping the current selection
  const sel = $("search-collection");
  const current = sel.value;
  if (names.join("\n") !== Array.from(sel.options, (o) => o.value).join("\n")) {
    sel.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(current)) sel.value = current;
  }
}

// Buckets "1", "2-3", "4-7", ..., "64+" in numeric order.
function bucketStart(label) { return parseInt(label, 10); }

function renderBatcher(b) {
  $("queue-depth").textContent = b.queue_depth ?? "–";
  $("latency-p50").textContent = fmtMs(b.latency_ms && b.latency_ms.p50);
  $("latency-p99").textContent = fmtMs(b.latency_ms && b.latency_ms.p99);
  $("batches").textContent = b.batches ?? "–";
  $("requests").textContent = b.requests ?? "–";
  const sizes = b.batch_sizes || {};
  const labels = Object.keys(sizes).sort((a, b2) => bucketStart(a) - bucketStart(b2));
  const most = Math.max(1, ...labels.map((l) => sizes[l]));
  const hist = $("batch-histogram");
  hist.replaceChildren();
  for (const label of labels) {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.bucket = label;
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (100 * sizes[label] / most).toFixed(1) + "%";
    const n = document.createElement("span");
    n.className = "bar-count";
    n.textContent = String(sizes[label]);
    row.append(name, bar, n);
    hist.appendChild(row);
  }
}

function renderWal(wal) {
  const body = $("wal-body");
  body.replaceChildren();
  const names = Object.keys(wal).sort();
  if (!names.length) emptyRow(body, 4, "–");
  for (const name of names) {
    const w = wal[name];
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    cell(tr, name, "wal-name");
    cell(tr, fmtBytes(w.bytes), "wal-bytes");
    cell(tr, String(w.seq ?? "–"), "wal-seq");
    cell(tr, fmtTime(w.last_snapshot), "wal-snapshot");
    body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const stats = await api("GET", "/stats");
    renderCollections(stats.collections || {});
    renderBatcher(stats.batcher || {});
    renderWal(stats.wal || {});
    setStatus("connected", true);
    $("last-refresh").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    setStatus(e.message, false);
  }
}

// A pasted vector: JSON "[0.1, 0.2]" or numbers separated by spaces / commas.
function parseVector(text) {
  const t = text.trim();
  const values = t.startsWith("[") ? JSON.parse(t) : t.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!Array.isArray(values) || !values.length || values.some((v) => typeof v !== "number" || !isFinite(v))) {
    throw new Error("the vector must be a list of finite numbers");
  }
  return values;
}

async function runSearch(event) {
  event.preventDefault();
  const table = $("search-results");
  const err = $("search-error");
  table.dataset.state = "running";
  err.hidden = true;
  $("search-results-body").replaceChildren();
  $("search-latency").textContent = "";
  const name = $("search-collection").value;
  const k = parseInt($("search-k").value, 10) || 10;
  const path = "/collections/" + encodeURIComponent(name);
  try {
    if (!name) throw new Error("no collection to search");
    let vector, note = "";
    if ($("search-mode-vector").checked) {
      vector = parseVector($("search-vector").value);
    } else {
      const id = parseInt($("search-id").value, 10);
      if (!(id >= 0)) throw new Error("give a stored id");
      const t0 = performance.now();
      const got = await api("POST", path + "/points/get", { ids: [id], with_vectors: true });
      note = " (get " + (performance.now() - t0).toFixed(1) + " ms)";
      if (!got.points.length) throw new Error("id " + id + " is not stored in " + name);
      vector = got.points[0].vector;
    }
    const t1 = performance.now();
    const res = await api("POST", path + "/search", { vectors: [vector], k });
    const ms = performance.now() - t1;
    const r = res.results[0];
    const body = $("search-results-body");
    r.ids.forEach((id, i) => {
      const tr = document.createElement("tr");
      tr.dataset.id = String(id);
      cell(tr, String(i + 1), "result-rank");
      cell(tr, String(id), "result-id");
      cell(tr, r.scores[i] === null ? "–" : Number(r.scores[i]).toFixed(5), "result-score");
      body.appendChild(tr);
    });
    $("search-latency").textContent = "search " + ms.toFixed(1) + " ms" + note + ", " + r.ids.length + " results";
    table.dataset.state = "done";
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
    table.dataset.state = "error";
  }
}

function init() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    refresh();
  });
  $("search-form").addEventListener("submit", runSearch);
  $("search-id").addEventListener("focus", () => { $("search-mode-id").checked = true; });
  $("search-vector").addEventListener("focus", () => { $("search-mode-vector").checked = true; });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", init);
