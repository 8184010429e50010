// Opens the real ComfyUI graph editor in headless Chromium, loads a UI workflow, selects the first node of
// a type and opens its help the way a user does (the selection toolbox's info button), then reports whether
// EXPECTED text showed up on the page, the pictures shown with where they came from, and a screenshot.
// usage: node help_check.mjs URL OUT_DIR WORKFLOW.json NODE_TYPE EXPECTED   (NODE_PATH must hold playwright-core)
import { createRequire } from "module";
import { readFileSync } from "fs";
import { join } from "path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [url, outDir, workflow, nodeType, expected] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
await page.goto(url, { waitUntil: "domcontentloaded" });
await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
const data = JSON.parse(readFileSync(workflow, "utf8"));
const selected = await page.evaluate(async ({ data, nodeType }) => {
  await window.app.loadGraphData(data, true, true, "workflow.json");
  const node = window.app.graph._nodes.find((n) => n.type === nodeType);
  if (!node) return false;
  // As a click on the node's title does: the selection toolbox appears above it.
  window.app.canvas.selectNode(node);
  window.app.canvas.setDirty(true, true);
  return true;
}, { data, nodeType });
let found = false;
if (selected) {
  const info = page.locator('[data-testid="info-button"]').first();
  await info.waitFor({ state: "visible", timeout: 30000 });
  await info.click();
  found = await page.waitForFunction((text) => document.body.innerText.includes(text), expected, { timeout: 30000 })
    .then(() => true, () => false);
  // The pictures load after the text.
  await page.waitForFunction(() => [...document.images].every((i) => i.complete), null, { timeout: 30000 }).catch(() => {});
}
const pictures = await page.evaluate(() => [...document.images].map((i) => ({ src: i.src, width: i.naturalWidth })));
const screenshot = join(outDir, `help-${nodeType}.png`);
await page.screenshot({ path: screenshot });
console.log(JSON.stringify({ selected, found, pictures, screenshot, errors }));
await browser.close();
