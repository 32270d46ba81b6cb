// Checks the Kubernetes manifests (deploy/kubernetes), as ctest `manifests` runs it:
//
//   node tests/deploy/check-manifests.mjs --sidecar BIN --certmgr BIN
//
// 1. `kubectl kustomize` renders the base and every overlay. Pod templates that certmgr's
//    webhook would mesh (namespace or pod labelled meshtls.io/inject=enabled) are injected with
//    `meshtls-certmgr inject` (the same injector), and so are the realistic workloads of
//    tests/deploy/workloads. `inject` on every YAML file of deploy/ leaves all but the pods it
//    meshes exactly as they were.
// 2. Every rendered object validates against its Kubernetes schema: kubernetes-models (types,
//    required fields, formats; the prometheus-operator CRDs too) and, for unknown fields, a
//    strict JSON schema generated from the same package's TypeScript interfaces.
// 3. meshtls's own rules: every container non-root, read-only root filesystem, all capabilities
//    dropped, no privilege escalation, seccomp RuntimeDefault, resources set; certmgr's HA shape
//    (2 replicas, PDB, anti-affinity, probes, read-only CA Secret, Services, NetworkPolicy); each
//    workload's native sidecar (restartPolicy Always, projected token with audience meshtls,
//    namespace and service account from the downward API, readiness on /readyz); scrape
//    annotations and PodMonitors; the PrometheusRule equal to deploy/prometheus/meshtls-alerts.yaml.
//    No way around a sidecar: with explicit listeners an app container declares no port of its
//    own and inbound listeners forward to loopback; with transparent capture (injected pods)
//    every port an app container declares is captured, the init step runs first and alone holds
//    NET_ADMIN/NET_RAW, and no app container runs as the sidecar's uid; an nginx app runs on a
//    config of the manifests that listens on loopback only, Services and NetworkPolicies open
//    only ports the sidecar answers, and every namespace with workloads has a default-deny
//    ingress policy.
// 4. The configs (in ConfigMaps, or injected in the meshtls.io/sidecar-config annotation) pass
//    the binaries' own --check, and the paths and ports they name match the volumes and ports of
//    their pods.
// Each failure prints the overlay, the object and what is wrong; the exit code is 1 if any.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Ajv from "ajv";
import { createGenerator } from "ts-json-schema-generator";
import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const k8sDir = path.join(root, "deploy/kubernetes");
const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
for (const flag of ["sidecar", "certmgr"]) {
  if (!args[flag]) {
    console.error(`usage: check-manifests.mjs --sidecar BIN --certmgr BIN (missing --${flag})`);
    process.exit(2);
  }
}

let failures = 0;
function fail(where, what) {
  failures++;
  console.error(`FAIL ${where}: ${what}`);
}
function check(cond, where, what) {
  if (!cond) fail(where, what);
  return cond;
}

// --- 1. Render --------------------------------------------------------------------------------
const kustomizations = ["base", ...fs.readdirSync(path.join(k8sDir, "overlays")).map((o) => `overlays/${o}`)];
const rendered = {};
for (const k of kustomizations) {
  try {
    const out = execFileSync("kubectl", ["kustomize", path.join(k8sDir, k)], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 60000,
    });
    rendered[k] = YAML.parseAllDocuments(out).map((d) => d.toJS()).filter((o) => o);
    check(rendered[k].length > 0, k, "renders no objects");
  } catch (e) {
    fail(k, `kubectl kustomize failed: ${e.stderr || e.message}`);
    rendered[k] = [];
  }
}

// --- 1b. Injection ------------------------------------------------------------------------------
// What certmgr's webhook does in the cluster, done here by `meshtls-certmgr inject` (the same
// injector) with the base's certmgr config: pod templates of namespaces labelled
// meshtls.io/inject=enabled (or labelled so themselves) are replaced by their injected form.
// The realistic workloads of tests/deploy/workloads are injected whole, as `inject` on a user's
// manifests would; they are checked like the rest except for the namespace-wide rules
// (NetworkPolicies, Services), which those files do not try to model.
const certmgrConfig = path.join(k8sDir, "base/certmgr-config.yaml");
function inject(objects, where) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meshtls-inject-"));
  try {
    const file = path.join(dir, "in.yaml");
    fs.writeFileSync(file, objects.map((o) => YAML.stringify(o)).join("---\n"));
    const out = execFileSync(args.certmgr, ["inject", "--config", certmgrConfig, file], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 20000,
    });
    return YAML.parseAllDocuments(out).map((d) => d.toJS());
  } catch (e) {
    fail(where, `meshtls-certmgr inject failed: ${(e.stderr || e.message).trim()}`);
    return objects;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
// templateOf is an object's Pod template: a bare Pod's own metadata and spec, a CronJob's under
// its jobTemplate, every other workload's spec.template; undefined for other kinds.
const templateOf = (o) =>
  o?.kind === "Pod" ? o : o?.spec?.template ?? o?.spec?.jobTemplate?.spec?.template;
const isInjected = (o) => Boolean(templateOf(o)?.metadata?.annotations?.["meshtls.io/sidecar-config"]);
for (const [k, objects] of Object.entries(rendered)) {
  const enabled = new Set(objects.filter((o) => o.kind === "Namespace" && o.metadata.labels?.["meshtls.io/inject"] === "enabled")
    .map((o) => o.metadata.name));
  const selected = objects.map((o, i) => [o, i]).filter(([o]) => o.spec?.template?.spec &&
    (enabled.has(o.metadata.namespace) || o.spec.template.metadata?.labels?.["meshtls.io/inject"] === "enabled"));
  if (selected.length === 0) continue;
  const injected = inject(selected.map(([o]) => o), k);
  selected.forEach(([, i], j) => { rendered[k][i] = injected[j]; });
  check(selected.every(([, i]) => isInjected(rendered[k][i])), k, "a pod template the webhook selects was not injected");
}
// `inject` on every YAML file of deploy/ as it stands: it succeeds, leaves every object without a
// Pod template (and certmgr's opted-out pods) exactly as it was, and meshes the rest.
const deployFiles = execFileSync("git", ["-C", root, "ls-files", "deploy"], { encoding: "utf8" })
  .split("\n").filter((f) => /\.ya?ml$/.test(f));
for (const file of deployFiles) {
  const text = fs.readFileSync(path.join(root, file), "utf8");
  const before = YAML.parseAllDocuments(text).map((d) => d.toJS());
  const after = inject(before.filter((o) => o), file);
  const kept = before.filter((o) => o);
  if (!check(after.length === kept.length, file, `inject wrote ${after.length} documents for ${kept.length}`)) continue;
  kept.forEach((o, i) => {
    const template = templateOf(o);
    const optedOut = template?.metadata?.labels?.["meshtls.io/inject"] === "disabled";
    const where = `${file}: ${o?.kind} ${o?.metadata?.name}`;
    if (template?.spec && !optedOut) {
      check(Boolean(templateOf(after[i])?.metadata?.annotations?.["meshtls.io/sidecar-config"]), where, "not injected");
    } else {
      check(JSON.stringify(after[i]) === JSON.stringify(o), where, "changed by inject, which must leave it as it is");
    }
  });
}

const workloadsDir = path.join(here, "workloads");
const workloadSets = new Set();
for (const file of fs.readdirSync(workloadsDir).filter((f) => f.endsWith(".yaml")).sort()) {
  const k = `tests/deploy/workloads/${file}`;
  const objects = YAML.parseAllDocuments(fs.readFileSync(path.join(workloadsDir, file), "utf8")).map((d) => d.toJS()).filter((o) => o);
  rendered[k] = inject(objects, k).filter((o) => o);
  workloadSets.add(k);
  for (const o of rendered[k].filter((x) => templateOf(x)?.spec)) {
    const template = templateOf(o);
    const disabled = template.metadata?.labels?.["meshtls.io/inject"] === "disabled";
    check(disabled || Boolean(template.metadata?.annotations?.["meshtls.io/sidecar-config"]), `${k}: ${o.kind} ${o.metadata.name}`, "not injected");
  }
}

// --- 2. Schemas -------------------------------------------------------------------------------
const models = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1",
  "batch/v1": "kubernetes-models/batch/v1",
  "admissionregistration.k8s.io/v1": "kubernetes-models/admissionregistration.k8s.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};
const kinds = new Set();
for (const objects of Object.values(rendered)) {
  for (const o of objects) kinds.add(`${o.apiVersion} ${o.kind}`);
}
// The strict schema: the package's own interfaces (IDeployment, IPodMonitor...) with no
// additional properties allowed anywhere.
const typesFile = path.join(os.tmpdir(), `meshtls-k8s-types-${process.pid}.ts`);
const typeNames = {};
const imports = [];
for (const kv of kinds) {
  const [apiVersion, kind] = kv.split(" ");
  const module = models[apiVersion];
  if (!module) continue;  // reported below
  const alias = `${apiVersion.replace(/[^a-z0-9]/gi, "_")}_${kind}`;
  typeNames[kv] = alias;
  imports.push(`import type { I${kind} as ${alias} } from "${path.join(here, "node_modules", module, kind)}";`);
}
fs.writeFileSync(
  typesFile,
  `${imports.join("\n")}\nexport interface AllKinds {\n${Object.values(typeNames).map((a) => `  ${a}: ${a};`).join("\n")}\n}\n`,
);
const strictSchema = createGenerator({
  path: typesFile,
  type: "AllKinds",
  additionalProperties: false,
  skipTypeCheck: true,
  expose: "all",
  topRef: false,
  jsDoc: "none",
  tsconfig: path.join(here, "tsconfig.json"),
}).createSchema("AllKinds");
fs.unlinkSync(typesFile);
const ajv = new Ajv({ allErrors: true, strict: false });
const strictValidators = {};
for (const [kv, alias] of Object.entries(typeNames)) {
  strictValidators[kv] = ajv.compile({ ...strictSchema.properties[alias], definitions: strictSchema.definitions });
}

function describe(o) {
  return `${o.kind} ${o.metadata?.namespace ? o.metadata.namespace + "/" : ""}${o.metadata?.name}`;
}
for (const [k, objects] of Object.entries(rendered)) {
  for (const o of objects) {
    const where = `${k}: ${describe(o)}`;
    const kv = `${o.apiVersion} ${o.kind}`;
    const module = models[o.apiVersion];
    if (!check(module, where, `no schema known for apiVersion ${o.apiVersion}`)) continue;
    const Model = (await import(`${module}/${o.kind}`))[o.kind];
    if (!check(Model, where, `no schema known for kind ${o.kind}`)) continue;
    try {
      new Model(o).validate();
    } catch (e) {
      fail(where, `schema: ${e.message}`);
    }
    const strict = strictValidators[kv];
    if (!strict(o)) {
      for (const err of strict.errors.filter((e) => e.keyword === "additionalProperties")) {
        fail(where, `unknown field ${err.instancePath}/${err.params.additionalProperty}`);
      }
    }
  }
}

// --- 3. meshtls's rules -----------------------------------------------------------------------
const find = (objects, kind, name, ns) =>
  objects.find((o) => o.kind === kind && o.metadata.name === name && (!ns || o.metadata.namespace === ns));
// podTemplates: the objects with a Pod template, each as {metadata, spec: {template}} (a
// CronJob's template is under its jobTemplate; a bare Pod is its own template).
const podTemplates = (objects) => objects.flatMap((o) =>
  o.spec?.template?.spec ? [o]
  : templateOf(o)?.spec ? [{ ...o, spec: { template: { metadata: templateOf(o).metadata, spec: templateOf(o).spec } } }]
  : []);
const portOf = (container, name) => (container.ports || []).find((p) => p.name === name)?.containerPort;
const listenPort = (address) => Number(String(address).split(":").pop());
// selects reports whether a label selector (matchLabels and matchExpressions) matches labels;
// an empty selector matches every pod, as in a NetworkPolicy's podSelector {}.
function selects(selector, labels) {
  if (!selector) return false;
  const matchesLabels = Object.entries(selector.matchLabels || {}).every(([l, v]) => labels[l] === v);
  return matchesLabels && (selector.matchExpressions || []).every((e) => {
    const has = Object.hasOwn(labels, e.key);
    switch (e.operator) {
      case "In": return has && e.values.includes(labels[e.key]);
      case "NotIn": return !has || !e.values.includes(labels[e.key]);
      case "Exists": return has;
      case "DoesNotExist": return !has;
      default: return false;
    }
  });
}
const emptySelector = (selector) =>
  !Object.keys(selector?.matchLabels || {}).length && !(selector?.matchExpressions || []).length;
// A default-deny ingress policy: it selects every pod of its namespace for Ingress and admits
// nothing, so a pod is reachable only on what another policy opens for it.
const isDefaultDenyIngress = (np) =>
  emptySelector(np.spec.podSelector) && (np.spec.policyTypes || ["Ingress"]).includes("Ingress") &&
  !(np.spec.ingress || []).length;
const isLoopback = (address) => /^(127\.\d+\.\d+\.\d+|\[::1\]|localhost)(:\d+)?$/.test(String(address));

function checkContainerSecurity(where, pod, c) {
  const sc = c.securityContext || {};
  const psc = pod.securityContext || {};
  const w = `${where} container ${c.name}`;
  if (c.name === "meshtls-init" && (c.args || [])[0] === "init-network") {
    // The injected init step: the one container allowed root, and then only NET_ADMIN and
    // NET_RAW (for iptables in the pod's network namespace), once, before every other one.
    check(sc.runAsUser === 0 && sc.runAsNonRoot === false, w, "the init step does not run as root explicitly");
    check(JSON.stringify([...(sc.capabilities?.add || [])].sort()) === JSON.stringify(["NET_ADMIN", "NET_RAW"]), w,
      "the init step adds capabilities other than NET_ADMIN and NET_RAW");
    check((sc.capabilities?.drop || []).includes("ALL"), w, "capabilities.drop does not include ALL");
    check(sc.readOnlyRootFilesystem === true && sc.allowPrivilegeEscalation === false && sc.privileged !== true, w,
      "the init step may write its root filesystem, escalate or is privileged");
    check((sc.seccompProfile?.type ?? psc.seccompProfile?.type) === "RuntimeDefault", w, "seccompProfile is not RuntimeDefault");
    check(pod.initContainers?.[0] === c && !c.restartPolicy, w, "the init step is not the first init container, run once");
    for (const kind of ["requests", "limits"]) {
      check(c.resources?.[kind]?.cpu && c.resources?.[kind]?.memory, w, `resources.${kind} needs cpu and memory`);
    }
    return;
  }
  check((sc.runAsNonRoot ?? psc.runAsNonRoot) === true, w, "runAsNonRoot is not true");
  const uid = sc.runAsUser ?? psc.runAsUser;
  check(uid !== 0, w, "runs as uid 0");
  check(sc.readOnlyRootFilesystem === true, w, "readOnlyRootFilesystem is not true");
  check(sc.allowPrivilegeEscalation === false, w, "allowPrivilegeEscalation is not false");
  check((sc.capabilities?.drop || []).includes("ALL"), w, "capabilities.drop does not include ALL");
  check(!(sc.capabilities?.add || []).length, w, "adds capabilities");
  check(sc.privileged !== true, w, "is privileged");
  check((sc.seccompProfile?.type ?? psc.seccompProfile?.type) === "RuntimeDefault", w, "seccompProfile is not RuntimeDefault");
  for (const kind of ["requests", "limits"]) {
    check(c.resources?.[kind]?.cpu && c.resources?.[kind]?.memory, w, `resources.${kind} needs cpu and memory`);
  }
}

for (const [k, objects] of Object.entries(rendered)) {
  for (const o of podTemplates(objects)) {
    const pod = o.spec.template.spec;
    check([...(pod.initContainers || []), ...pod.containers].filter((c) => (c.securityContext?.capabilities?.add || []).length).length <=
      (isInjected(o) ? 1 : 0), `${k}: ${describe(o)}`, "more than the injected init step adds capabilities");
    const where = `${k}: ${describe(o)}`;
    const optedOut = o.spec.template.metadata?.labels?.["meshtls.io/inject"] === "disabled";
    check((workloadSets.has(k) && optedOut) || (pod.hostNetwork !== true && pod.hostPID !== true && pod.hostIPC !== true),
      where, "uses a host namespace");
    const containers = [...(pod.initContainers || []), ...pod.containers];
    check(containers.length > 0, where, "has no containers");
    for (const c of containers) checkContainerSecurity(where, pod, c);
    for (const v of pod.volumes || []) {
      check(!v.hostPath, where, `volume ${v.name} is a hostPath`);
    }
  }
}

// The control plane, in every rendering (each overlay includes the base).
for (const [k, objects] of Object.entries(rendered)) {
  if (workloadSets.has(k)) continue;
  const ns = find(objects, "Namespace", "meshtls-system");
  check(ns, k, "no meshtls-system Namespace");
  const d = find(objects, "Deployment", "certmgr", "meshtls-system");
  if (!check(d, k, "no certmgr Deployment in meshtls-system")) continue;
  const where = `${k}: ${describe(d)}`;
  const pod = d.spec.template.spec;
  const labels = d.spec.template.metadata.labels;
  check(d.spec.replicas === 2, where, `replicas is ${d.spec.replicas}, not 2`);
  check(d.spec.strategy?.rollingUpdate?.maxUnavailable === 0, where, "a rollout may take a replica away first (maxUnavailable)");
  const anti = pod.affinity?.podAntiAffinity;
  const terms = [...(anti?.requiredDuringSchedulingIgnoredDuringExecution || []),
    ...(anti?.preferredDuringSchedulingIgnoredDuringExecution || []).map((t) => t.podAffinityTerm)];
  check(terms.some((t) => t.topologyKey === "kubernetes.io/hostname" &&
    Object.entries(t.labelSelector?.matchLabels || {}).every(([l, v]) => labels[l] === v)), where,
  "no pod anti-affinity between certmgr replicas on kubernetes.io/hostname");
  const pdb = objects.find((o) => o.kind === "PodDisruptionBudget" && o.metadata.namespace === "meshtls-system");
  check(pdb && Object.entries(pdb.spec.selector.matchLabels).every(([l, v]) => labels[l] === v) &&
    (pdb.spec.minAvailable >= 1 || pdb.spec.maxUnavailable === 1), where, "no PodDisruptionBudget keeping a replica up");
  const sa = find(objects, "ServiceAccount", pod.serviceAccountName, "meshtls-system");
  check(sa, where, `its ServiceAccount ${pod.serviceAccountName} is not in the manifests`);
  const c = pod.containers.find((x) => x.name === "certmgr");
  if (!check(c, where, "no certmgr container")) continue;
  check(c.readinessProbe?.httpGet?.path === "/readyz", where, "readiness probe is not /readyz");
  check(c.livenessProbe?.httpGet?.path === "/healthz", where, "liveness probe is not /healthz");
  const annotations = d.spec.template.metadata.annotations || {};
  check(annotations["prometheus.io/scrape"] === "true" && Number(annotations["prometheus.io/port"]) === portOf(c, "admin"),
    where, "pods lack prometheus.io/scrape and port annotations for the admin port");
  const svc = find(objects, "Service", "certmgr", "meshtls-system");
  check(svc && ["grpc", "admin"].every((p) => svc.spec.ports.some((sp) => sp.targetPort === p)), where,
    "the certmgr Service does not expose the grpc and admin ports");
  // The config, its mounts and ports.
  const mounts = Object.fromEntries(c.volumeMounts.map((m) => [m.name, m]));
  const volumes = Object.fromEntries(pod.volumes.map((v) => [v.name, v]));
  const configVolume = Object.values(volumes).find((v) => v.configMap?.name?.startsWith("certmgr-config"));
  const configMount = configVolume && c.volumeMounts.find((m) => m.name === configVolume.name);
  if (!check(configMount, where, "the certmgr-config ConfigMap is not mounted")) continue;
  const configArg = c.args[c.args.indexOf("--config") + 1];
  check(configArg === configMount.mountPath, where, `--config ${configArg} is not the ConfigMap's mount ${configMount.mountPath}`);
  const cm = find(objects, "ConfigMap", configVolume.configMap.name, "meshtls-system");
  if (!check(cm, where, `ConfigMap ${configVolume.configMap.name} is not in the manifests`)) continue;
  const text = cm.data[configMount.subPath];
  const config = YAML.parse(text);
  const caVolume = Object.values(volumes).find((v) => v.secret);
  check(caVolume?.secret?.secretName === "meshtls-ca", where, "the CA Secret meshtls-ca is not a volume");
  check(mounts[caVolume?.name]?.readOnly === true && mounts[caVolume?.name]?.mountPath === config.ca.dir, where,
    `the CA Secret is not mounted read-only at ca.dir (${config.ca.dir})`);
  check(listenPort(config.listen) === portOf(c, "grpc"), where, "listen port is not the grpc container port");
  check(listenPort(config.admin.listen) === portOf(c, "admin") && config.admin.listen.startsWith("0.0.0.0:"), where,
    "admin.listen is not 0.0.0.0 on the admin container port (probes and scrapes come from outside the pod)");
  const jwks = config.authenticators?.kubernetes?.jwks_file;
  check(jwks && c.volumeMounts.some((m) => path.dirname(jwks) === m.mountPath && volumes[m.name]?.configMap),
    where, `authenticators.kubernetes.jwks_file ${jwks} is not in a mounted ConfigMap`);
  check(config.authenticators?.kubernetes?.audience === "meshtls" || config.authenticators?.kubernetes?.audience === undefined,
    where, "the Kubernetes authenticator's audience is not meshtls");
  runCheck(where, args.certmgr, text, []);
  // The NetworkPolicy: only sidecars reach gRPC.
  const np = objects.find((o) => o.kind === "NetworkPolicy" && o.metadata.namespace === "meshtls-system" &&
    !isDefaultDenyIngress(o) && selects(o.spec.podSelector, labels));
  if (check(np, where, "no NetworkPolicy selects the certmgr pods")) {
    const grpcRules = np.spec.ingress.filter((r) => r.ports?.some((p) => p.port === "grpc" || p.port === portOf(c, "grpc")));
    check(grpcRules.length === 1 && grpcRules[0].from.length > 0 &&
      grpcRules[0].from.every((f) => f.podSelector?.matchLabels?.["meshtls.io/sidecar"] === "true"), where,
    "the NetworkPolicy lets more than sidecars (meshtls.io/sidecar: \"true\") reach the gRPC port");
    // Every rule names its peers, but the webhook's: the API server calls from addresses no
    // selector names (base/networkpolicy.yaml).
    check(np.spec.ingress.every((r) => r.ports?.length && (r.from?.length ||
      r.ports.every((p) => p.port === "webhook" || p.port === portOf(c, "webhook")))), where,
    "a NetworkPolicy rule allows every port, or every peer to a port other than the webhook's");
    check(np.spec.ingress.some((r) => r.ports.some((p) => p.port === "webhook")), where, "no NetworkPolicy rule opens the webhook port");
  }
}

// The injection webhook: every webhook calls certmgr's meshtls-injector Service at /inject, never
// selects meshtls-system or kube-system (certmgr and the cluster's own pods always start), the
// CREATE ones fail closed, and certmgr's own pods are opted out.
for (const [k, objects] of Object.entries(rendered)) {
  if (workloadSets.has(k)) continue;
  const mwc = objects.find((o) => o.kind === "MutatingWebhookConfiguration" && o.metadata.name === "meshtls-injector");
  if (!check(mwc, k, "no MutatingWebhookConfiguration meshtls-injector")) continue;
  const svc = find(objects, "Service", "meshtls-injector", "meshtls-system");
  const certmgr = find(objects, "Deployment", "certmgr", "meshtls-system");
  check(svc && certmgr && selects({ matchLabels: svc.spec.selector }, certmgr.spec.template.metadata.labels) &&
    svc.spec.ports.some((p) => p.port === 443 && p.targetPort === "webhook"), k, "the meshtls-injector Service does not reach certmgr's webhook port");
  check(certmgr?.spec.template.metadata.labels["meshtls.io/inject"] === "disabled", k, "certmgr's pods are not opted out of injection");
  for (const w of mwc.webhooks) {
    const where = `${k}: webhook ${w.name}`;
    check(w.clientConfig?.service?.name === "meshtls-injector" && w.clientConfig.service.namespace === "meshtls-system" &&
      w.clientConfig.service.path === "/inject", where, "does not call meshtls-system/meshtls-injector at /inject");
    check(w.sideEffects === "None" && w.admissionReviewVersions?.includes("v1"), where, "not sideEffects None with admission v1");
    check((w.namespaceSelector?.matchExpressions || []).some((e) => e.key === "kubernetes.io/metadata.name" && e.operator === "NotIn" &&
      ["meshtls-system", "kube-system"].every((n) => e.values.includes(n))), where, "may select meshtls-system or kube-system");
    const creates = w.rules.some((r) => r.operations.includes("CREATE"));
    check(!creates || w.failurePolicy === "Fail", where, "a CREATE webhook that does not fail closed");
    check(creates || w.failurePolicy === "Ignore", where, "an UPDATE webhook that fails closed (updates would wait for certmgr)");
  }
}

// Workloads: every pod template outside meshtls-system carries a native meshtls sidecar (but
// those opted out of injection). Its config is a ConfigMap of the manifests (hand-written) or
// the meshtls.io/sidecar-config annotation, mounted through the downward API (injected).
for (const [k, objects] of Object.entries(rendered)) {
  const modelsPolicies = !workloadSets.has(k);
  for (const o of podTemplates(objects).filter((x) => x.metadata.namespace !== "meshtls-system")) {
    const where = `${k}: ${describe(o)}`;
    const pod = o.spec.template.spec;
    const annotations = o.spec.template.metadata.annotations || {};
    if (o.spec.template.metadata.labels?.["meshtls.io/inject"] === "disabled") continue;
    const s = (pod.initContainers || []).find((c) => c.name === "meshtls-sidecar");
    if (!check(s, where, "no meshtls-sidecar init container")) continue;
    check(s.restartPolicy === "Always", where, "the sidecar is not a native sidecar (restartPolicy: Always)");
    check(o.spec.template.metadata.labels["meshtls.io/sidecar"] === "true", where, "the pod lacks meshtls.io/sidecar: \"true\" (certmgr's NetworkPolicy)");
    check(s.readinessProbe?.httpGet?.path === "/readyz", where, "the sidecar's readiness probe is not /readyz");
    const env = Object.fromEntries((s.env || []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    const flag = (name) => (s.args || []).find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
    check(env[flag("namespace")?.slice(2, -1)] === "metadata.namespace", where, "--namespace does not come from the downward API (metadata.namespace)");
    check(env[flag("service-account")?.slice(2, -1)] === "spec.serviceAccountName", where, "--service-account does not come from the downward API (spec.serviceAccountName)");
    if (modelsPolicies) {
      check(pod.automountServiceAccountToken === false, where, "the app gets an API token it does not need (automountServiceAccountToken)");
    }
    // The injector leaves an app's own scrape annotations alone (the sidecar is then scraped by
    // its port name, as the prometheus-operator overlay's PodMonitor does).
    const appScraped = isInjected(o) && !modelsPolicies && annotations["prometheus.io/port"] !== undefined;
    check(appScraped || (annotations["prometheus.io/scrape"] === "true" && Number(annotations["prometheus.io/port"]) === portOf(s, "meshtls-admin")),
      where, "pods lack prometheus.io/scrape and port annotations for the sidecar's admin port");
    // The config, its mounts and ports.
    const volumes = Object.fromEntries(pod.volumes.map((v) => [v.name, v]));
    const mountOf = (file) => s.volumeMounts.find((m) => m.mountPath === file || m.mountPath === path.dirname(file));
    const configFile = flag("config");
    const configMount = mountOf(configFile);
    const configVolume = configMount && volumes[configMount.name];
    let text;
    if (configVolume?.downwardAPI) {
      const item = configVolume.downwardAPI.items.find((x) => x.path === path.basename(configFile));
      const annotation = /^metadata\.annotations\['(.+)'\]$/.exec(item?.fieldRef?.fieldPath || "")?.[1];
      text = annotations[annotation];
      check(typeof text === "string", where, `--config ${configFile} is the downward API's ${item?.fieldRef?.fieldPath}, which the pod does not have`);
    } else {
      const cm = configVolume?.configMap && find(objects, "ConfigMap", configVolume.configMap.name, o.metadata.namespace);
      check(cm, where, `--config ${configFile} is not in a mounted ConfigMap of the manifests`);
      text = cm?.data?.[configMount.subPath || path.basename(configFile)];
    }
    if (typeof text !== "string") continue;
    const config = YAML.parse(text);
    const tokenMount = mountOf(config.identity.certmgr.token_file);
    const token = tokenMount && volumes[tokenMount.name]?.projected?.sources?.find((x) => x.serviceAccountToken);
    check(token?.serviceAccountToken?.audience === "meshtls" &&
      token.serviceAccountToken.path === path.basename(config.identity.certmgr.token_file), where,
    `token_file ${config.identity.certmgr.token_file} is not a projected ServiceAccount token with audience meshtls`);
    const caMount = mountOf(config.identity.certmgr.server_ca);
    check(caMount && volumes[caMount.name]?.configMap, where, `server_ca ${config.identity.certmgr.server_ca} is not in a mounted ConfigMap`);
    check(listenPort(config.admin.listen) === portOf(s, "meshtls-admin") && config.admin.listen.startsWith("0.0.0.0:"), where,
      "admin.listen is not 0.0.0.0 on the meshtls-admin container port");
    // No way around the sidecar. Explicit listeners: an app container declares no port of its
    // own (its port is reachable in plain text at <pod IP>:port). Transparent inbound: every
    // port an app container declares is captured, none excluded.
    const sidecarPorts = s.ports || [];
    const appContainers = [...(pod.initContainers || []).filter((c) => c !== s && c.name !== "meshtls-init"), ...pod.containers];
    const inbound = config.transparent?.inbound;
    if (inbound && config.transparent.proxy_uid !== undefined) {
      const init = (pod.initContainers || [])[0];
      check(init?.name === "meshtls-init" && mountOf(configFile) && (init.volumeMounts || []).some((m) => m.name === configMount.name) &&
        (init.args || []).includes(`--config=${configFile}`), where, "the capture rules' init step does not run first on the sidecar's config");
      check(s.securityContext?.runAsUser === config.transparent.proxy_uid, where,
        `the sidecar does not run as transparent.proxy_uid (${config.transparent.proxy_uid}), which the capture rules exempt`);
      for (const c of appContainers) {
        const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
        check(uid !== config.transparent.proxy_uid, where, `app container ${c.name} runs as the sidecar's uid and so bypasses the capture`);
      }
    }
    for (const c of appContainers) {
      for (const p of (c.ports || []).filter((x) => (x.protocol || "TCP") === "TCP")) {
        const covered = inbound ? !(inbound.exclude_ports || []).includes(p.containerPort) &&
          !sidecarPorts.some((sp) => sp.containerPort === p.containerPort)
          : sidecarPorts.some((sp) => sp.containerPort === p.containerPort);
        check(covered, where,
          `app container ${c.name} declares port ${p.containerPort}${p.name ? ` (${p.name})` : ""}: ` +
          (inbound ? "it is not captured (transparent.inbound.exclude_ports), so other pods reach it around the sidecar"
            : "an app listens on loopback only, reached through the sidecar's inbound listener"));
      }
    }
    for (const l of config.inbound || []) {
      check((s.ports || []).some((p) => p.containerPort === listenPort(l.listen)), where, `inbound ${l.name} listens on a port the container does not declare`);
      check(isLoopback(l.forward), where,
        `inbound ${l.name} forwards to ${l.forward}, not loopback: the app must listen on loopback only`);
    }
    for (const l of config.outbound || []) {
      check(l.listen.startsWith("127.0.0.1:"), where, `outbound ${l.name} listens beyond loopback`);
      const [svcName, svcNs] = l.connect.split(":")[0].split(".");
      const svc = find(objects, "Service", svcName, svcNs);
      check(svc && svc.spec.ports.some((p) => p.port === listenPort(l.connect)), where, `outbound ${l.name} connects to ${l.connect}, which no Service of the manifests serves`);
    }
    // Ports that reach the app around the sidecar, and ports that reach it through the capture.
    const declared = appContainers.flatMap((c) => (c.ports || []).map((p) => p.containerPort));
    const capturedPorts = new Set(inbound ? declared.filter((p) => !(inbound.exclude_ports || []).includes(p)) : []);
    const appPorts = new Set([
      ...(config.inbound || []).map((l) => listenPort(l.forward)),
      ...declared.filter((p) => !capturedPorts.has(p)),
      ...(inbound?.exclude_ports || []),
    ]);
    const deliveredPorts = [...(config.inbound || []).map((l) => listenPort(l.forward)), ...capturedPorts];
    for (const c of appContainers.filter((x) => /nginx/.test(String(x.image).split("/").pop()))) {
      checkNginxListensOnLoopback(where, objects, o.metadata.namespace, pod, c, deliveredPorts);
    }
    if (modelsPolicies) {
      checkExposure(where, objects, o, s, appPorts, capturedPorts, config);
    }
    runCheck(where, args.sidecar, text, ["--namespace", o.metadata.namespace || "default", "--service-account", pod.serviceAccountName || "default"]);
  }
}

// checkNginxListensOnLoopback: the nginx images' entrypoint scripts rewrite and add listen lines
// (nginx-unprivileged's 10-listen-on-ipv6-by-default.sh adds `listen [::]:8080` to
// conf.d/default.conf, whose own `listen 8080` is every interface), so an nginx app container
// must run nginx itself (command, not the entrypoint) on a config of the manifests that includes
// no other file and listens on loopback only, on the ports its sidecar forwards to.
function checkNginxListensOnLoopback(where, objects, namespace, pod, c, forwardPorts) {
  const w = `${where} container ${c.name}`;
  const argv = [...(c.command || []), ...(c.args || [])];
  if (!check(argv[0] === "nginx" && argv.includes("-c"), w,
    "runs nginx through the image's entrypoint or on the image's config, whose listen lines reach every interface: " +
    "set command to [nginx, -c, <a file of a mounted ConfigMap>]")) return;
  const configFile = argv[argv.indexOf("-c") + 1];
  const mount = (c.volumeMounts || []).find((m) => m.mountPath === configFile || m.mountPath === path.dirname(configFile));
  const volume = mount && (pod.volumes || []).find((v) => v.name === mount.name);
  const cm = volume?.configMap && find(objects, "ConfigMap", volume.configMap.name, namespace);
  const text = cm?.data?.[mount.mountPath === configFile ? mount.subPath || path.basename(configFile) : path.basename(configFile)];
  if (!check(typeof text === "string", w, `nginx -c ${configFile} is not a file of a mounted ConfigMap of the manifests`)) return;
  const directives = text.replace(/#.*$/gm, "");
  check(!/(^|[\s;{}])include\s/.test(directives), w, `${configFile} includes other files, whose listen lines this check cannot see`);
  const listens = [...directives.matchAll(/(?:^|[\s;{}])listen\s+([^\s;]+)/g)].map((m) => m[1]);
  check(listens.length > 0, w, `${configFile} has no listen directive (nginx then listens on every interface)`);
  for (const address of listens) {
    check(isLoopback(address) || address.startsWith("unix:"), w,
      `${configFile}: listen ${address} is not loopback (other pods reach it in plain text, around the sidecar)`);
  }
  for (const port of forwardPorts) {
    check(listens.some((a) => listenPort(a) === port), w, `${configFile} does not listen on the sidecar's forward port ${port}`);
  }
}

// checkExposure: a workload's Services and the NetworkPolicies that select its pods open only
// the sidecar's ports (its own, and app ports its capture takes), never the app's uncaptured
// ones; its inbound ports are open to the peers that need them
// and the sidecar's admin port to Prometheus (the namespace's default-deny would refuse them).
function checkExposure(where, objects, workload, sidecar, appPorts, capturedPorts, config) {
  const namespace = workload.metadata.namespace;
  const labels = workload.spec.template.metadata.labels || {};
  const pod = workload.spec.template.spec;
  const allContainers = [...(pod.initContainers || []), ...pod.containers];
  // resolve: a Service targetPort or NetworkPolicy port (number or container port name) of this pod.
  const resolve = (port) =>
    typeof port === "number" ? port
    : allContainers.flatMap((c) => c.ports || []).find((p) => p.name === port)?.containerPort;
  // A port the sidecar answers: its own, or an app port its capture takes.
  const sidecarPort = (n) => (sidecar.ports || []).some((p) => p.containerPort === n) || capturedPorts.has(n);
  for (const svc of objects.filter((x) => x.kind === "Service" && x.metadata.namespace === namespace &&
    x.spec.selector && selects({ matchLabels: x.spec.selector }, labels))) {
    for (const p of svc.spec.ports || []) {
      const target = resolve(p.targetPort ?? p.port);
      check(sidecarPort(target) && !appPorts.has(target), `${where} (${describe(svc)})`,
        `Service port ${p.name || p.port} targets ${p.targetPort ?? p.port}, not a port of the sidecar`);
    }
  }
  const opened = [];  // {port, from} of every ingress rule that selects this pod
  for (const np of objects.filter((x) => x.kind === "NetworkPolicy" && x.metadata.namespace === namespace &&
    (x.spec.policyTypes || ["Ingress"]).includes("Ingress") && selects(x.spec.podSelector, labels))) {
    const w = `${where} (${describe(np)})`;
    for (const rule of np.spec.ingress || []) {
      check(rule.from?.length > 0, w, "an ingress rule admits every peer");
      if (!check(rule.ports?.length > 0 && rule.ports.every((p) => p.port !== undefined), w,
        "an ingress rule opens every port of the pod, the app's included")) continue;
      for (const p of rule.ports) {
        const first = resolve(p.port);
        const last = p.endPort ?? first;
        const inRange = (n) => first !== undefined && n >= first && n <= last;
        if (!check(![...appPorts].some(inRange), w, `opens the app's port (${p.port}${p.endPort ? `-${p.endPort}` : ""}): ` +
          "other pods would reach the app in plain text, around the sidecar")) continue;
        check(first !== undefined && first === last && sidecarPort(first), w,
          `opens port ${p.port}${p.endPort ? `-${p.endPort}` : ""}, which is not a port of the sidecar`);
        opened.push({ port: first, from: rule.from || [] });
      }
    }
  }
  for (const l of config.inbound || []) {
    check(opened.some((r) => r.port === listenPort(l.listen) && r.from.length > 0), where,
      `no NetworkPolicy opens inbound ${l.name}'s port ${listenPort(l.listen)} to its callers`);
  }
  check(opened.some((r) => r.port === portOf(sidecar, "meshtls-admin") &&
    r.from.some((f) => f.podSelector?.matchLabels?.["app.kubernetes.io/name"] === "prometheus")), where,
  "no NetworkPolicy opens the sidecar's meshtls-admin port to Prometheus (app.kubernetes.io/name: prometheus)");
}

// Every namespace with workloads has a default-deny ingress NetworkPolicy: the second wall, so
// that a port an app opens by mistake is still closed to other pods.
for (const [k, objects] of Object.entries(rendered)) {
  if (workloadSets.has(k)) continue;
  for (const namespace of new Set(podTemplates(objects).map((o) => o.metadata.namespace))) {
    check(objects.some((o) => o.kind === "NetworkPolicy" && o.metadata.namespace === namespace && isDefaultDenyIngress(o)),
      `${k}: namespace ${namespace}`,
      "has workloads but no default-deny ingress NetworkPolicy (podSelector {}, policyTypes [Ingress], no ingress rules)");
  }
}

// Monitoring: the PrometheusRule is the rule file, group for group (kustomize sorts keys).
const canonical = (v) =>
  Array.isArray(v) ? v.map(canonical)
  : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((key) => [key, canonical(v[key])]))
  : v;
const rules = YAML.parse(fs.readFileSync(path.join(root, "deploy/prometheus/meshtls-alerts.yaml"), "utf8"));
for (const [k, objects] of Object.entries(rendered)) {
  for (const pr of objects.filter((o) => o.kind === "PrometheusRule")) {
    check(JSON.stringify(canonical(pr.spec.groups)) === JSON.stringify(canonical(rules.groups)), `${k}: ${describe(pr)}`,
      "differs from deploy/prometheus/meshtls-alerts.yaml (run scripts/gen-prometheus-rule.sh)");
  }
  if (objects.some((o) => o.kind === "PodMonitor")) {
    const certmgr = objects.find((o) => o.kind === "PodMonitor" && o.spec.selector.matchLabels["app.kubernetes.io/name"] === "meshtls-certmgr");
    check(certmgr?.spec.jobLabel === "app.kubernetes.io/name", k, "certmgr's PodMonitor does not set job=meshtls-certmgr (the alerts select it)");
    const sidecars = objects.find((o) => o.kind === "PodMonitor" && o.spec.selector.matchLabels["meshtls.io/sidecar"] === "true");
    check(sidecars?.spec.namespaceSelector?.any === true && sidecars.spec.podMetricsEndpoints.some((e) => e.port === "meshtls-admin"),
      k, "no PodMonitor scrapes every sidecar's meshtls-admin port");
  }
}
check(rendered["overlays/prometheus-operator"]?.some((o) => o.kind === "PrometheusRule"), "overlays/prometheus-operator", "no PrometheusRule");
check(rendered["overlays/example"]?.filter((o) => o.kind === "Deployment" && o.metadata.namespace === "meshtls-demo").length >= 2,
  "overlays/example", "fewer than two example workloads");

// --- 4. The binaries' --check on the configs ---------------------------------------------------
// runCheck writes the config with every file it names moved under a temporary root (the files
// exist there, empty) and runs `BIN --config FILE --check`.
function runCheck(where, binary, text, extraArgs) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meshtls-check-"));
  try {
    const doc = YAML.parseDocument(text);
    const fileKeys = new Set(["server_ca", "token_file", "cert", "key", "trust_bundle", "jwks_file"]);
    YAML.visit(doc, {
      Pair(_, pair) {
        if (fileKeys.has(pair.key?.value) && typeof pair.value?.value === "string" && pair.value.value.startsWith("/")) {
          const moved = path.join(dir, pair.value.value);
          fs.mkdirSync(path.dirname(moved), { recursive: true });
          fs.writeFileSync(moved, "");
          pair.value.value = moved;
        }
      },
    });
    const file = path.join(dir, "config.yaml");
    fs.writeFileSync(file, doc.toString());
    execFileSync(binary, ["--config", file, ...extraArgs, "--check"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 20000,
    });
  } catch (e) {
    fail(where, `${path.basename(binary)} --check refuses its config: ${(e.stderr || e.message).trim()}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const objects = Object.values(rendered).reduce((n, o) => n + o.length, 0);
if (failures > 0) {
  console.error(`${failures} problem(s) in deploy/kubernetes`);
  process.exit(1);
}
console.log(`manifests ok: ${kustomizations.join(", ")} rendered, ${workloadSets.size} workload files injected, ` +
  `${deployFiles.length} deploy/ files through inject, ${objects} objects validated (${kinds.size} kinds)`);
