// Opens URL in Debian's chromium (headless, driven by playwright-core from
// .node-tools/) and stays WAIT_MS on it, as an operator's browser would on
// a page of another site; prints what the page reported with
// console.log, one line each. Used by tests/browser.rs.
//
//   node tests/browser/visit.mjs URL [WAIT_MS]
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
let playwright;
try {
  playwright = createRequire(join(root, ".node-tools", "package.json"))("playwright-core");
} catch {
  console.error("playwright-core is missing from .node-tools: run scripts/install-deps");
  process.exit(2);
}
const [url, wait = "3000"] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "warden-chromium-"));
const browser = await playwright.chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("console", (m) => console.log(`page: ${m.text()}`));
  await page.goto(url);
  await page.waitForTimeout(Number(wait));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
