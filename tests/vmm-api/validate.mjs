// Validates recorded VMM API requests against the VMMs' own API descriptions.
//
//   node validate.mjs [--strict] --api NAME=DESCRIPTION.yaml[,PREFIX] ... REQUESTS.json
//
// REQUESTS.json is a list of {"api": NAME, "method": "PUT", "path": "/drives/rootfs", "body": {...} | null}.
// Each request must name an operation of the description (path templates such as {drive_id} match
// one segment; PREFIX, e.g. /api/v1, is stripped first), carry a body exactly when the operation
// takes one (a required body must be there), and its body must satisfy the operation's schema:
// required fields, types, enums, ranges, and no unknown property where the schema says
// additionalProperties: false. --strict also closes every object schema that lists its
// properties and says nothing about others, because both VMMs deserialize their API bodies with
// serde's deny_unknown_fields, so a field the description does not list is refused.
//
// Prints every violation, one a line, and exits 1 if there is any; else prints "N requests valid".

import { readFileSync } from "node:fs";
import { parse } from "yaml";
import Ajv from "ajv";

const args = process.argv.slice(2);
let strict = false;
const apis = new Map();
let input = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--strict") strict = true;
  else if (args[i] === "--api") {
    const [name, rest] = args[++i].split("=");
    const [file, prefix = ""] = rest.split(",");
    apis.set(name, { file, prefix });
  } else input = args[i];
}
if (!input || apis.size === 0) {
  console.error("usage: validate.mjs [--strict] --api NAME=FILE.yaml[,PREFIX] ... REQUESTS.json");
  process.exit(2);
}

const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });

// Rewrites local refs ("#/definitions/X") to refs into the document registered as `id`, and in
// strict mode closes object schemas that list their properties.
function rewrite(node, id) {
  if (Array.isArray(node)) return node.map((n) => rewrite(n, id));
  if (node === null || typeof node !== "object") return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === "$ref" && typeof v === "string" && v.startsWith("#/")) out[k] = id + v;
    else out[k] = rewrite(v, id);
  }
  if (strict && out.properties && typeof out.properties === "object" && out.additionalProperties === undefined &&
      !out.allOf && !out.anyOf && !out.oneOf) {
    out.additionalProperties = false;
  }
  return out;
}

for (const [name, api] of apis) {
  const doc = parse(readFileSync(api.file, "utf8"));
  const id = `vmm-api:${name}`;
  const root = { $id: id };
  if (doc.definitions) root.definitions = rewrite(doc.definitions, id);
  if (doc.components) root.components = { schemas: rewrite(doc.components.schemas ?? {}, id) };
  ajv.addSchema(root);
  api.id = id;
  api.paths = Object.entries(doc.paths).map(([template, item]) => ({
    template,
    re: new RegExp("^" + template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}/]+\}/g, "[^/]+") + "$"),
    item,
  }));
  api.version = doc.swagger ? 2 : 3;
}

// The body schema of an operation and whether the body is required; null when it takes none.
function bodyOf(api, op) {
  if (api.version === 2) {
    const p = (op.parameters ?? []).find((p) => p.in === "body");
    return p ? { schema: p.schema, required: !!p.required } : null;
  }
  const rb = op.requestBody;
  if (!rb) return null;
  const schema = rb.content?.["application/json"]?.schema;
  return schema ? { schema, required: !!rb.required } : null;
}

const requests = JSON.parse(readFileSync(input, "utf8"));
const violations = [];
requests.forEach((r, i) => {
  const where = `#${i} ${r.api} ${r.method} ${r.path}`;
  const api = apis.get(r.api);
  if (!api) return violations.push(`${where}: no API description named ${r.api}`);
  let path = r.path.split("?")[0];
  if (api.prefix) {
    if (!path.startsWith(api.prefix)) return violations.push(`${where}: path is not under ${api.prefix}`);
    path = path.slice(api.prefix.length) || "/";
  }
  const matches = api.paths.filter((p) => p.re.test(path));
  // A literal path wins over a template (e.g. /snapshot/create over /snapshot/{x}).
  matches.sort((a, b) => (a.template.includes("{") ? 1 : 0) - (b.template.includes("{") ? 1 : 0));
  const found = matches[0];
  if (!found) return violations.push(`${where}: no such path in ${api.file}`);
  const op = found.item[r.method.toLowerCase()];
  if (!op) return violations.push(`${where}: ${found.template} has no ${r.method} operation`);
  const body = bodyOf(api, op);
  const has = r.body !== null && r.body !== undefined;
  if (!body) {
    if (has) violations.push(`${where}: the operation takes no body, but one was sent`);
    return;
  }
  if (!has) {
    if (body.required) violations.push(`${where}: the operation requires a body, none was sent`);
    return;
  }
  const validate = ajv.compile(rewrite(body.schema, api.id));
  if (!validate(r.body)) {
    for (const e of validate.errors) {
      const extra = e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : "";
      const allowed = e.params?.allowedValues ? ` (${e.params.allowedValues.join(", ")})` : "";
      violations.push(`${where}: body${e.instancePath} ${e.message}${extra}${allowed}`);
    }
  }
});

for (const v of violations) console.log(v);
if (violations.length > 0) {
  console.log(`${violations.length} violations in ${requests.length} requests`);
  process.exit(1);
}
console.log(`${requests.length} requests valid`);
