// Opens the real ComfyUI graph editor in headless Chromium, loads workflows (API format with
// app.loadApiJson, UI format with app.loadGraphData), and reports per workflow: node types the
// editor doesn't know, whether a missing-nodes dialog showed, the Edicho nodes rendered with their
// inputs, the API prompt the editor would queue, and a screenshot; and the inputs of each Edicho node as
// the editor creates it fresh (before anything is connected).
// With EXPORT_DIR set, each loaded API workflow is also saved there in UI format, as the editor
// serialises it (that is how workflows/*.json are made from workflows/api/*.json). API node ids
// are renumbered 1, 2, ... in file order first, as the editor's own ids are numbers.
// With CAPTURE_DIR set, each UI workflow is also pictured whole there (the template thumbnails, the README's picture).
// usage: node editor_check.mjs URL OUT_DIR WORKFLOW.json...   (NODE_PATH must hold playwright-core)
import { createRequire } from "module";
import { readFileSync, writeFileSync } from "fs";
import { basename, join } from "path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [url, outDir, ...workflows] = process.argv.slice(2);
const exportDir = process.env.EXPORT_DIR;
const captureDir = process.env.CAPTURE_DIR;

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

// The whole graph at CAPTURE_SCALE, clear of the editor's own bars: the window is made larger than the graph
// and the picture cut from the part of the canvas nothing overlays (sidebar, tabs, toolbar, minimap).
const CAPTURE_SCALE = 0.8;
const CLEAR = { left: 90, top: 130, right: 420, bottom: 320 };
const MARGIN = 16;
async function capture(path) {
  const box = await page.evaluate(() => {
    const groups = window.app.graph._groups.map((g) => g._bounding ?? g.bounding);
    const nodes = window.app.graph._nodes.map((n) => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]);
    const all = [...groups, ...nodes];
    const x = Math.min(...all.map((b) => b[0])), y = Math.min(...all.map((b) => b[1]));
    return [x, y, Math.max(...all.map((b) => b[0] + b[2])) - x, Math.max(...all.map((b) => b[1] + b[3])) - y];
  }).then((b) => [b[0] - MARGIN, b[1] - MARGIN, b[2] + 2 * MARGIN, b[3] + 2 * MARGIN]);
  const width = Math.ceil(box[2] * CAPTURE_SCALE), height = Math.ceil(box[3] * CAPTURE_SCALE);
  await page.setViewportSize({ width: width + CLEAR.left + CLEAR.right, height: height + CLEAR.top + CLEAR.bottom });
  await new Promise((r) => setTimeout(r, 500));
  await page.evaluate(({ box, scale, clear }) => {
    const canvas = window.app.canvas;
    canvas.low_quality_zoom_threshold = 0;
    canvas.ds.scale = scale;
    canvas.ds.offset = [clear.left / scale - box[0], clear.top / scale - box[1]];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
  }, { box, scale: CAPTURE_SCALE, clear: CLEAR });
  await new Promise((r) => setTimeout(r, 1000));
  await page.screenshot({ path, clip: { x: CLEAR.left, y: CLEAR.top, width, height } });
  await page.setViewportSize({ width: 1600, height: 1000 });
  return path;
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
  if (captureDir && ui) report.capture = await capture(join(captureDir, basename(file).replace(/\.json$/, ".png")));
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
