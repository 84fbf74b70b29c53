// Prints GitHub's own example `workflow_job` payloads (@octokit/webhooks-examples), each signed
// with the reference implementation (@octokit/webhooks-methods), as JSON lines
// {action, body, signature}, for airlock's webhook tests.
//   node sign-examples.mjs SECRET
import fs from "node:fs";
import { sign } from "@octokit/webhooks-methods";

const secret = process.argv[2];
if (!secret) {
  console.error("usage: node sign-examples.mjs SECRET");
  process.exit(2);
}
const index = JSON.parse(
  fs.readFileSync(new URL("node_modules/@octokit/webhooks-examples/api.github.com/index.json", import.meta.url)),
);
const entry = index.find((e) => e.name === "workflow_job");
for (const example of entry.examples) {
  const body = JSON.stringify(example);
  const signature = await sign(secret, body);
  console.log(JSON.stringify({ action: example.action, body, signature }));
}
