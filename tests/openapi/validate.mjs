// Checks recorded HTTP exchanges between airlock's GitHub client and ghsim, and ghsim's webhook
// payloads, against GitHub's own published descriptions (@octokit/openapi and
// @octokit/openapi-webhooks). Input: a JSON-lines file written by ghsim's `record` option.
//   node validate.mjs EXCHANGES.jsonl
// For each REST exchange: the method and path must be an operation of GitHub's API, the status
// must be one GitHub documents for it, and the request and response bodies must match its schemas.
// For each webhook: the payload must match `webhook-workflow-job-<action>`.
// Exits 1 and lists the problems when anything does not conform; prints a summary either way.
import fs from "node:fs";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs EXCHANGES.jsonl");
  process.exit(2);
}
const here = new URL(".", import.meta.url);
const load = (p) => JSON.parse(fs.readFileSync(new URL(p, here)));
const rest = load("node_modules/@octokit/openapi/generated/api.github.com.json");
const hooks = load("node_modules/@octokit/openapi-webhooks/generated/api.github.com.json");

// OpenAPI 3.0's `nullable: true` does not add null to an `enum` by itself, though GitHub's API
// sends null for such fields (a queued job's `conclusion`): make that explicit for the validator.
function nullableEnums(node) {
  if (Array.isArray(node)) return node.forEach(nullableEnums);
  if (!node || typeof node !== "object") return;
  if (node.nullable === true && Array.isArray(node.enum) && !node.enum.includes(null)) node.enum.push(null);
  Object.values(node).forEach(nullableEnums);
}
nullableEnums(rest);

const ajv = new Ajv({ strict: false, allErrors: true, validateSchema: false, discriminator: false });
addFormats(ajv);
ajv.addSchema(rest, "rest");
ajv.addSchema(hooks, "hooks");

const esc = (s) => s.replace(/~/g, "~0").replace(/\//g, "~1");
const templates = Object.keys(rest.paths).map((t) => {
  const segs = t.split("/").filter(Boolean);
  return { t, segs, literal: segs.filter((s) => !s.startsWith("{")).length };
});
function findTemplate(path) {
  const segs = path.split("/").filter(Boolean);
  const hits = templates.filter(
    (c) => c.segs.length === segs.length && c.segs.every((s, i) => s.startsWith("{") || s === segs[i]),
  );
  hits.sort((a, b) => b.literal - a.literal);
  return hits[0];
}
function resolve(obj) {
  while (obj && obj.$ref) {
    const parts = obj.$ref.replace(/^#\//, "").split("/").map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    obj = parts.reduce((o, k) => o[k], rest);
  }
  return obj;
}
const cache = new Map();
function validator(ref) {
  if (!cache.has(ref)) cache.set(ref, ajv.compile({ $ref: ref }));
  return cache.get(ref);
}

const problems = [];
const seen = new Map();
let exchanges = 0;
let webhooks = 0;
const lines = fs.readFileSync(file, "utf8").split("\n").filter(Boolean);
for (const line of lines) {
  const x = JSON.parse(line);
  if (x.webhook) {
    webhooks++;
    const name = `webhook-${x.webhook.replace(/_/g, "-")}-${x.action.replace(/_/g, "-")}`;
    if (!hooks.components.schemas[name]) {
      problems.push(`webhook ${x.webhook}.${x.action}: no schema ${name}`);
      continue;
    }
    const v = validator(`hooks#/components/schemas/${name}`);
    if (!v(x.payload)) problems.push(`webhook ${x.webhook}.${x.action}: ${ajv.errorsText(v.errors.slice(0, 5))}`);
    seen.set(`webhook ${x.webhook}.${x.action}`, (seen.get(`webhook ${x.webhook}.${x.action}`) || 0) + 1);
    continue;
  }
  exchanges++;
  const method = x.method.toLowerCase();
  const tpl = findTemplate(x.path);
  const where = `${x.method} ${x.path}`;
  if (!tpl || !rest.paths[tpl.t][method]) {
    problems.push(`${where}: not an operation of GitHub's REST API`);
    continue;
  }
  const key = `${x.method} ${tpl.t}`;
  seen.set(key, (seen.get(key) || 0) + 1);
  const op = rest.paths[tpl.t][method];
  const base = `rest#/paths/${esc(tpl.t)}/${method}`;
  if (x.request !== null && x.request !== undefined) {
    const rb = resolve(op.requestBody);
    if (!rb) problems.push(`${where}: sends a body but GitHub's operation takes none`);
    else {
      const v = validator(`${base}/requestBody/content/application~1json/schema`);
      if (!v(x.request)) problems.push(`${where}: request body: ${ajv.errorsText(v.errors.slice(0, 5))}`);
    }
  }
  const status = String(x.status);
  if (status === "304" && op.responses["304"] === undefined && method === "get") continue; // conditional GETs
  const resp = op.responses[status];
  if (!resp) {
    // GitHub answers 401/403/404/429/5xx on any operation without documenting each one; their
    // bodies are GitHub's `basic-error`.
    if (!["401", "403", "404", "429", "500", "502", "503"].includes(status))
      problems.push(`${where}: status ${status} is not documented for ${key} (documented: ${Object.keys(op.responses)})`);
    else if (x.response) {
      const v = validator("rest#/components/schemas/basic-error");
      if (!v(x.response)) problems.push(`${where} -> ${status}: error body: ${ajv.errorsText(v.errors.slice(0, 5))}`);
    }
    continue;
  }
  const r = resolve(resp);
  const schema = r.content && r.content["application/json"] && r.content["application/json"].schema;
  if (schema && x.response !== null && x.response !== undefined) {
    const ptr = resp.$ref
      ? `rest#/${resp.$ref.replace(/^#\//, "")}/content/application~1json/schema`
      : `${base}/responses/${status}/content/application~1json/schema`;
    const v = validator(ptr);
    if (!v(x.response)) problems.push(`${where} -> ${status}: response: ${ajv.errorsText(v.errors.slice(0, 5))}`);
  } else if (!schema && x.response !== null && x.response !== undefined && status < "300") {
    problems.push(`${where} -> ${status}: GitHub sends no body here but ghsim did`);
  }
}
for (const [k, n] of [...seen].sort()) console.log(`  ${String(n).padStart(5)}  ${k}`);
const unique = [...new Set(problems)];
for (const p of unique.slice(0, 40)) console.log(`NONCONFORMING: ${p}`);
console.log(`${exchanges} exchanges and ${webhooks} webhooks checked against GitHub's OpenAPI descriptions: ${unique.length} problem(s)`);
process.exit(unique.length ? 1 : 0);
