// Checks the Kubernetes manifests (deploy/kubernetes), as ctest `manifests` runs it:
//
//   node tests/deploy/check-manifests.mjs --sidecar BIN --certmgr BIN
//
// 1. `kubectl kustomize` renders the base and every overlay.
// 2. Every rendered object validates against its Kubernetes schema: kubernetes-models (types,
//    required fields, formats; the prometheus-operator CRDs too) and, for unknown fields, a
//    strict JSON schema generated from the same package's TypeScript interfaces.
// 3. meshtls's own rules: every container non-root, read-only root filesystem, all capabilities
//    dropped, no privilege escalation, seccomp RuntimeDefault, resources set; certmgr's HA shape
//    (2 replicas, PDB, anti-affinity, probes, read-only CA Secret, Services, NetworkPolicy); each
//    workload's native sidecar (restartPolicy Always, projected token with audience meshtls,
//    namespace and service account from the downward API, readiness on /readyz); scrape
//    annotations and PodMonitors; the PrometheusRule equal to deploy/prometheus/meshtls-alerts.yaml.
//    No way around a sidecar: an app container (any container but the sidecar) declares no port
//    of its own, inbound listeners forward to loopback, an nginx app runs on a config of the
//    manifests that listens on loopback only, Services and NetworkPolicies open only the
//    sidecar's ports, and every namespace with workloads has a default-deny ingress policy.
// 4. The configs in ConfigMaps pass the binaries' own --check, and the paths and ports they name
//    match the volumes and ports of their pods.
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

// --- 2. Schemas -------------------------------------------------------------------------------
const models = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1",
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
const podTemplates = (objects) => objects.filter((o) => o.spec?.template?.spec);
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
    const where = `${k}: ${describe(o)}`;
    check(pod.hostNetwork !== true && pod.hostPID !== true && pod.hostIPC !== true, where, "uses a host namespace");
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
    check(np.spec.ingress.every((r) => r.ports?.length && r.from?.length), where, "a NetworkPolicy rule allows every port or every peer");
  }
}

// Workloads: every pod template outside meshtls-system carries a native meshtls sidecar.
for (const [k, objects] of Object.entries(rendered)) {
  for (const o of podTemplates(objects).filter((x) => x.metadata.namespace !== "meshtls-system")) {
    const where = `${k}: ${describe(o)}`;
    const pod = o.spec.template.spec;
    const s = (pod.initContainers || []).find((c) => c.name === "meshtls-sidecar");
    if (!check(s, where, "no meshtls-sidecar init container")) continue;
    check(s.restartPolicy === "Always", where, "the sidecar is not a native sidecar (restartPolicy: Always)");
    check(o.spec.template.metadata.labels["meshtls.io/sidecar"] === "true", where, "the pod lacks meshtls.io/sidecar: \"true\" (certmgr's NetworkPolicy)");
    check(s.readinessProbe?.httpGet?.path === "/readyz", where, "the sidecar's readiness probe is not /readyz");
    const env = Object.fromEntries((s.env || []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    const flag = (name) => (s.args || []).find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
    check(env[flag("namespace")?.slice(2, -1)] === "metadata.namespace", where, "--namespace does not come from the downward API (metadata.namespace)");
    check(env[flag("service-account")?.slice(2, -1)] === "spec.serviceAccountName", where, "--service-account does not come from the downward API (spec.serviceAccountName)");
    check(pod.automountServiceAccountToken === false, where, "the app gets an API token it does not need (automountServiceAccountToken)");
    const annotations = o.spec.template.metadata.annotations || {};
    check(annotations["prometheus.io/scrape"] === "true" && Number(annotations["prometheus.io/port"]) === portOf(s, "meshtls-admin"),
      where, "pods lack prometheus.io/scrape and port annotations for the sidecar's admin port");
    // The app is reached only through the sidecar: an app container's own port is reachable
    // in plain text at <pod IP>:port by any pod, around the sidecar.
    const sidecarPorts = s.ports || [];
    const appContainers = [...(pod.initContainers || []).filter((c) => c !== s), ...pod.containers];
    for (const c of appContainers) {
      for (const p of c.ports || []) {
        check(sidecarPorts.some((sp) => sp.containerPort === p.containerPort), where,
          `app container ${c.name} declares port ${p.containerPort}${p.name ? ` (${p.name})` : ""}: ` +
          "an app listens on loopback only, reached through the sidecar's inbound listener");
      }
    }
    // The config, its mounts and ports.
    const volumes = Object.fromEntries(pod.volumes.map((v) => [v.name, v]));
    const mountOf = (file) => s.volumeMounts.find((m) => m.mountPath === file || m.mountPath === path.dirname(file));
    const configFile = flag("config");
    const configMount = mountOf(configFile);
    const cmName = configMount && volumes[configMount.name]?.configMap?.name;
    const cm = cmName && find(objects, "ConfigMap", cmName, o.metadata.namespace);
    if (!check(cm, where, `--config ${configFile} is not in a mounted ConfigMap of the manifests`)) continue;
    const text = cm.data[configMount.subPath || path.basename(configFile)];
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
    const appPorts = new Set([
      ...(config.inbound || []).map((l) => listenPort(l.forward)),
      ...appContainers.flatMap((c) => (c.ports || []).map((p) => p.containerPort)),
    ]);
    for (const c of appContainers.filter((x) => /nginx/.test(String(x.image).split("/").pop()))) {
      checkNginxListensOnLoopback(where, objects, o.metadata.namespace, pod, c, (config.inbound || []).map((l) => listenPort(l.forward)));
    }
    checkExposure(where, objects, o, s, appPorts, config);
    runCheck(where, args.sidecar, text, ["--namespace", o.metadata.namespace, "--service-account", pod.serviceAccountName]);
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
// the sidecar's ports, never the app's; its inbound ports are open to the peers that need them
// and the sidecar's admin port to Prometheus (the namespace's default-deny would refuse them).
function checkExposure(where, objects, workload, sidecar, appPorts, config) {
  const namespace = workload.metadata.namespace;
  const labels = workload.spec.template.metadata.labels || {};
  const pod = workload.spec.template.spec;
  const allContainers = [...(pod.initContainers || []), ...pod.containers];
  // resolve: a Service targetPort or NetworkPolicy port (number or container port name) of this pod.
  const resolve = (port) =>
    typeof port === "number" ? port
    : allContainers.flatMap((c) => c.ports || []).find((p) => p.name === port)?.containerPort;
  const sidecarPort = (n) => (sidecar.ports || []).some((p) => p.containerPort === n);
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
console.log(`manifests ok: ${kustomizations.join(", ")} rendered, ${objects} objects validated (${kinds.size} kinds)`);
