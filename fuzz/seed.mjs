// Writes the fuzz targets' seed inputs into fuzz/corpus/TARGET/seed-*: GitHub's example webhook
// deliveries and REST answers (the npm packages pinned in tests/openapi: run
// `npm ci --prefix tests/openapi` first), the README's and the config tests' configs, and JIT
// configs as ghsim makes them. Run once when seeds change: `node fuzz/seed.mjs`; then
// `cargo fuzz cmin TARGET` keeps what adds coverage (README, "Fuzzing").
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const fuzz = dirname(fileURLToPath(import.meta.url));
const root = join(fuzz, "..");
const modules = join(root, "tests/openapi/node_modules/@octokit");

function put(target, name, data) {
  const dir = join(fuzz, "corpus", target);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `seed-${name}`), data);
}

// webhook: EVENT\nSECRET\nHEADER\nBODY (fuzz/harness/webhook.rs).
const secret = "It's a Secret to Everybody";
const sign = (body) => "sha256=" + createHmac("sha256", secret).update(body).digest("hex");
const events = JSON.parse(readFileSync(join(modules, "webhooks-examples/api.github.com/index.json")));
const wanted = { workflow_job: 99, ping: 99, workflow_run: 1, push: 1 };
for (const e of events) {
  (e.examples || []).slice(0, wanted[e.name] || 0).forEach((ex, i) => {
    const body = JSON.stringify(ex);
    put("webhook", `${e.name}-${i}`, `${e.name}\n${secret}\n${sign(body)}\n${body}`);
  });
}
put("webhook", "githubs-test-vector", `push\n${secret}\n${sign("Hello, World!")}\nHello, World!`);
put("webhook", "wrong-signature", `workflow_job\n${secret}\nsha256=${"0".repeat(64)}\n{}`);
put("webhook", "malformed-signature", `workflow_job\n${secret}\nsha1=abc\n{}`);
put("webhook", "no-header", `ping\n${secret}`);

// github_responses: a response body (fuzz/harness/github_responses.rs).
const api = JSON.parse(readFileSync(join(modules, "openapi/generated/api.github.com.deref.json")));
const answers = [
  ["get", "/repos/{owner}/{repo}/actions/runners", "200", "runners"],
  ["get", "/repos/{owner}/{repo}/actions/runners/{runner_id}", "200", "runner"],
  ["post", "/repos/{owner}/{repo}/actions/runners/generate-jitconfig", "201", "jit"],
  ["get", "/orgs/{org}/actions/runner-groups", "200", "runner-groups"],
  ["get", "/repos/{owner}/{repo}/actions/runs", "200", "runs"],
  ["get", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", "200", "jobs"],
  ["get", "/repos/{owner}/{repo}/actions/jobs/{job_id}", "200", "job"],
  ["get", "/repos/{owner}/{repo}/installation", "200", "installation"],
  ["post", "/app/installations/{installation_id}/access_tokens", "201", "installation-token"],
  ["get", "/orgs/{org}/repos", "200", "repos"],
];
for (const [method, path, status, name] of answers) {
  const c = api.paths[path][method].responses[status].content["application/json"];
  put("github_responses", name, JSON.stringify(c.examples.default.value));
}
put("github_responses", "message", '{"message":"Not Found","documentation_url":"https://docs.github.com/rest"}');
put("github_responses", "rate-limited", '{"message":"API rate limit exceeded for installation ID 1."}');
put("github_responses", "time", "2024-01-01T00:00:00Z");
put("github_responses", "time-offset", "2011-01-26T19:14:43.123+05:30");

// config: TOML text (fuzz/harness/config.rs).
const readme = readFileSync(join(root, "README.md"), "utf8");
const reference = readme.split("## Configuration reference")[1].split("```toml\n")[1].split("```")[0];
put("config", "readme", reference);
put("config", "readme-relative", reference.replaceAll("/etc/airlock/", "").replace("webhook-secret", "secret"));
let n = 0;
for (const file of ["crates/airlock-config/src/check/tests.rs", "crates/airlock-config/src/check/tests/disk.rs"]) {
  const src = readFileSync(join(root, file), "utf8");
  for (const m of src.matchAll(/r#"([\s\S]*?)"#/g)) put("config", `tests-${n++}`, m[1]);
}
put("config", "empty", "");
const github = 'api_url = "http://127.0.0.1:1234"\nwebhook_secret_file = "secret"\n';
const pool = 'name = "small"\nscope = "repo:octo/hello"\nlabels = ["self-hosted", "linux"]\n';
put("config", "app", `[github]\n${github}client_id = "Iv1.abc"\nprivate_key_file = "app.pem"\ninstallation_id = 678\n[[pool]]\n${pool}runner_command = "runner"\n`);
put("config", "egress", `[github]\n${github}token_file = "token"\n[[pool]]\n${pool}backend = "container"\nimage = "runner"\n` +
  '[pool.egress]\nmode = "block"\nallow = ["github.com", "*.actions.githubusercontent.com:443", "10.20.0.0/16", "[2001:db8::/32]:443"]\nproxy = "http://10.0.0.1:3128"\n');
put("config", "microvm", `[github]\n${github}token_file = "token"\n[microvm]\nfirecracker = "/usr/bin/firecracker"\nuid_base = 300000\n` +
  `[[pool]]\n${pool}backend = "microvm"\nimage = "vm@sha256:${"a".repeat(64)}"\ncpus = 2\nmemory_mib = 4096\ndisk_gib = 20\n` +
  '[pool.microvm]\ndriver = "firecracker"\naccel = "kvm"\nkernel = "6.1.0-28-cloud-amd64"\ndisk_gib = 20\n');
put("config", "sizes", `[server]\njob_log_max_mib = 1\nsandbox_nice = 0\nmax_parallel_ops = 1024\nstuck_after = "1ms"\n[github]\n${github}token_file = "token"\nwrite_interval = "0s"\n` +
  `[[pool]]\n${pool}min_idle = 8\nmax_runners = 8\njit_stock = 1000\njit_stock_refresh = "23h 59m"\nboot_timeout = "1s"\njob_timeout = "100y"\n[[pool]]\nname = "two"\nscope = "enterprise:big"\nlabels = ["gpu"]\nrunner_group = "GPUs"\n`);
put("config", "problems", '[server]\nlisten = 8080\nstate_dir = "a:b"\nbogus = 1\n[github]\ntoken_file = "open"\npoll_interval = "0s"\n[[pool]]\nname = "Bad Name"\nlabels = []\nmin_idle = 9\n[pool.egress]\nmode = "sometimes"\n');

// jit: an encoded JIT config, or NAME\nSERVER\nTOKEN (fuzz/harness/jit.rs).
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64");
function jit(name, server, token) {
  const runner = { agentId: 7, agentName: name, poolId: 1, poolName: "Default", serverUrl: server,
    gitHubUrl: "https://github.example.invalid/octo/hello", workFolder: "_work", ephemeral: true, useV2Flow: true };
  const creds = { scheme: "OAuth", data: { clientId: "ghsim-7", authorizationUrl: `${server}/_ghsim/token`,
    requireFipsCryptography: "False", token } };
  const rsa = randomBytes(32).toString("hex");
  const rsaparams = { d: rsa, modulus: rsa, exponent: "AQAB" };
  return b64({ ".runner": b64(runner), ".credentials": b64(creds), ".credentials_rsaparams": b64(rsaparams) });
}
put("jit", "ghsim", jit("airlock-small-1", "http://127.0.0.1:41234", "ghr_" + randomBytes(16).toString("hex")));
put("jit", "ghsim-slash", jit("airlock-vm-12", "http://10.213.0.1:8080/", "ghr_x"));
put("jit", "no-credentials", b64({ ".runner": b64({ agentName: "a", serverUrl: "http://h" }) }));
put("jit", "not-json", "bm90IGpzb24=");
put("jit", "fields", "airlock-small-1\nhttp://127.0.0.1:8080/\nghr_token");
