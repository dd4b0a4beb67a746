#!/usr/bin/env node
// Screenshot of the web console (GET /), for looking at what an operator sees.
//
//   node scripts/console-shot.mjs [URL] [OUT.png] [--select NAME] [--dark] [--width N] [--height N] [--full]
//
// URL defaults to http://127.0.0.1:9464/, OUT to /tmp/console.png. Waits for
// the services table to fill, then saves the PNG. Exits non-zero when the
// page logs a console error or throws, or when the table stays empty.
// Expected HTTP answers are not errors: a 503 from /v1/health (warden is
// down) and a 401 (a token is needed) are reported but do not fail the run.
//
// Needs playwright-core (`npm install --prefix bench/peers/npm playwright-core`)
// and a Chromium (Debian package `chromium`; env CHROMIUM overrides the path).
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
function loadPlaywright() {
  const tries = [join(here, ".."), join(here, "..", "bench", "peers", "npm"), process.cwd()];
  for (const base of tries) {
    try {
      return createRequire(join(base, "package.json"))("playwright-core");
    } catch {}
  }
  console.error("playwright-core is missing: npm install --prefix bench/peers/npm playwright-core");
  process.exit(2);
}

const args = process.argv.slice(2);
const flags = {};
const pos = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--dark" || a === "--full") flags[a.slice(2)] = true;
  else if (a === "--select" || a === "--width" || a === "--height") flags[a.slice(2)] = args[++i];
  else pos.push(a);
}
const url = pos[0] || "http://127.0.0.1:9464/";
const out = pos[1] || "/tmp/console.png";
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(chromium)) {
  console.error(`no Chromium at ${chromium} (apt-get install chromium, or set CHROMIUM)`);
  process.exit(2);
}

const { chromium: browserType } = loadPlaywright();
const browser = await browserType.launch({
  executablePath: chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const problems = [];
let code = 0;
try {
  const page = await browser.newPage({
    viewport: { width: Number(flags.width || 1440), height: Number(flags.height || 900) },
    colorScheme: flags.dark ? "dark" : "light",
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    const from = m.location()?.url || "";
    const expected = /status of (401|503)\b/.test(text) && (/status of 401/.test(text) || from.includes("/v1/health"));
    if (expected) console.log(`note: ${text} (${from})`);
    else problems.push(`console error: ${text}${from ? ` (${from})` : ""}`);
  });
  const resp = await page.goto(url, { waitUntil: "domcontentloaded", timeout: 15000 });
  if (!resp || !resp.ok()) throw new Error(`GET ${url} answered ${resp ? resp.status() : "nothing"}`);
  try {
    await page.waitForSelector("#svc tbody tr", { timeout: 10000 });
  } catch {
    throw new Error("the services table stayed empty");
  }
  if (flags.select) {
    await page.locator("#svc tbody tr", { hasText: flags.select }).first().click();
    await page.waitForSelector("#logs .l, #logs .none", { timeout: 5000 }).catch(() => {});
  }
  await page.waitForTimeout(1500); // let the graph, health and log tail settle
  await page.screenshot({ path: out, fullPage: !!flags.full });
  const rows = await page.locator("#svc tbody tr").count();
  console.log(`saved ${out} (${rows} services)`);
} catch (e) {
  problems.push(e.message);
} finally {
  await browser.close();
}
for (const p of problems) console.error(p);
if (problems.length) code = 1;
process.exit(code);
