// certmgr's injection webhook over real HTTPS, as ctest `webhook` runs it:
//
//   node tests/deploy/check-webhook.mjs --certmgr BIN
//
// 1. certmgr serves with the base's injection settings and its webhook on loopback; its serving
//    certificate is checked against certmgr's own CA (the caBundle the API server would hold).
// 2. Every pod template of the example overlay and of tests/deploy/workloads is sent as the
//    AdmissionReview the API server would send for its Pod; the JSONPatch of the answer, applied
//    with an independent JSON Patch implementation (fast-json-patch), must give exactly what
//    `meshtls-certmgr inject` gives for the same Pod. Opted-out pods come back unpatched, pods
//    that cannot be meshed are refused with the reason.
// 3. Bad clients get a clear refusal and never a crash: malformed JSON, a body over the limit,
//    chunked bodies, a request that never ends, a connection that never speaks, one address past
//    its share of connections, plain HTTP on the TLS port. certmgr keeps answering, and its metrics count each case.
// Each failure prints what is wrong; the exit code is 1 if any.

import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import jsonpatch from "fast-json-patch";
import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const certmgrBin = process.argv[process.argv.indexOf("--certmgr") + 1];
if (!process.argv.includes("--certmgr") || !certmgrBin) {
  console.error("usage: check-webhook.mjs --certmgr BIN");
  process.exit(2);
}

let failures = 0;
function check(cond, where, what) {
  if (!cond) {
    failures++;
    console.error(`FAIL ${where}: ${what}`);
  }
  return cond;
}
const canonical = (v) =>
  Array.isArray(v) ? v.map(canonical)
  : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((key) => [key, canonical(v[key])]))
  : v;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function pollFor(what, condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await condition();
    if (value) return value;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// --- 1. certmgr with the base's injection settings ------------------------------------------
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meshtls-webhook-"));
const base = YAML.parse(fs.readFileSync(path.join(root, "deploy/kubernetes/base/certmgr-config.yaml"), "utf8"));
const config = {
  trust_domain: base.trust_domain,
  listen: "127.0.0.1:0",
  server_names: ["localhost"],
  admin: { listen: "127.0.0.1:0" },
  ca: { dir: path.join(dir, "ca") },
  log: { level: "info", format: "text" },
  injection: {
    ...base.injection,
    webhook: { listen: "127.0.0.1:0", server_names: ["localhost"], max_request_bytes: 262144, request_timeout: "3s" },
  },
};
fs.mkdirSync(config.ca.dir, { mode: 0o700 });
const configFile = path.join(dir, "certmgr.yaml");
fs.writeFileSync(configFile, YAML.stringify(config));
const portsFile = path.join(dir, "ports");
const log = fs.openSync(path.join(dir, "certmgr.log"), "w");
const certmgr = spawn(certmgrBin, ["serve", "--config", configFile, "--bound-ports-file", portsFile], { stdio: ["ignore", log, log] });
let exited = false;
let exitCode = null;
const exitedPromise = new Promise((resolve) => certmgr.on("exit", (code, signal) => {
  exited = true;
  exitCode = code ?? `signal ${signal}`;
  resolve();
}));

// finish stops certmgr (SIGTERM: a clean exit, 0) and fails on any sanitizer report in its log
// (the sanitizer builds run this test too).
async function finish() {
  if (!exited) {
    certmgr.kill("SIGTERM");
    await Promise.race([exitedPromise, sleep(20000)]);
    check(exited && exitCode === 0, "certmgr", `did not exit cleanly on SIGTERM (${exitCode})`);
  }
  const logText = fs.readFileSync(path.join(dir, "certmgr.log"), "utf8");
  for (const report of ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"]) {
    check(!logText.includes(report), "certmgr", `a sanitizer report (${report}) in its log`);
  }
  if (failures > 0) {
    console.error(logText.split("\n").slice(-40).join("\n"));
    console.error(`${failures} problem(s) with the webhook`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(failures > 0 ? 1 : 0);
}

try {
  const ports = await pollFor("certmgr's bound ports", () => fs.existsSync(portsFile) && fs.readFileSync(portsFile, "utf8"), 20000);
  const portOf = (name) => Number(new RegExp(`^${name}=.*:(\\d+)$`, "m").exec(ports)[1]);
  const webhookPort = portOf("webhook");
  const adminPort = portOf("admin");
  const ca = fs.readFileSync(path.join(config.ca.dir, "ca.pem"));

  // post sends one request over TLS, verifying the server as the API server would (the CA
  // bundle, the Service's DNS name).
  const post = (body, headers = {}) => new Promise((resolve, reject) => {
    const req = https.request({
      host: "127.0.0.1", port: webhookPort, servername: "localhost", ca, method: "POST", path: "/inject",
      headers: { "content-type": "application/json", ...headers }, agent: false, timeout: 10000,
    }, (res) => {
      let data = "";
      res.on("data", (c) => { data += c; });
      res.on("end", () => resolve({ status: res.statusCode, body: data }));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("no answer in 10 s")));
    req.end(body);
  });

  // --- 2. Every pod template: the webhook's patch gives what `inject` gives ------------------
  const manifests = [];
  const example = execFileSync("kubectl", ["kustomize", path.join(root, "deploy/kubernetes/overlays/example")], {
    encoding: "utf8", stdio: ["ignore", "pipe", "pipe"],
  });
  manifests.push(["overlays/example", YAML.parseAllDocuments(example).map((d) => d.toJS()).filter((o) => o)]);
  for (const file of fs.readdirSync(path.join(here, "workloads")).filter((f) => f.endsWith(".yaml")).sort()) {
    const text = fs.readFileSync(path.join(here, "workloads", file), "utf8");
    manifests.push([`workloads/${file}`, YAML.parseAllDocuments(text).map((d) => d.toJS()).filter((o) => o)]);
  }
  const pods = [];
  for (const [source, objects] of manifests) {
    for (const o of objects) {
      const template = o.kind === "Pod" ? o : o.spec?.template ?? o.spec?.jobTemplate?.spec?.template;
      if (!template?.spec) continue;
      pods.push({
        where: `${source}: ${o.kind} ${o.metadata.name}`,
        namespace: o.metadata.namespace || "default",
        pod: { apiVersion: "v1", kind: "Pod", metadata: { ...(template.metadata || {}), generateName: `${o.metadata.name}-` }, spec: template.spec },
      });
    }
  }
  // The same Pods through `inject` (pods that cannot be meshed are sent on their own below).
  const meshable = pods.filter((p) => !p.pod.spec.hostNetwork);
  const podsFile = path.join(dir, "pods.yaml");
  fs.writeFileSync(podsFile, meshable.map((p) => YAML.stringify(p.pod)).join("---\n"));
  const injected = YAML.parseAllDocuments(execFileSync(certmgrBin, ["inject", "--config", configFile, podsFile], {
    encoding: "utf8", stdio: ["ignore", "pipe", "pipe"],
  })).map((d) => d.toJS());
  check(injected.length === meshable.length, "inject", `${injected.length} documents for ${meshable.length} pods`);
  let patched = 0;
  for (const [i, p] of meshable.entries()) {
    const uid = `review-${i}`;
    const review = {
      apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
      request: {
        uid, kind: { group: "", version: "v1", kind: "Pod" }, resource: { group: "", version: "v1", resource: "pods" },
        operation: "CREATE", namespace: p.namespace, object: p.pod,
        userInfo: { username: "system:serviceaccount:kube-system:replicaset-controller" }, dryRun: false,
      },
    };
    const res = await post(JSON.stringify(review));
    if (!check(res.status === 200, p.where, `webhook answered ${res.status}: ${res.body}`)) continue;
    const answer = JSON.parse(res.body);
    check(answer.apiVersion === "admission.k8s.io/v1" && answer.kind === "AdmissionReview" && answer.response?.uid === uid &&
      answer.response.allowed === true, p.where, `not an allowed AdmissionReview for uid ${uid}: ${res.body.slice(0, 200)}`);
    let result = structuredClone(p.pod);
    if (answer.response?.patch) {
      check(answer.response.patchType === "JSONPatch", p.where, `patchType ${answer.response.patchType}`);
      const ops = JSON.parse(Buffer.from(answer.response.patch, "base64").toString("utf8"));
      try {
        result = jsonpatch.applyPatch(result, ops, /*validateOperation=*/true).newDocument;
        patched++;
      } catch (e) {
        check(false, p.where, `the patch does not apply: ${e.message}`);
        continue;
      }
    }
    // Equal as JSON values (an object's key order carries no meaning).
    check(JSON.stringify(canonical(result)) === JSON.stringify(canonical(injected[i])), p.where,
      `the patched Pod differs from what inject gives: ${JSON.stringify(jsonpatch.compare(injected[i], result)).slice(0, 600)}`);
  }
  check(patched >= 6, "webhook", `only ${patched} pods were patched`);
  for (const p of pods.filter((x) => x.pod.spec.hostNetwork)) {
    // Opted out: allowed as is. The same pod without its opt-out label: refused with the reason.
    const optedOut = JSON.parse((await post(JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
      request: { uid: "o", kind: { group: "", version: "v1", kind: "Pod" }, operation: "CREATE", namespace: p.namespace, object: p.pod } }))).body);
    check(optedOut.response.allowed === true && !optedOut.response.patch, p.where, "an opted-out pod was changed or refused");
    const labels = { ...p.pod.metadata.labels };
    delete labels["meshtls.io/inject"];
    const refused = JSON.parse((await post(JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
      request: { uid: "r", kind: { group: "", version: "v1", kind: "Pod" }, operation: "CREATE", namespace: p.namespace,
        object: { ...p.pod, metadata: { ...p.pod.metadata, labels } } } }))).body);
    check(refused.response.allowed === false && /hostNetwork pods cannot be meshed/.test(refused.response.status?.message),
      p.where, `a host-network pod was not refused with the reason: ${JSON.stringify(refused.response)}`);
  }

  // --- 3. Bad clients -----------------------------------------------------------------------
  const malformed = await post("{\"apiVersion\": ");
  check(malformed.status === 400 && /not JSON/.test(malformed.body), "malformed", `${malformed.status} ${malformed.body}`);
  const notReview = await post(JSON.stringify({ apiVersion: "v1", kind: "Pod" }));
  check(notReview.status === 400 && /not an admission.k8s.io\/v1 AdmissionReview/.test(notReview.body), "not a review", `${notReview.status} ${notReview.body}`);
  const oversized = await post("x".repeat(300000));
  check(oversized.status === 413 && /over 262144 bytes/.test(oversized.body), "oversized", `${oversized.status} ${oversized.body}`);
  const chunked = await post("{}", { "transfer-encoding": "chunked" });
  check(chunked.status === 411, "chunked", `${chunked.status} ${chunked.body}`);

  // closedWithin: the server ends `socket` within `ms` (after `act`), without answering.
  const closedWithin = (socket, ms, act) => new Promise((resolve) => {
    let data = "";
    const timer = setTimeout(() => { socket.destroy(); resolve({ closed: false, data }); }, ms);
    socket.on("data", (c) => { data += c; });
    socket.on("error", () => {});
    socket.on("close", () => { clearTimeout(timer); resolve({ closed: true, data }); });
    act(socket);
  });
  // A request head that never ends (TLS done): cut off at request_timeout (3 s).
  const slow = tls.connect({ host: "127.0.0.1", port: webhookPort, servername: "localhost", ca });
  const slowResult = await closedWithin(slow, 8000, (s) => s.on("secureConnect", () => s.write("POST /inject HTTP/1.1\r\nContent-")));
  check(slowResult.closed, "slow request", "a request head that never ended kept its connection past 8 s");
  // A connection that never starts its handshake.
  const silent = net.connect(webhookPort, "127.0.0.1");
  check((await closedWithin(silent, 8000, () => {})).closed, "silent connection", "kept past 8 s");
  // Plain HTTP on the TLS port.
  const plain = net.connect(webhookPort, "127.0.0.1");
  const plainResult = await closedWithin(plain, 5000, (s) => s.write("POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"));
  check(plainResult.closed && !plainResult.data.includes("HTTP/1.1 200"), "plain HTTP", "answered or kept open");
  // Still serving, and every case counted.
  const after = await post(JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
    request: { uid: "after", kind: { group: "", version: "v1", kind: "Service" }, operation: "CREATE", object: {} } }));
  check(after.status === 200 && JSON.parse(after.body).response.allowed === true, "after the bad clients", `${after.status} ${after.body}`);
  check(!exited, "certmgr", "exited");
  // One address holding its share (8) of connections: the next one is closed at once, well
  // before the request timeout (3 s) would close the others.
  const held = await Promise.all(Array.from({ length: 8 }, () => new Promise((resolve) => {
    const s = net.connect(webhookPort, "127.0.0.1", () => resolve(s));
    s.on("error", () => {});
  })));
  const ninth = net.connect(webhookPort, "127.0.0.1");
  const ninthResult = await closedWithin(ninth, 2000, () => {});
  check(ninthResult.closed, "per-address cap", "a ninth connection from one address was kept");
  held.forEach((s) => s.destroy());
  const metrics = await new Promise((resolve, reject) => {
    const req = net.connect(adminPort, "127.0.0.1", () => req.write("GET /metrics HTTP/1.0\r\n\r\n"));
    let data = "";
    req.on("data", (c) => { data += c; });
    req.on("end", () => resolve(data));
    req.on("error", reject);
  });
  const metric = (series) => Number(new RegExp(`^${series.replace(/[{}]/g, "\\$&")} (\\S+)$`, "m").exec(metrics)?.[1] ?? NaN);
  check(metric('meshtls_certmgr_admission_reviews_total{result="injected"}') === patched, "metrics", "injected reviews not counted");
  check(metric('meshtls_certmgr_admission_reviews_total{result="refused"}') >= 1, "metrics", "refused reviews not counted");
  check(metric('meshtls_certmgr_admission_reviews_total{result="malformed"}') >= 2, "metrics", "malformed reviews not counted");
  for (const reason of ["too_large", "malformed", "timeout", "tls", "over_capacity"]) {
    check(metric(`meshtls_certmgr_webhook_rejected_total{reason="${reason}"}`) >= 1, "metrics", `no webhook rejection counted as ${reason}`);
  }
  console.log(`webhook ok: ${patched} pods patched as inject meshes them, ${pods.length - meshable.length} refused or opted out, bad clients refused`);
} catch (e) {
  check(false, "webhook", e.stack || String(e));
}
await finish();
