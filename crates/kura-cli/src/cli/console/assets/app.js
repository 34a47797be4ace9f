// The kura console's page. It talks only to the local console that served it, with the access
// token from the address it was opened with. Every value from a contract, the enclave or a
// result is put in the page as text (textContent), never as markup: result values come from
// other parties' data.

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const status = document.getElementById("status");

// The token travels in the fragment, which the browser never sends anywhere; keep it for this
// tab and take it out of the address bar.
(function takeToken() {
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) {
    sessionStorage.setItem("kura-token", m[1]);
    history.replaceState(null, "", location.pathname + "#contract");
  }
})();

class ApiError extends Error {
  constructor(status, error) {
    super(error.reason || `HTTP ${status}`);
    this.status = status;
    this.rule = error.rule;
    this.check = error.check;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${sessionStorage.getItem("kura-token") || ""}`, ...extra };
}

async function api(path, body) {
  const init = body === undefined
    ? { headers: headers() }
    : { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
  const resp = await fetch(path, init);
  const value = await resp.json().catch(() => ({ error: { reason: `HTTP ${resp.status}` } }));
  if (!resp.ok) throw new ApiError(resp.status, value.error || {});
  return value;
}

// el("p", {class: "x"}, "text", child, ...): an element with attributes and children; strings
// become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function say(text) {
  status.textContent = text;
}

function failure(e) {
  const box = el("div", { class: "notice refused", role: "alert" },
    el("p", {}, el("strong", {}, "Refused: "), e.message));
  if (e.rule) box.append(el("p", {}, "Rule: ", el("code", {}, e.rule)));
  if (e.check) box.append(el("p", {}, "Failed check: ", e.check));
  return box;
}

function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}

function dl(pairs) {
  return el("dl", {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function page(title, ...children) {
  main.replaceChildren(el("h1", {}, title),
    ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  document.title = `${title} · kura console`;
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

let session = null;

// ---- Contract -------------------------------------------------------------------------------

const roleWords = {
  identifier: "identifier: joined and counted, never output",
  dimension: "dimension: grouped, filtered and output",
  measure: "measure: only inside aggregates",
};

async function contractPage() {
  const c = await api("/api/contract");
  const signed = c.signatures.filter((s) => s.status === "valid").length;
  page(`Contract ${c.name}`,
    el("p", { class: "lead" }, c.purpose),
    dl([["Contract id", el("code", {}, c.id)], ["You are", c.me],
      ["Signatures", `${signed} of ${c.parties.length} parties signed`]]),
    section("Parties", el("table", {},
      el("caption", {}, "Each party, its roles and whether it signed these exact bytes"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Party"), el("th", { scope: "col" }, "Roles"),
        el("th", { scope: "col" }, "Key fingerprint"), el("th", { scope: "col" }, "Signature"))),
      el("tbody", {}, c.parties.map((p) => {
        const sig = c.signatures.find((s) => s.party === p.name) || {};
        return el("tr", {}, el("td", {}, p.name), el("td", {}, p.roles.join(", ")),
          el("td", {}, el("code", {}, p.fingerprint)),
          el("td", { class: sig.status === "valid" ? "ok" : "bad" },
            sig.status === "valid" ? "signed" : `${sig.status}${sig.reason ? `: ${sig.reason}` : ""}`));
      })))),
    section("Datasets", c.datasets.map((d) => el("div", { class: "card" },
      el("h3", {}, d.name),
      el("p", {}, `Provided by ${d.provider}. Each row's person is ${d.privacy_unit}; the rules count people, not rows.`),
      el("ul", {}, d.columns.map((col) =>
        el("li", {}, el("code", {}, col.name), ` (${col.type}): ${roleWords[col.role] || col.role}`)))))),
    section("Analyses", c.analyses.length === 0 ? el("p", {}, "None: only ad-hoc queries.") :
      c.analyses.map((a) => el("div", { class: "card" },
        el("h3", {}, a.name),
        el("p", {}, `${a.kind || "statistics"}; results go to ${a.receivers.join(", ")}`,
          a.differentially_private ? "; differentially private" : ""),
        a.sql ? el("pre", {}, a.sql) : null))),
    c.adhoc ? section("Ad-hoc queries",
      el("p", {}, `${c.adhoc.analysts.join(", ")} may ask their own questions; answers go to ${c.adhoc.receivers.join(", ")}.`),
      el("p", {}, `Aggregates answered: ${c.adhoc.aggregates.join(", ")}.`),
      c.adhoc.differentially_private ? el("p", {}, "Every answer is differentially private and spends budget.") : null) : null,
    section("Output rules",
      el("p", {}, `Any group or aggregate resting on fewer than ${c.min_group_size} people is suppressed; only the number of suppressed groups is reported.`),
      c.min_pooled_datasets > 1 ? el("p", {}, `Where datasets are pooled with UNION ALL, every group must rest on rows of at least ${c.min_pooled_datasets} of them, so that no figure is one provider's.`) : null,
      c.privacy_dp ? el("p", {}, `Differential privacy: a total budget of ε = ${c.privacy_dp.epsilon}, δ = ${c.privacy_dp.delta}, split ${c.privacy_dp.split || "per receiver"}.`) : null),
    section("Retention", el("p", {}, `The data is deleted ${c.retention}.`)),
    section("Platforms", el("p", {}, `The enclave may run on: ${c.platforms.join(", ")}.`),
      c.platforms.includes("simulated") ? el("p", { class: "notice warn" }, "This contract accepts the simulated platform, which protects nothing.") : null),
    c.warnings && c.warnings.length ? section("Warnings", el("ul", {}, c.warnings.map((w) => el("li", {}, w)))) : null,
  );
}

// ---- Attestation ----------------------------------------------------------------------------

async function attestationPage() {
  const button = el("button", { type: "button" }, "Attest again");
  const out = el("div");
  page("Attestation", el("p", {}, `The enclave at ${session.enclave}, checked against the contract before every action.`), button, out);
  const attest = async () => {
    out.replaceChildren(el("p", {}, "Verifying the enclave's evidence…"));
    const a = await api("/api/attestation");
    const failedAt = a.checks.indexOf(a.check);
    const checks = el("ol", { class: "checks" }, a.checks.map((name, i) => {
      const state = a.verdict === "accepted" ? "passed" : i < failedAt ? "passed" : i === failedAt ? "failed" : "not reached";
      return el("li", { class: state.replace(" ", "-") }, `${name}: ${state}`);
    }));
    if (a.verdict === "accepted") {
      showSimulated(a);
      out.replaceChildren(
        el("div", { class: "notice ok", role: "status" }, el("strong", {}, "Accepted. "),
          `The enclave runs the measurement the contract pins, on ${a.platform}.`),
        a.simulated ? el("div", { class: "notice warn" }, el("strong", {}, "Simulated platform. "), a.warning) : null,
        checks,
        dl([["Platform", a.platform], ["Measurement", el("code", {}, a.measurement)], ["Signed by", a.signer],
          ["Debug mode", a.debug ? "on" : "off"], ["TCB status", a.tcb_status],
          ["Enclave key", el("code", {}, a.enclave_key)], ["kura version", a.kura_version]]));
    } else {
      out.replaceChildren(
        el("div", { class: "notice refused", role: "alert" }, el("strong", {}, "Refused. "),
          a.check ? `Failed check: ${a.check}. ` : "", a.reason),
        checks,
        el("p", {}, "Nothing is sent to an enclave that fails a check."));
    }
    say(`attestation ${a.verdict}`);
  };
  button.addEventListener("click", () => busy(button, attest).catch((e) => out.replaceChildren(failure(e))));
  await attest();
}

function showSimulated(a) {
  if (a.simulated) {
    banner.hidden = false;
    banner.className = "notice warn";
    banner.textContent = `Simulated platform: ${a.warning}`;
  }
}

// ---- Upload ---------------------------------------------------------------------------------

async function uploadPage() {
  const c = await api("/api/contract");
  const mine = [...c.datasets.filter((d) => d.provider === c.me).map((d) => d.name),
    ...(c.models || []).filter((m) => m.provider === c.me).map((m) => m.name)];
  if (mine.length === 0) {
    page("Upload", el("p", {}, `${c.me} provides no dataset in this contract.`));
    return;
  }
  const dataset = el("select", { id: "dataset" }, mine.map((n) => el("option", { value: n }, n)));
  const file = el("input", { id: "file", type: "file", accept: ".csv,.parquet,.pq,.onnx", required: true });
  const append = el("input", { id: "append-batch", type: "checkbox" });
  const button = el("button", { type: "submit" }, "Encrypt and upload");
  const bar = el("progress", { id: "upload-progress", max: 1, value: 0 });
  const phase = el("p", { id: "upload-phase" }, "");
  const out = el("div");
  const form = el("form", {},
    el("p", {}, el("label", { for: "dataset" }, "Dataset"), dataset),
    el("p", {}, el("label", { for: "file" }, "File (CSV with a header line, Parquet, or the pinned ONNX model)"), file),
    el("p", { class: "inline" }, append, el("label", { for: "append-batch" }, "Add as a new batch to a dataset already uploaded")),
    button);
  page("Upload", el("p", {}, "The file is encrypted on this machine, to the attested enclave's key, and streamed to it. It is never sent in the clear."),
    form, el("div", { class: "progress" }, el("label", { for: "upload-progress" }, "Progress"), bar, phase), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!file.files.length) {
      out.replaceChildren(failure(new Error("choose a file first")));
      return;
    }
    busy(button, async () => {
      out.replaceChildren();
      const r = await send(file.files[0], dataset.value, append.checked, bar, phase);
      out.replaceChildren(el("div", { class: "notice ok", role: "status" },
        el("strong", {}, `Uploaded ${r.dataset}: `),
        r.model ? "the model file" : `${r.rows} rows`,
        `, ${r.ciphertext_bytes} encrypted bytes. Receipt `, el("code", {}, r.receipt)));
      say(`uploaded ${r.dataset}`);
    }).catch((e) => out.replaceChildren(failure(e)));
  });
}

// Sends the file to the console (progress from the browser), then follows the console's
// encryption and upload to the enclave (progress from the console).
function send(f, dataset, append, bar, phase) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const q = new URLSearchParams({ dataset, name: f.name, append: String(append) });
    xhr.open("POST", `/api/upload?${q}`);
    xhr.setRequestHeader("Authorization", headers().Authorization);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    phase.textContent = "Handing the file to the console…";
    let poll = null;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
    };
    xhr.upload.onload = () => {
      phase.textContent = "Encrypting and uploading to the enclave…";
      bar.value = 0;
      poll = setInterval(async () => {
        const p = await api("/api/upload/progress").catch(() => null);
        if (p && p.active && p.total) { bar.max = p.total; bar.value = p.done; }
      }, 200);
    };
    xhr.onload = () => {
      clearInterval(poll);
      const value = JSON.parse(xhr.responseText || "{}");
      if (xhr.status === 200) {
        bar.max = 1; bar.value = 1;
        phase.textContent = "Done.";
        resolve(value);
      } else {
        phase.textContent = "Stopped.";
        reject(new ApiError(xhr.status, value.error || {}));
      }
    };
    xhr.onerror = () => { clearInterval(poll); reject(new Error("the console did not answer")); };
    xhr.send(f);
  });
}

// ---- Run, query and results -----------------------------------------------------------------

async function runPage() {
  const c = await api("/api/contract");
  if (c.analyses.length === 0) {
    page("Run an analysis", el("p", {}, "The contract names no analysis: ask ad-hoc questions instead."));
    return;
  }
  const analysis = el("select", { id: "analysis" }, c.analyses.map((a) => el("option", { value: a.name }, a.name)));
  const sql = el("pre", { id: "analysis-sql" });
  const show = () => { sql.textContent = (c.analyses.find((a) => a.name === analysis.value) || {}).sql || ""; };
  analysis.addEventListener("change", show);
  show();
  const button = el("button", { type: "submit" }, "Run");
  const out = el("div", { id: "run-out" });
  const form = el("form", {}, el("p", {}, el("label", { for: "analysis" }, "Analysis"), analysis), sql, button);
  page("Run an analysis", el("p", {}, "The enclave runs the contract's analysis on every provider's data and seals the result to its receivers."), form, out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(button, async () => {
      out.replaceChildren(el("p", {}, "Running…"));
      out.replaceChildren(outcome(await api("/api/run", { analysis: analysis.value })));
      say("run finished");
    }).catch((e) => out.replaceChildren(failure(e)));
  });
}

async function queryPage() {
  const c = await api("/api/contract");
  if (!c.adhoc) {
    page("Ad-hoc query", el("p", {}, "The contract allows no ad-hoc queries."));
    return;
  }
  const sql = el("textarea", { id: "sql", rows: 6, spellcheck: "false" });
  const epsilon = el("input", { id: "epsilon", type: "number", step: "any", min: "0" });
  const check = el("button", { type: "button", id: "check" }, "Check against the rules");
  const run = el("button", { type: "submit" }, "Run query");
  const verdict = el("div", { id: "verdict", "aria-live": "polite" });
  const out = el("div", { id: "query-out" });
  const form = el("form", {},
    el("p", {}, el("label", { for: "sql" }, "SQL"), sql),
    c.adhoc.differentially_private ? el("p", {}, el("label", { for: "epsilon" }, "ε to spend (empty: the contract's default)"), epsilon) : null,
    el("p", { class: "buttons" }, check, run));
  page("Ad-hoc query",
    el("p", {}, `Answers go to ${c.adhoc.receivers.join(", ")}. The check runs the contract's rules on this machine: nothing is sent and no data is read.`),
    form, verdict, out);
  const body = () => ({ sql: sql.value, epsilon: epsilon.value === "" ? null : Number(epsilon.value) });
  const explain = async () => {
    const v = await api("/api/check", body());
    if (v.allowed) {
      verdict.replaceChildren(el("div", { class: "notice ok" }, el("strong", {}, "Would be answered. "),
        v.dp ? `It spends ε = ${v.dp.epsilon} and δ = ${v.dp.delta} of each receiver's budget.`
          : `Groups resting on fewer than ${v.min_group_size} people are suppressed.`));
    } else {
      verdict.replaceChildren(el("div", { class: "notice refused" }, el("strong", {}, "Would be refused"),
        v.rule ? [" by rule ", el("code", {}, v.rule)] : "", `: ${v.reason}`));
    }
    return v;
  };
  check.addEventListener("click", () => busy(check, explain).catch((e) => verdict.replaceChildren(failure(e))));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(run, async () => {
      out.replaceChildren(el("p", {}, "Running…"));
      out.replaceChildren(outcome(await api("/api/query", body())));
      say("query finished");
    }).catch((e) => out.replaceChildren(failure(e)));
  });
}

function outcome(r) {
  const box = el("div");
  if (r.result) box.append(resultCard(r.result));
  else box.append(el("div", { class: "notice ok", role: "status" }, `Run ${r.run_id} finished; its result is sealed to ${r.receivers.join(", ")}.`));
  if (r.deleted && r.deleted.length) box.append(el("p", { class: "notice warn" }, `Deleted after the run, as the contract says: ${r.deleted.join(", ")}.`));
  return box;
}

async function resultsPage() {
  page("Results", el("p", {}, "Fetching and verifying the results sealed to you…"));
  const tables = await api("/api/results");
  page("Results",
    el("p", {}, "Each result was decrypted on this machine and its enclave signature checked."),
    tables.length === 0 ? el("p", {}, "No results for you yet.") : tables.slice().reverse().map(resultCard));
}

const numeric = new Set(["int64", "float64"]);

function resultCard(t) {
  const types = t.types && t.types.length ? t.types : t.columns.map((_, i) =>
    t.rows.every((r) => typeof r[i] === "number" || r[i] === null) ? "float64" : "utf8");
  const table = el("table", { class: "result" },
    el("caption", {}, `${t.analysis}: ${t.rows.length} rows`),
    el("thead", {}, el("tr", {}, t.columns.map((col) => el("th", { scope: "col" }, col)))),
    el("tbody", {}, t.rows.map((r) => el("tr", {}, r.map((v, i) =>
      el("td", { class: numeric.has(types[i]) ? "num" : null }, v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : v))))));
  const downloads = el("p", { class: "buttons" },
    ["csv", "parquet", "json"].concat(t.onnx ? ["onnx"] : []).map((f) =>
      el("button", { type: "button", class: "secondary", "data-format": f, onclick: (ev) => download(ev.target, t.run_id, f) },
        `Download ${{ csv: "CSV", parquet: "Parquet", json: "JSON", onnx: "the ONNX model" }[f]}`)));
  return el("article", { class: "card result-card", "data-run": t.run_id },
    el("h2", {}, t.analysis),
    dl([["Run", el("code", {}, t.run_id)], ["Question", t.sql ? el("code", {}, t.sql) : null]]),
    t.suppressed_groups ? el("p", { class: "notice warn" }, `${t.suppressed_groups} groups were suppressed: they rest on fewer people, or fewer pooled datasets, than the contract requires.`) : null,
    t.dp ? el("p", { class: "notice" }, `Differentially private: ε = ${t.dp.epsilon}, δ = ${t.dp.delta} spent; each number carries noise.`) : null,
    chart(t, types), el("div", { class: "scroll" }, table), downloads);
}

async function download(button, run, format) {
  await busy(button, async () => {
    const resp = await fetch(`/api/results/${encodeURIComponent(run)}/${format}`, { headers: headers() });
    if (!resp.ok) throw new ApiError(resp.status, (await resp.json()).error || {});
    const name = (resp.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", { href: url, download: name ? name[1] : `result.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }).catch((e) => button.after(failure(e)));
}

// A bar chart of the first numeric column by the first label column, or a line chart when the
// labels are ordered numbers or dates. Nothing when the result has no number to draw.
function chart(t, types) {
  const label = types.findIndex((ty) => !numeric.has(ty));
  // The labels, or without a label column the first column, are the x axis; the value drawn is
  // the first number after it, else the first before it.
  const x = label < 0 ? 0 : label;
  const numbers = types.map((_, i) => i).filter((i) => numeric.has(types[i]) && i !== x);
  const value = numbers.find((i) => i > x) ?? (numbers.length ? numbers[0] : -1);
  const rows = t.rows.filter((r) => typeof r[value] === "number").slice(0, 40);
  if (value < 0 || rows.length < 2) return null;
  const ordered = label < 0 || types[label] === "date";
  const svgNS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const n = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = String(text);
    return n;
  };
  const max = Math.max(...rows.map((r) => Math.abs(r[value])), 1e-9);
  const title = `${ordered ? "Line" : "Bar"} chart of ${t.columns[value]} by ${t.columns[x]}`;
  if (!ordered) {
    const rowH = 22, left = 200, width = 640;
    const svg = s("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 10}`, role: "img", "aria-label": title, class: "chart bar" });
    svg.append(s("title", {}, title));
    rows.forEach((r, i) => {
      const w = Math.max(1, (Math.abs(r[value]) / max) * (width - left - 80));
      const y = i * rowH + 5;
      svg.append(s("text", { x: left - 6, y: y + 14, "text-anchor": "end" }, String(r[x]).slice(0, 28)));
      svg.append(s("rect", { x: left, y: y + 2, width: w, height: rowH - 6, class: "bar" }));
      svg.append(s("text", { x: left + w + 4, y: y + 14 }, formatNumber(r[value])));
    });
    return el("figure", {}, svg, el("figcaption", {}, title));
  }
  const sorted = rows.slice().sort((a, b) => (a[x] < b[x] ? -1 : a[x] > b[x] ? 1 : 0));
  const width = 640, height = 240, pad = 40;
  const min = Math.min(0, ...sorted.map((r) => r[value]));
  const span = Math.max(...sorted.map((r) => r[value])) - min || 1;
  const points = sorted.map((r, i) => [pad + (i / (sorted.length - 1)) * (width - 2 * pad), height - pad - ((r[value] - min) / span) * (height - 2 * pad)]);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "chart line" });
  svg.append(s("title", {}, title));
  svg.append(s("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "line" }));
  points.forEach(([px, py], i) => svg.append(s("circle", { cx: px, cy: py, r: 3 })));
  svg.append(s("text", { x: pad, y: height - 10 }, String(sorted[0][x])));
  svg.append(s("text", { x: width - pad, y: height - 10, "text-anchor": "end" }, String(sorted[sorted.length - 1][x])));
  return el("figure", {}, svg, el("figcaption", {}, title));
}

function formatNumber(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(3);
}

// ---- Budget, audit, report ------------------------------------------------------------------

async function budgetPage() {
  page("Privacy budget", el("p", {}, "Replaying the verified log…"));
  const b = await api("/api/budget");
  if (b.dp === false) {
    page("Privacy budget", el("p", {}, "The contract has no differential privacy, so there is no budget: answers are protected by the threshold rule."));
    return;
  }
  page("Privacy budget",
    el("p", {}, `Each account may spend ε = ${b.epsilon} and δ = ${b.delta} in total (split ${b.split || "per receiver"}). Replayed from the verified log, not taken from the host's word.`),
    el("table", {}, el("caption", {}, "Spent and remaining per account"),
      el("thead", {}, el("tr", {}, ["Account", "Releases", "ε spent", "ε remaining", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, b.accounts.map((a) => el("tr", {},
        el("td", {}, a.name), el("td", { class: "num" }, a.releases),
        el("td", { class: "num" }, formatNumber(a.spent_epsilon)),
        el("td", { class: "num" }, formatNumber(a.remaining_epsilon)),
        el("td", {}, el("meter", { min: 0, max: b.epsilon, value: a.remaining_epsilon, "aria-label": `ε remaining for ${a.name}` })))))));
}

async function auditPage() {
  page("Audit log", el("p", {}, "Fetching and verifying the log…"));
  const a = await api("/api/audit");
  if (!a.valid) {
    page("Audit log", el("div", { class: "notice refused", role: "alert" }, el("strong", {}, "The log does not verify. "), a.reason));
    return;
  }
  const deletions = a.events.filter((e) => e.deletion);
  page("Audit log",
    el("div", { class: "notice ok", role: "status" }, el("strong", {}, "Verified. "),
      `${a.entries} entries, chained, signed by the attested enclave key, consistent with what you saw before; ${a.enclave_starts} enclave start(s).`),
    dl([["Head", el("code", {}, a.head)], ["Merkle root", el("code", {}, a.root)]]),
    section("Deletion records", deletions.length === 0 ? el("p", {}, "No deletion yet.") :
      el("ul", { class: "deletions" }, deletions.map((e) => el("li", {}, el("time", { datetime: e.time }, e.time), ` #${e.seq}: ${e.text}`)))),
    section("Timeline", el("ol", { class: "timeline" }, a.events.map((e) =>
      el("li", { class: e.deletion ? "deletion" : null, "data-type": e.event.type },
        el("time", { datetime: e.time }, e.time), el("span", { class: "seq" }, `#${e.seq}`), e.text)))));
}

async function reportPage() {
  page("Transparency report", el("p", {}, "Building the report from the verified log…"));
  const r = await api("/api/report");
  const save = el("button", { type: "button", class: "secondary", onclick: () => {
    const url = URL.createObjectURL(new Blob([r.markdown], { type: "text/markdown" }));
    const a = el("a", { href: url, download: "transparency.md" });
    document.body.append(a); a.click(); a.remove();
  } }, "Download as Markdown");
  page("Transparency report", el("p", {}, "Who provided and received what, for which purpose, which analyses ran when, and when the data was deleted: built from the verified log."),
    save, el("div", { class: "report" }, markdown(r.markdown)));
}

// The report's Markdown as headings, lists and paragraphs (text only).
function markdown(text) {
  const out = [];
  let list = null;
  for (const line of text.split("\n")) {
    const h = line.match(/^(#{1,3}) (.*)/);
    const li = line.match(/^\s*[-*] (.*)/);
    if (li) {
      if (!list) { list = el("ul"); out.push(list); }
      list.append(el("li", {}, li[1].replace(/\*\*|`/g, "")));
      continue;
    }
    list = null;
    if (h) out.push(el(`h${h[1].length + 1}`, {}, h[2]));
    else if (line.trim()) out.push(el("p", {}, line.replace(/\*\*|`/g, "")));
  }
  return out;
}

// ---- Navigation -----------------------------------------------------------------------------

const pages = {
  contract: contractPage, attestation: attestationPage, upload: uploadPage, run: runPage,
  query: queryPage, results: resultsPage, budget: budgetPage, audit: auditPage, report: reportPage,
};

async function show() {
  const name = location.hash.slice(1) || "contract";
  const render = pages[name] || contractPage;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (!session) {
      session = await api("/api/session");
      document.getElementById("who").textContent = `${session.party} · ${session.contract.name}`;
    }
    if (!session.signed && name !== "contract") {
      page("Not signed yet", el("div", { class: "notice refused", role: "alert" }, session.unsigned_reason));
    } else {
      await render();
    }
  } catch (e) {
    main.replaceChildren(el("h1", {}, "Something went wrong"), failure(e));
  }
  main.dataset.page = name;
  main.dataset.ready = "true";
  main.querySelector("h1")?.setAttribute("tabindex", "-1");
  if (document.activeElement && document.activeElement.closest("nav")) main.querySelector("h1")?.focus();
}

window.addEventListener("hashchange", () => { main.dataset.ready = "false"; show(); });
// A click on the page already shown fetches it afresh (results, budget and log change).
for (const a of document.querySelectorAll("nav a")) {
  a.addEventListener("click", () => {
    if (a.getAttribute("href") === location.hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  });
}
show();
