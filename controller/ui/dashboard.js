// Tideway's fleet dashboard. Everything comes from the controller that
// serves this page: /ui/api/live (its state and what the proxies report),
// the weights API for "apply", and the filter's scheduling core compiled
// for the browser (/ui/scheduler/) for the what-if. No external script.

const COLORS = ["#2e6fdb", "#e07a10", "#12805c", "#9b51e0", "#c4320a", "#0e9384", "#667085"];
const HISTORY = 120; // points (one per poll, about two minutes)
const POLL_MS = 1000;

const state = {
  live: null,
  previous: null, // the last live answer, for per-interval differences
  history: {}, // service -> [{t, share: {dest: x}, p99: {dest: ms}, requests}]
  scheduler: null, // {predict} once the module has loaded
  whatif: null, // the form's values (kept across polls)
  prediction: null,
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
};
const svgEl = (tag, attrs = {}) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
const pct = (x) => (x == null || Number.isNaN(x) ? "–" : (100 * x).toFixed(1) + "%");
const ms = (x) => (x == null || Number.isNaN(x) ? "–" : x.toFixed(1) + " ms");

function authHeaders() {
  const token = $("wi-token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function loadScheduler() {
  try {
    const mod = await import("/ui/scheduler/scheduler.js");
    await mod.default();
    state.scheduler = mod;
    $("scheduler-status").textContent = "what-if scheduler " + mod.scheduler_version() + " loaded";
  } catch (e) {
    $("scheduler-status").textContent = "what-if unavailable: the scheduler module did not load";
    $("wi-predict").disabled = true;
    console.warn("scheduler module:", e);
  }
}

async function poll() {
  try {
    const r = await fetch("/ui/api/live", { headers: authHeaders(), cache: "no-store" });
    if (!r.ok) throw new Error("live API answered " + r.status + ": " + (await r.text()));
    const live = await r.json();
    state.previous = state.live;
    state.live = live;
    record(live, state.previous);
    renderLive(live);
    if (!state.whatif) resetWhatIf();
    if (state.prediction) renderPrediction();
    $("status").textContent = "weights version " + live.version + " · updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "live data unavailable: " + e.message;
  }
}

// Requests per destination summed over proxies (cumulative counters).
function totals(live, service) {
  const out = {};
  for (const p of live.proxies) {
    const s = (p.services || {})[service] || {};
    for (const [d, v] of Object.entries(s)) out[d] = (out[d] || 0) + (v.requests || 0);
  }
  return out;
}

function services(live) {
  return live.weights.services.map((s) => s.name);
}

function record(live, previous) {
  const t = Date.now();
  for (const service of services(live)) {
    const now = totals(live, service);
    const before = previous ? totals(previous, service) : null;
    const share = {};
    let sum = 0;
    if (before) {
      for (const [d, n] of Object.entries(now)) sum += Math.max(0, n - (before[d] || 0));
      for (const [d, n] of Object.entries(now)) share[d] = sum > 0 ? Math.max(0, n - (before[d] || 0)) / sum : null;
    }
    const p99 = {};
    for (const p of live.proxies) {
      for (const [d, v] of Object.entries((p.services || {})[service] || {})) {
        if (v.p99Ms != null) p99[d] = Math.max(p99[d] || 0, v.p99Ms);
      }
    }
    const h = (state.history[service] ||= []);
    if (before) h.push({ t, share, p99, requests: sum });
    while (h.length > HISTORY) h.shift();
  }
}

// The share each destination took over the last few polls (for the
// what-if's "live" column: the real outcome next to the prediction).
function recentShare(service, points = 3) {
  const h = (state.history[service] || []).slice(-points);
  const counts = {};
  let all = 0;
  for (const p of h) {
    for (const [d, x] of Object.entries(p.share)) {
      if (x == null) continue;
      counts[d] = (counts[d] || 0) + x * p.requests;
    }
    all += p.requests;
  }
  const out = {};
  for (const [d, n] of Object.entries(counts)) out[d] = all > 0 ? n / all : null;
  return out;
}

function destinationsOf(live, service) {
  const s = live.weights.services.find((x) => x.name === service);
  return s ? s.destinations : [];
}

function renderLive(live) {
  const root = $("services");
  root.replaceChildren();
  for (const service of services(live)) {
    const dests = destinationsOf(live, service);
    const history = state.history[service] || [];
    const last = history[history.length - 1];
    const body = el("tbody");
    dests.forEach((d) => {
      let ejections = 0, p50 = null, p99 = null;
      for (const p of live.proxies) {
        const v = ((p.services || {})[service] || {})[d.name];
        if (!v) continue;
        ejections += v.ejections || 0;
        if (v.p50Ms != null) p50 = Math.max(p50 ?? 0, v.p50Ms);
        if (v.p99Ms != null) p99 = Math.max(p99 ?? 0, v.p99Ms);
      }
      body.append(
        el("tr", { "data-destination": d.name },
          el("td", {}, d.name),
          el("td", {}, (live.clusters[service] || {})[d.name] || ""),
          el("td", {}, String(d.weight)),
          el("td", {}, String(d.cost)),
          el("td", {}, d.drained ? "drained" : "in rotation"),
          el("td", { class: "share" }, pct(last ? last.share[d.name] : null)),
          el("td", {}, ms(p50)),
          el("td", {}, ms(p99)),
          el("td", {}, String(ejections)),
        ),
      );
    });
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["destination", "cluster", "weight", "cost", "state", "share (1 s)", "p50", "p99", "ejections"].map((h) => el("th", {}, h)))),
      body,
    );
    const names = dests.map((d) => d.name);
    const charts = el("div", { class: "charts" },
      chart(`share-${service}`, "traffic share", history, names, (p, d) => p.share[d], 1, pct),
      chart(`p99-${service}`, "p99 latency", history, names, (p, d) => p.p99[d], null, ms),
    );
    const legend = el("div", { class: "legend" }, ...names.map((n, i) => el("span", {}, el("i", { style: "" }), n)));
    legend.querySelectorAll("i").forEach((i, k) => (i.style.background = COLORS[k % COLORS.length]));
    root.append(el("h3", {}, service), table, legend, charts);
  }
  // Rollout per member, as `tideway run` last wrote each policy's status.
  const rollout = Object.entries(live.rollout || {});
  $("rollout-section").hidden = rollout.length === 0;
  $("rollout").tBodies[0].replaceChildren(
    ...rollout.flatMap(([policy, status]) =>
      (status.members || []).map((m) => {
        const ready = (m.conditions || []).find((c) => c.type === "Ready") || {};
        return el("tr", { "data-policy": policy, "data-member": m.name },
          el("td", {}, policy),
          el("td", {}, m.name),
          el("td", { class: ready.status === "True" ? "up" : "down" }, ready.status || "–"),
          el("td", {}, ready.reason || ""),
          el("td", {}, (m.revision || "").slice(0, 12)),
          el("td", { style: "text-align:left;white-space:normal" }, ready.message || ""),
        );
      })),
  );
  const proxies = $("proxies").tBodies[0];
  proxies.replaceChildren(
    ...live.proxies.map((p) =>
      el("tr", { "data-proxy": p.name },
        el("td", {}, p.name),
        el("td", { class: p.up ? "up" : "down", title: p.error || "" }, p.up ? "up" : "down"),
        el("td", {}, p.weightsVersion == null ? "–" : p.weightsVersion + (p.weightsVersion === live.version ? " (current)" : " (behind " + live.version + ")")),
        el("td", {}, p.configGeneration == null ? "–" : String(p.configGeneration)),
        el("td", {}, p.configRejected == null ? "0" : String(p.configRejected)),
      ),
    ),
  );
}

// A line chart of history points, one line per destination.
function chart(id, title, history, names, value, fixedMax, fmt) {
  const W = 600, H = 180, L = 48, R = 8, T = 18, B = 18;
  const svg = svgEl("svg", { class: "chart", id, viewBox: `0 0 ${W} ${H}`, "data-points": String(history.length) });
  let max = fixedMax;
  if (max == null) {
    max = 1;
    for (const p of history) for (const d of names) max = Math.max(max, value(p, d) || 0);
    max *= 1.1;
  }
  const x = (i) => L + ((W - L - R) * i) / Math.max(1, HISTORY - 1);
  const y = (v) => T + (H - T - B) * (1 - Math.min(v, max) / max);
  const label = svgEl("text", { x: L, y: 13, "font-size": 12, fill: "#667085" });
  label.textContent = title;
  svg.append(label);
  for (const f of [0, 0.5, 1]) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), stroke: "#eef0f3" }));
    const t = svgEl("text", { x: L - 4, y: y(max * f) + 4, "font-size": 10, "text-anchor": "end", fill: "#98a2b3" });
    t.textContent = fmt(max * f);
    svg.append(t);
  }
  const offset = HISTORY - history.length;
  names.forEach((d, k) => {
    let path = "";
    let pen = false;
    history.forEach((p, i) => {
      const v = value(p, d);
      if (v == null) { pen = false; return; }
      path += (pen ? "L" : "M") + x(offset + i).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    });
    if (path) svg.append(svgEl("path", { d: path, fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 2, "data-destination": d }));
  });
  return svg;
}

// ---- what-if ----

function resetWhatIf() {
  const live = state.live;
  if (!live) return;
  const select = $("wi-service");
  const current = select.value || services(live)[0];
  select.replaceChildren(...services(live).map((s) => el("option", { value: s, selected: s === current }, s)));
  const service = select.value;
  const doc = live.weights.services.find((s) => s.name === service);
  const factors = doc.factors || { latency: 0.4, load: 0.3, cost: 0.1, affinity: 0.2 };
  const history = state.history[service] || [];
  const last = history[history.length - 1];
  state.whatif = {
    service,
    factors: { ...factors },
    destinations: doc.destinations.map((d) => ({
      name: d.name,
      cluster: (live.clusters[service] || {})[d.name] || d.name,
      weight: d.weight,
      cost: d.cost,
      condition: d.drained ? "drained" : "healthy",
      latencyMs: last && last.p99[d.name] ? Math.max(1, Math.round(last.p99[d.name] / 2)) : 10,
    })),
  };
  renderWhatIfForm();
}

function renderWhatIfForm() {
  const w = state.whatif;
  const factors = $("wi-factors");
  factors.replaceChildren(
    el("span", { class: "muted" }, "factor weights"),
    ...["latency", "load", "cost", "affinity"].map((f) => {
      const input = el("input", { type: "number", min: "0", step: "0.05", value: String(w.factors[f]), id: "wi-factor-" + f });
      input.addEventListener("input", () => (w.factors[f] = Number(input.value)));
      return el("label", {}, f + " ", input);
    }),
  );
  const body = $("wi-destinations").tBodies[0];
  body.replaceChildren(
    ...w.destinations.map((d, i) => {
      const num = (key, step) => {
        const input = el("input", { type: "number", min: "0", step, value: String(d[key]), id: `wi-${key}-${i}` });
        input.addEventListener("input", () => (d[key] = Number(input.value)));
        return input;
      };
      const condition = el("select", { id: `wi-condition-${i}` },
        ...[["healthy", "healthy"], ["slow", "10× slower"], ["failing", "failing (503)"], ["drained", "drained"]].map(
          ([v, label]) => el("option", { value: v, selected: d.condition === v }, label)),
      );
      condition.addEventListener("change", () => (d.condition = condition.value));
      return el("tr", {}, el("td", {}, d.name), el("td", {}, d.cluster), el("td", {}, num("weight", "1")),
        el("td", {}, num("cost", "0.1")), el("td", {}, condition), el("td", {}, num("latencyMs", "1")));
    }),
  );
}

// The scenario the engine runs for the form's values (the JSON the native
// core takes too: `tideway_filter::whatif::Scenario`).
function scenarioFromForm() {
  const w = state.whatif;
  return {
    service: w.service,
    weights: {
      version: state.live.version,
      services: [{
        name: w.service,
        factors: { ...w.factors },
        destinations: w.destinations.map((d) => ({ name: d.name, weight: d.weight, cost: d.cost, drained: d.condition === "drained" })),
      }],
    },
    destinations: w.destinations.map((d) => ({
      name: d.name,
      latencyMs: d.condition === "slow" ? d.latencyMs * 10 : d.latencyMs,
      errorRate: d.condition === "failing" ? 1 : 0,
    })),
    connections: Number($("wi-connections").value) || 16,
    seed: Number($("wi-seed").value) || 0,
  };
}

function predict() {
  $("wi-error").textContent = "";
  if (!state.scheduler) return;
  const w = state.whatif;
  const config = state.live.configs[w.service];
  if (!config) {
    $("wi-error").textContent = "no plugin config for " + w.service;
    return;
  }
  const configJson = JSON.stringify(config);
  const scenarioJson = JSON.stringify(scenarioFromForm());
  try {
    const json = state.scheduler.predict(configJson, scenarioJson);
    state.prediction = { json, value: JSON.parse(json), configJson, scenarioJson, at: Date.now() };
    renderPrediction();
  } catch (e) {
    state.prediction = null;
    $("whatif-result").replaceChildren();
    $("wi-error").textContent = String(e && e.message ? e.message : e);
  }
}

function renderPrediction() {
  const p = state.prediction;
  const v = p.value;
  const live = recentShare(v.service);
  const result = $("whatif-result");
  result.setAttribute("data-prediction", p.json);
  result.setAttribute("data-config", p.configJson);
  result.setAttribute("data-scenario", p.scenarioJson);
  result.replaceChildren(
    el("h3", {}, `Predicted for ${v.service}: p50 ${ms(v.p50Ms)}, p99 ${ms(v.p99Ms)}, success ${pct(v.successRate)}, ${v.requestsPerSecond.toFixed(0)} req/s`),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["destination", "predicted share", "predicted p99", "live share (last 3 s)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...v.destinations.map((d) =>
        el("tr", { "data-destination": d.name },
          el("td", {}, d.name),
          el("td", { class: "predicted" }, pct(d.share)),
          el("td", {}, ms(d.p99Ms)),
          el("td", { class: "live" }, pct(live[d.name])),
        ))),
    ),
    v.meshDefaultShare > 0 ? el("p", { class: "note" }, "left to the mesh's default route: " + pct(v.meshDefaultShare)) : "",
  );
}

// Apply: the differences between the form and the published document,
// through the weights API (the server checks the token).
async function apply() {
  $("wi-error").textContent = "";
  const w = state.whatif;
  const doc = state.live.weights.services.find((s) => s.name === w.service);
  const writes = [];
  const f = doc.factors || {};
  if (["latency", "load", "cost", "affinity"].some((k) => f[k] !== w.factors[k])) {
    writes.push(["/v1/factors", { service: w.service, factors: { ...w.factors } }]);
  }
  for (const d of w.destinations) {
    const now = doc.destinations.find((x) => x.name === d.name);
    if (now.weight !== d.weight || now.cost !== d.cost) {
      writes.push(["/v1/weight", { service: w.service, destination: d.name, weight: d.weight, cost: d.cost }]);
    }
    const drained = d.condition === "drained";
    if (now.drained !== drained) {
      writes.push(["/v1/drain", { cluster: d.cluster, service: w.service, drained }]);
    }
  }
  if (!writes.length) {
    $("wi-error").textContent = "nothing to apply: the form matches what is published";
    return;
  }
  for (const [path, body] of writes) {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    if (!r.ok) {
      $("wi-error").textContent = `${path} answered ${r.status}: ${await r.text()}`;
      return;
    }
  }
  $("wi-error").textContent = "";
  $("status").textContent = "applied " + writes.length + " change(s)";
  await poll();
}

$("wi-service").addEventListener("change", () => { state.whatif = null; state.prediction = null; resetWhatIf(); });
$("wi-predict").addEventListener("click", predict);
$("wi-reset").addEventListener("click", resetWhatIf);
$("wi-apply").addEventListener("click", () => apply().catch((e) => ($("wi-error").textContent = String(e))));

loadScheduler();
poll();
setInterval(poll, POLL_MS);
