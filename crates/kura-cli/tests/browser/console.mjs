// Drives kura's console through every scenario in Debian's headless Chromium, as each party
// would: read the contract, check the attestation, upload, run, read and download results,
// ask ad-hoc questions, read the budget, the audit log and the transparency report. Also checks
// a refused attestation, a missing token, keyboard navigation, labels and contrast.
//
// Run by the e2e test `console::console_in_chromium`, which starts the rooms and writes the plan:
//   node console.mjs PLAN.json SCREENSHOT_DIR
// Exits non-zero on the first failed check, saying which.

import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [planFile, shots] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planFile, "utf8"));
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.KURA_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const errors = [];

async function open(url) {
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`${url}: ${e.message}`));
  // Refusals are HTTP errors the page shows (and the checks below read): Chromium's own line
  // about them is not a script error.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(`${url}: ${m.text()}`);
  });
  page.on("dialog", (d) => { errors.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  await page.goto(url);
  await ready(page);
  return page;
}

async function ready(page) {
  await page.waitForSelector('main[data-ready="true"]', { timeout: 120000 });
}

async function go(page, name) {
  // Opening the page already shown renders it afresh, as clicking its link does.
  await page.evaluate((n) => {
    document.querySelector("main").dataset.ready = "false";
    if (location.hash === `#${n}`) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else location.hash = n;
  }, name);
  await ready(page);
  check(await page.evaluate(() => !document.querySelector("main h1")?.textContent.includes("Something went wrong")),
    `page ${name} failed: ${await page.textContent("main")}`);
  await accessible(page, name);
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

// Every form control has a label, every button a name, the language is set, and every piece of
// text has a contrast of at least 4.5:1 with the background behind it (WCAG AA).
async function accessible(page, where) {
  const problems = await page.evaluate(() => {
    const out = [];
    if (!document.documentElement.lang) out.push("no lang on <html>");
    for (const c of document.querySelectorAll("input, select, textarea, progress, meter")) {
      if (!(c.labels && c.labels.length) && !c.getAttribute("aria-label")) out.push(`unlabelled ${c.tagName} ${c.id}`);
    }
    for (const b of document.querySelectorAll("button, a[href]")) {
      if (!b.textContent.trim() && !b.getAttribute("aria-label")) out.push(`nameless ${b.tagName}`);
    }
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length >= 3 && (c.length < 4 || c[3] > 0)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    for (const e of document.querySelectorAll("body *")) {
      const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !e.getClientRects().length || e.closest("svg") || e.closest(".visually-hidden")) continue;
      if (e.classList.contains("skip") && document.activeElement !== e) continue;
      const fg = lum(rgb(getComputedStyle(e).color).slice(0, 3));
      const bg = lum(background(e));
      const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
      if (ratio < 4.5) out.push(`contrast ${ratio.toFixed(2)} for "${e.textContent.trim().slice(0, 40)}"`);
    }
    return out;
  });
  check(problems.length === 0, `accessibility on ${where}: ${problems.join("; ")}`);
}

async function text(page, selector) {
  return (await page.textContent(selector)) || "";
}

async function upload(page, dataset, file) {
  await go(page, "upload");
  await page.selectOption("#dataset", dataset);
  await page.setInputFiles("#file", file);
  await page.click("button[type=submit]");
  await page.waitForSelector("main .notice.ok, main .notice.refused", { timeout: 120000 });
  const said = await text(page, "main");
  check(said.includes(`Uploaded ${dataset}`), `upload of ${dataset}: ${said}`);
  check(await page.evaluate(() => {
    const p = document.querySelector("#upload-progress");
    return p.value === p.max;
  }), "the progress bar is full after the upload");
}

async function runAnalysis(page, analysis) {
  await go(page, "run");
  await page.selectOption("#analysis", analysis);
  await page.click("button[type=submit]");
  await page.waitForSelector("#run-out article, #run-out .notice", { timeout: 300000 });
  const out = await text(page, "#run-out");
  check(!out.includes("Refused"), `run of ${analysis}: ${out}`);
  return out;
}

// The first result card's downloads: a CSV whose header is the table's, a Parquet file.
async function downloads(page, prefix) {
  const card = page.locator("article.result-card").first();
  const columns = await card.locator("thead th").allTextContents();
  const get = async (format) => {
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      card.locator(`button[data-format=${format}]`).click(),
    ]);
    const path = join(shots, `${prefix}-result.${format}`);
    await download.saveAs(path);
    return readFileSync(path);
  };
  const csv = (await get("csv")).toString("utf8");
  check(csv.split("\n")[0] === columns.join(","), `CSV header ${csv.split("\n")[0]} is the table's ${columns}`);
  const parquet = await get("parquet");
  check(parquet.subarray(0, 4).toString() === "PAR1" && parquet.subarray(-4).toString() === "PAR1", "a Parquet file");
}

async function scenario(s) {
  const name = s.scenario;
  console.log(`== ${name}`);
  const consoles = {};
  for (const p of s.parties) consoles[p.party] = await open(p.console);
  const first = consoles[s.parties[0].party];

  // The contract in plain words, signed by everyone.
  const contract = await text(first, "main");
  check(contract.includes(`${s.parties.length} of ${s.parties.length} parties signed`), `${name}: all signed: ${contract.slice(0, 400)}`);
  check(contract.includes("people") && contract.includes("deleted"), `${name}: rules and retention in words`);
  await accessible(first, `${name} contract`);
  await shot(first, `${name}-1-contract`);

  // Attestation: accepted, and loudly simulated.
  await go(first, "attestation");
  check((await text(first, "main")).includes("Accepted"), `${name}: attestation accepted`);
  check(await first.isVisible("#banner") && (await text(first, "#banner")).includes("SIMULATED"), `${name}: simulated banner`);
  await shot(first, `${name}-2-attestation`);

  // Every provider uploads its data.
  for (const p of s.parties) {
    for (const u of p.uploads) {
      await upload(consoles[p.party], u.dataset, u.file);
      console.log(`   ${p.party} uploaded ${u.dataset}`);
    }
  }
  await shot(consoles[s.parties[0].uploads.length ? s.parties[0].party : s.parties[1].party], `${name}-3-upload`);

  // Each analysis, run by its first receiver; every receiver finds it among its results.
  for (const a of s.analyses) {
    const runner = consoles[a.receivers[0]];
    const out = await runAnalysis(runner, a.name);
    console.log(`   ${a.receivers[0]} ran ${a.name}`);
    await shot(runner, `${name}-4-run-${a.name}`);
    check(out.includes(a.name), `${name}: the result of ${a.name} is shown to its receiver`);
    for (const r of a.receivers) {
      await go(consoles[r], "results");
      check(await consoles[r].locator("article.result-card h2", { hasText: a.name }).count() > 0,
        `${name}: ${r} has the result of ${a.name}`);
    }
  }
  const receiver = consoles[s.analyses[0].receivers[0]];
  await go(receiver, "results");
  await downloads(receiver, name);
  if (s.expect_text) {
    check((await text(receiver, "main")).includes(s.expect_text), `${name}: the result shows ${s.expect_text} as text`);
  }
  if (s.expect_chart) {
    check(await receiver.locator("article.result-card svg.chart").count() > 0, `${name}: a chart`);
  }
  await shot(receiver, `${name}-5-results`);

  // Ad-hoc: the rule check before running, then the answer.
  if (s.adhoc) {
    const page = consoles[s.adhoc.party];
    await go(page, "query");
    await page.fill("#sql", s.adhoc.refused);
    await page.click("#check");
    await page.waitForSelector("#verdict .notice");
    const refused = await text(page, "#verdict");
    check(refused.includes("Would be refused") && refused.includes(s.adhoc.rule), `${name}: the check names ${s.adhoc.rule}: ${refused}`);
    await shot(page, `${name}-6-query-refused`);
    await page.fill("#sql", s.adhoc.allowed);
    await page.click("#check");
    await page.waitForSelector("#verdict .notice.ok");
    if (s.adhoc.costs) {
      const price = await text(page, "#verdict");
      check(price.includes(`spends ${s.adhoc.costs}`), `${name}: the check prices the query: ${price}`);
    }
    await page.click("form button[type=submit]");
    await page.waitForSelector("#query-out article, #query-out .notice", { timeout: 120000 });
    check(await page.locator("#query-out article.result-card").count() === 1, `${name}: the ad-hoc answer: ${await text(page, "#query-out")}`);
    if (s.adhoc.costs) {
      check((await text(page, "#query-out")).includes("Differentially private"), `${name}: the answer says it is noised`);
    }
    await shot(page, `${name}-6-query-answered`);
  }

  // The budget, replayed from the log.
  await go(receiver, "budget");
  const budget = await text(receiver, "main");
  if (s.dp) check(budget.includes("remaining") && await receiver.locator("meter").count() > 0, `${name}: budget table`);
  else check(budget.includes("no differential privacy"), `${name}: no budget without DP`);
  await shot(receiver, `${name}-7-budget`);

  // The audit log: verified, with the uploads and runs, and deletion records.
  await go(receiver, "audit");
  const audit = await text(receiver, "main");
  check(audit.includes("Verified."), `${name}: the log verifies: ${audit.slice(0, 300)}`);
  const uploads = s.parties.reduce((n, p) => n + p.uploads.length, 0);
  check(await receiver.locator("ol.timeline li").count() >= uploads + s.analyses.length, `${name}: the timeline`);
  if (s.expect_deletion) {
    check(await receiver.locator("ul.deletions li").count() > 0, `${name}: a deletion record`);
  }
  await shot(receiver, `${name}-8-audit`);

  // The transparency report.
  await go(receiver, "report");
  check(await receiver.locator(".report h2, .report h3").count() > 0, `${name}: the report has sections`);
  check(s.purpose && (await text(receiver, ".report")).includes(s.purpose), `${name}: the report states the purpose`);
  await shot(receiver, `${name}-9-report`);
  for (const p of Object.values(consoles)) await p.close();
}

// Keyboard: the skip link comes first, the pages are reachable with Tab and Enter, and the
// page's heading takes the focus.
async function keyboard(url) {
  const page = await open(url);
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.classList.contains("skip")), "Tab reaches the skip link first");
  await accessible(page, "skip link focused");
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement.getAttribute("href") === "#audit");
  }
  check(reached, "Tab reaches the audit link");
  await page.evaluate(() => { document.querySelector("main").dataset.ready = "false"; });
  await page.keyboard.press("Enter");
  await ready(page);
  check(await page.evaluate(() => location.hash === "#audit" && document.activeElement.tagName === "H1"),
    "Enter opens the page and its heading takes the focus");
  await page.close();
}

try {
  for (const s of plan.scenarios) await scenario(s);

  console.log("== keyboard");
  await keyboard(plan.scenarios[0].parties[0].console);

  console.log("== a console for a contract the enclave does not serve");
  const wrong = await open(plan.refused.console);
  await go(wrong, "attestation");
  const said = await text(wrong, "main");
  check(said.includes("Refused.") && said.includes(plan.refused.check), `the refusal names the check: ${said}`);
  check(await wrong.locator("ol.checks li.failed").count() === 1, "one check marked failed");
  await shot(wrong, "refused-attestation");
  await go(wrong, "run");
  await wrong.click("button[type=submit]");
  await wrong.waitForSelector("#run-out .notice.refused");
  check((await text(wrong, "#run-out")).includes(plan.refused.check), "an action on a refused enclave is refused, naming the check");

  console.log("== no token, no access");
  const bare = await browser.newContext();
  const page = await bare.newPage();
  await page.goto(plan.scenarios[0].parties[0].console.split("#")[0]);
  await page.waitForSelector('main[data-ready="true"]');
  check((await page.textContent("main")).includes("access token"), "without the token the page says how to open it");
  await bare.close();

  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
  console.log(`all checks passed; screenshots in ${shots}`);
} catch (e) {
  // What each open page showed when a check failed.
  let i = 0;
  for (const p of context.pages()) await p.screenshot({ path: join(shots, `failed-${i++}.png`), fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
