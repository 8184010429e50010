// Edicho Batch Images grows its photo and mask sockets where the host has V3 Autogrow (prompt keys
// `photos.image_N`, `masks.mask_N`). The frontend places an API-format workflow's links by input name,
// so one saved with the fixed sockets (`image_N`, `mask_N`) would lose its photos there: its keys are
// renamed to the grown ones as it loads. UI-format workflows keep their saved sockets, which the node
// still accepts. On hosts without Autogrow nothing changes.
import { app } from "../../../scripts/app.js";

const NODE = "EdichoBatchImages";
const GROUP = { image: "photos", mask: "masks" };
const FIXED = /^(image|mask)_\d+$/;
let grows = false;

function grownKeys(apiData) {
  const renamed = {};
  for (const [id, node] of Object.entries(apiData ?? {})) {
    if (node?.class_type !== NODE || !node.inputs) {
      renamed[id] = node;
      continue;
    }
    const inputs = Object.fromEntries(Object.entries(node.inputs).map(([name, value]) =>
      [FIXED.test(name) ? `${GROUP[name.split("_")[0]]}.${name}` : name, value]));
    renamed[id] = { ...node, inputs };
  }
  return renamed;
}

app.registerExtension({
  name: "comfyui-edicho.BatchImages.growingSockets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const declared = { ...nodeData.input?.required, ...nodeData.input?.optional };
    grows = declared.photos?.[0] === "COMFY_AUTOGROW_V3";
  },
  async setup() {
    if (typeof app.loadApiJson !== "function") return;
    const loadApiJson = app.loadApiJson;
    app.loadApiJson = function (apiData, ...rest) {
      return loadApiJson.call(this, grows ? grownKeys(apiData) : apiData, ...rest);
    };
  },
});
