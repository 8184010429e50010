// Opens the real ComfyUI graph editor in headless Chromium, loads workflows (API format with
// app.loadApiJson, UI format with app.loadGraphData), and reports per workflow: node types the
// editor doesn't know, whether a missing-nodes dialog showed, the Edicho nodes rendered with their
// inputs, the API prompt the editor would queue, and a screenshot; and the inputs of each Edicho node as
// the editor creates it fresh (before anything is connected).
// With EXPORT_DIR set, each loaded API workflow is also saved there in UI format, as the editor
// serialises it (that is how workflows/*.json are made from workflows/api/*.json). API node ids
// are renumbered 1, 2, ... in file order first, as the editor's own ids are numbers.
// usage: node editor_check.mjs URL OUT_DIR WORKFLOW.json...   (NODE_PATH must hold playwright-core)
import { createRequire } from "module";
import { readFileSync, writeFileSync } from "fs";
import { basename, join } from "path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [url, outDir, ...workflows] = process.argv.slice(2);
const exportDir = process.env.EXPORT_DIR;

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
function renumbered(api) {
  const id = Object.fromEntries(Object.keys(api).map((key, i) => [key, String(i + 1)]));
  const link = (v) => (Array.isArray(v) && v.length === 2 && typeof v[0] === "string" && v[0] in id ? [id[v[0]], v[1]] : v);
  return Object.fromEntries(Object.entries(api).map(([key, node]) => [id[key], {
    ...node, inputs: Object.fromEntries(Object.entries(node.inputs).map(([name, v]) => [name, link(v)])) }]));
}

const results = [];
for (const file of workflows) {
  let data = JSON.parse(readFileSync(file, "utf8"));
  const ui = Array.isArray(data.nodes);
  if (!ui) data = renumbered(data);
  const report = await page.evaluate(async ({ data, ui }) => {
    const types = ui ? data.nodes.map((n) => n.type) : Object.values(data).map((n) => n.class_type);
    const missing = [...new Set(types)].filter((t) => !window.LiteGraph.registered_node_types[t]);
    if (ui) await window.app.loadGraphData(data, true, true, "workflow.json");
    else await window.app.loadApiJson(data, "workflow.json");
    await new Promise((r) => setTimeout(r, 1000));
    const nodes = window.app.graph._nodes;
    const edicho = nodes.filter((n) => n.type.startsWith("Edicho"))
      .map((n) => ({ type: n.type, inputs: (n.inputs || []).map((i) => i.name), widgets: (n.widgets || []).map((w) => w.name) }));
    const dialog = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText).join("\n");
    const prompt = (await window.app.graphToPrompt()).output;
    const serialized = window.app.graph.serialize();
    return { nodes: nodes.length, missing, edicho, dialog, prompt, serialized };
  }, { data, ui });
  report.missingDialog = /missing/i.test(report.dialog);
  report.screenshot = join(outDir, basename(file).replace(/\.json$/, ui ? ".png" : ".api.png"));
  await page.screenshot({ path: report.screenshot });
  if (exportDir && !ui) writeFileSync(join(exportDir, basename(file)), JSON.stringify(report.serialized, null, 1) + "\n");
  delete report.serialized;
  results.push({ workflow: file, ui, ...report });
}
const fresh = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types)
  .filter((t) => t.startsWith("Edicho"))
  .map((t) => ({ type: t, inputs: (window.LiteGraph.createNode(t).inputs || []).map((i) => i.name) })));
console.log(JSON.stringify({ results, errors, fresh }));
await browser.close();
