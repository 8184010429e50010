// Opens the real ComfyUI graph editor in headless Chromium, loads API-format workflows, and reports
// per workflow: node types the editor doesn't know, whether a missing-nodes dialog showed, the
// Edicho nodes rendered with their inputs, and a screenshot.
// usage: node editor_check.mjs URL OUT_DIR WORKFLOW.json...   (NODE_PATH must hold playwright-core)
import { createRequire } from "module";
import { readFileSync } from "fs";
import { basename, join } from "path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [url, outDir, ...workflows] = process.argv.slice(2);

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
const results = [];
for (const file of workflows) {
  const api = JSON.parse(readFileSync(file, "utf8"));
  const report = await page.evaluate(async (api) => {
    const missing = [...new Set(Object.values(api).map((n) => n.class_type))]
      .filter((t) => !window.LiteGraph.registered_node_types[t]);
    await window.app.loadApiJson(api, "workflow.json");
    await new Promise((r) => setTimeout(r, 1000));
    const nodes = window.app.graph._nodes;
    const edicho = nodes.filter((n) => n.type.startsWith("Edicho"))
      .map((n) => ({ type: n.type, inputs: (n.inputs || []).map((i) => i.name), widgets: (n.widgets || []).map((w) => w.name) }));
    const dialog = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText).join("\n");
    return { nodes: nodes.length, missing, edicho, dialog };
  }, api);
  report.missingDialog = /missing/i.test(report.dialog);
  report.screenshot = join(outDir, basename(file).replace(/\.json$/, ".png"));
  await page.screenshot({ path: report.screenshot });
  results.push({ workflow: file, ...report });
}
console.log(JSON.stringify({ results, errors }));
await browser.close();
