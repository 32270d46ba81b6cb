// Checks the Grafana dashboards in dashboards/ (see dashboards/README.md):
//  1. each validates against the Grafana dashboard schema: the `Dashboard` type of the pinned
//     @grafana/schema package, turned into a JSON schema (no extra properties anywhere);
//  2. each has the `datasource`, `namespace` and `pod` variables and every panel and query uses
//     the datasource variable; dashboards/README.md names every panel and its metrics;
//  3. with --prometheus URL: the variables are resolved on that Prometheus (each must find at
//     least one value), filled into every panel query, and every query must return data (at
//     least one series with a finite value over the last --window seconds).
// Exits 1 with one line per problem. Usage:
//   node check-dashboards.mjs --dashboards DIR [--prometheus URL --window SECONDS]

import Ajv from 'ajv';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGenerator } from 'ts-json-schema-generator';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => {
    if (a.startsWith('--')) pairs.push([a.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const dashboardsDir = args.dashboards ?? path.join(here, '../../dashboards');
const windowSeconds = Number(args.window ?? 120);
const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

// Grafana's built-in interval variables, as Grafana would fill them for a 1 s scrape interval
// and a short time range.
const builtins = {
  __rate_interval: '5s',
  __interval: '1s',
  __interval_ms: '1000',
  __range: `${windowSeconds}s`,
  __range_s: String(windowSeconds),
};

function dashboardSchema() {
  const typesFile = path.join(
    here,
    'node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts',
  );
  const generator = createGenerator({
    path: typesFile,
    type: 'Dashboard',
    skipTypeCheck: true,
    additionalProperties: false,
  });
  return generator.createSchema('Dashboard');
}

function* panelsOf(dashboard) {
  for (const p of dashboard.panels ?? []) {
    yield p;
    for (const nested of p.panels ?? []) yield nested;
  }
}

// metricNames returns the meshtls metric families an expression reads (histogram series
// suffixes folded into their family).
function metricNames(expr) {
  const names = new Set();
  for (const m of expr.matchAll(/\b(meshtls_[a-z0-9_]+|up)\b(?=\s*[{[)\s])/g)) {
    names.add(m[1].replace(/_(bucket|count|sum)$/, ''));
  }
  return [...names];
}

function checkStructure(file, dashboard, readme) {
  const vars = Object.fromEntries((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
  if (vars.datasource?.type !== 'datasource' || vars.datasource?.query !== 'prometheus') {
    problem(file, 'needs a `datasource` variable of type datasource for Prometheus');
  }
  for (const name of ['namespace', 'pod']) {
    if (vars[name]?.type !== 'query') problem(file, `needs a \`${name}\` query variable`);
  }
  const ids = new Set();
  const titles = new Set();
  for (const p of panelsOf(dashboard)) {
    const where = `${file} panel ${JSON.stringify(p.title)}`;
    if (ids.has(p.id)) problem(where, `duplicate panel id ${p.id}`);
    ids.add(p.id);
    if (p.type === 'row') continue;
    if (titles.has(p.title)) problem(where, 'duplicate panel title');
    titles.add(p.title);
    if (p.datasource?.uid !== '${datasource}') problem(where, 'does not use ${datasource}');
    if (!p.targets?.length) problem(where, 'has no query');
    for (const t of p.targets ?? []) {
      if (!t.expr) problem(where, `query ${t.refId} has no expr`);
      if (t.datasource?.uid !== '${datasource}') problem(where, `query ${t.refId} datasource`);
      if (!/namespace=~"\$namespace"/.test(t.expr) || !/pod=~"\$pod"/.test(t.expr)) {
        problem(where, `query ${t.refId} ignores the namespace/pod variables`);
      }
    }
    // dashboards/README.md: a table row per panel, naming every metric its queries read.
    const row = readme.split('\n').find((l) => l.startsWith(`| ${p.title} |`));
    if (!row) {
      problem(where, 'is not listed in dashboards/README.md');
      continue;
    }
    for (const t of p.targets ?? []) {
      for (const metric of metricNames(t.expr ?? '')) {
        if (!row.includes(`\`${metric}\``)) {
          problem(where, `dashboards/README.md does not name ${metric} for it`);
        }
      }
    }
  }
}

async function prometheus(base, endpoint, params) {
  const url = new URL(`/api/v1/${endpoint}`, base);
  for (const [k, v] of Object.entries(params)) {
    for (const value of [v].flat()) url.searchParams.append(k, value);
  }
  const response = await fetch(url);
  const body = await response.json();
  if (body.status !== 'success') {
    throw new Error(`${body.errorType}: ${body.error}`);
  }
  return body.data;
}

function regexEscape(value) {
  return value.replace(/[\\^$.|?*+()[\]{}]/g, '\\$&');
}

function fill(text, values) {
  return text.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (whole, braced, bare) => {
    const name = braced ?? bare;
    if (name in builtins) return builtins[name];
    if (name in values) return values[name];
    return whole;
  });
}

// resolveVariables runs each query variable (label_values(selector, label)) on Prometheus, in
// order, and returns their values formatted as Grafana does for a multi-value variable in a
// Prometheus regex matcher: (a|b).
async function resolveVariables(file, dashboard, base) {
  const values = {};
  const end = Date.now() / 1000;
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const query = typeof v.query === 'string' ? v.query : v.query?.query;
    const m = /^label_values\((.*),\s*(\w+)\)$/.exec(query ?? '');
    if (!m) {
      problem(`${file} variable ${v.name}`, `unsupported query ${query}`);
      continue;
    }
    const data = await prometheus(base, `label/${m[2]}/values`, {
      'match[]': fill(m[1], values),
      start: end - windowSeconds,
      end,
    });
    if (data.length === 0) {
      problem(`${file} variable ${v.name}`, `${query} found no value`);
    }
    values[v.name] = `(${data.map(regexEscape).join('|')})`;
  }
  return values;
}

async function checkQueries(file, dashboard, base) {
  const values = await resolveVariables(file, dashboard, base);
  const end = Math.floor(Date.now() / 1000);
  let count = 0;
  for (const p of panelsOf(dashboard)) {
    for (const t of p.targets ?? []) {
      if (!t.expr) continue;
      const where = `${file} panel ${JSON.stringify(p.title)} query ${t.refId}`;
      const expr = fill(t.expr, values);
      if (/\$\w/.test(expr)) {
        problem(where, `unfilled variable in ${expr}`);
        continue;
      }
      try {
        const data = await prometheus(base, 'query_range', {
          query: expr,
          start: end - windowSeconds,
          end,
          step: 1,
        });
        const finite = data.result.filter((s) =>
          s.values.some(([, v]) => Number.isFinite(Number(v))),
        );
        if (finite.length === 0) problem(where, `no data for ${expr}`);
        count += 1;
        console.log(`ok   ${where}: ${finite.length} series`);
      } catch (e) {
        problem(where, `${e.message} in ${expr}`);
      }
    }
  }
  if (count === 0) problem(file, 'no panel query to run');
  return count;
}

const files = fs
  .readdirSync(dashboardsDir)
  .filter((f) => f.endsWith('.json'))
  .sort();
if (files.length === 0) problem(dashboardsDir, 'no dashboards');
const readme = fs.readFileSync(path.join(dashboardsDir, 'README.md'), 'utf8');
const validate = new Ajv({ allErrors: true, strict: false }).compile(dashboardSchema());
for (const file of files) {
  let dashboard;
  try {
    dashboard = JSON.parse(fs.readFileSync(path.join(dashboardsDir, file), 'utf8'));
  } catch (e) {
    problem(file, `not JSON: ${e.message}`);
    continue;
  }
  if (!validate(dashboard)) {
    for (const e of validate.errors) {
      problem(file, `schema: ${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`);
    }
  } else {
    console.log(`ok   ${file}: valid against @grafana/schema Dashboard`);
  }
  checkStructure(file, dashboard, readme);
  if (args.prometheus) {
    const n = await checkQueries(file, dashboard, args.prometheus);
    console.log(`ran  ${file}: ${n} queries`);
  }
}
if (problems.length > 0) {
  console.error(problems.join('\n'));
  console.error(`FAILED: ${problems.length} problem(s)`);
  process.exit(1);
}
console.log('all dashboard checks passed');
