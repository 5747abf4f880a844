#!/usr/bin/env node
// Checks the configs of compose.yml's `monitoring` profile against compose.yml itself and
// against the series the service exports; scripts/check-deploy.sh runs it:
//
//   node scripts/check-monitoring.cjs MODULES COMPOSE_JSON
//
// MODULES is a node_modules folder with yaml, @prometheus-io/codemirror-promql (Prometheus's own
// PromQL grammar, @prometheus-io/lezer-promql, and the checks its UI makes of an expression) and
// the @codemirror packages it runs on; COMPOSE_JSON is `docker-compose --profile monitoring
// config --format json` of compose.yml. It checks:
//
//   - config/prometheus/prometheus.yml: YAML with only keys Prometheus knows (it refuses others),
//     valid durations; a job per scraped part: every worker found by DNS (type A) under the
//     compose service `worker`, the sidecar by a static target; every target a compose service
//     and a port it listens on (METRICS_ADDR's for the workers);
//   - config/grafana/provisioning: the data sources' URLs are compose services and their ports,
//     Prometheus's `timeInterval` is its scrape interval, the dashboards' provider reads the
//     folder compose mounts; every file is mounted read-only where Grafana reads it;
//   - config/grafana/dashboards/*.json: JSON; clawdforge.json is what
//     scripts/grafana-dashboard.cjs makes; panel ids unique, panels inside the 24-column grid
//     and not overlapping; each panel and query on a provisioned data source, by its uid; every
//     expression parses and passes the checks of Prometheus's UI; it names only series the
//     service exports (src/telemetry) and only labels those have (docs/operations.md,
//     "Metrics"); counters only under rate() or increase(); ledger-wide gauges aggregated with
//     max; legends name only labels the result has.
//
// Prints every error found, and exits 1 if there was one.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');

const [modules, composeJson] = process.argv.slice(2);
if (!modules || !composeJson) {
    console.error('usage: check-monitoring.cjs MODULES COMPOSE_JSON');
    process.exit(2);
}
const need = createRequire(path.join(path.resolve(modules), 'index.js'));
const YAML = need('yaml');
const { EditorState } = need('@codemirror/state');
const { syntaxTree, ensureSyntaxTree } = need('@codemirror/language');
const { promQLLanguage, LanguageType } = need('@prometheus-io/codemirror-promql');
const { Parser } = need('@prometheus-io/codemirror-promql/dist/cjs/parser');

const repo = path.resolve(__dirname, '..');
const errors = [];
const fail = (where, message) => errors.push(`${where}: ${message}`);
const read = (file) => fs.readFileSync(path.join(repo, file), 'utf8');
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A YAML file of the repository as a value, or null (and an error) if it is not valid YAML. */
function yamlFile(file) {
    const doc = YAML.parseDocument(read(file), { uniqueKeys: true, prettyErrors: true });
    for (const e of [...doc.errors, ...doc.warnings]) fail(file, e.message);
    return doc.errors.length ? null : doc.toJS();
}

/** Errors for the keys of `obj` that are not in `known`. */
function onlyKeys(where, obj, known) {
    if (!isObject(obj)) {
        fail(where, `expected a mapping, found ${JSON.stringify(obj)}`);
        return false;
    }
    for (const key of Object.keys(obj)) {
        if (!known.includes(key)) fail(where, `unknown key "${key}" (known here: ${known.join(', ')})`);
    }
    return true;
}

// A Prometheus duration, in milliseconds (null if it is not one).
function duration(text) {
    const units = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3, y: 31536000e3 };
    if (typeof text !== 'string' || !/^(\d+(ms|s|m|h|d|w|y))+$/.test(text)) return null;
    let ms = 0;
    for (const [, n, unit] of text.matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)) ms += Number(n) * units[unit];
    return ms;
}

// ---- compose.yml, resolved ---------------------------------------------------------------------
const compose = JSON.parse(fs.readFileSync(composeJson, 'utf8'));
const services = compose.services || {};

/** The container ports `service` listens on, as compose.yml says (expose and published). */
function ports(service) {
    const s = services[service] || {};
    const out = new Set((s.expose || []).map(String));
    for (const p of s.ports || []) out.add(String(p.target));
    return out;
}

/** The bind mount of `source` (relative to the repository) in `service`, read-only. */
function mount(service, source) {
    const volumes = (services[service] || {}).volumes || [];
    const found = volumes.find((v) => v.type === 'bind' && v.source.endsWith(`/${source}`));
    if (!found) {
        fail('compose.yml', `${service} does not mount ${source}`);
        return null;
    }
    if (!found.read_only) fail('compose.yml', `${service} mounts ${source} writable, not :ro`);
    return found.target;
}

for (const name of ['prometheus', 'grafana', 'jaeger']) {
    const s = services[name];
    if (!s) {
        fail('compose.yml', `no service ${name} with --profile monitoring`);
        continue;
    }
    if (!(s.profiles || []).includes('monitoring')) fail('compose.yml', `${name} is not in the profile monitoring`);
    if (!/^[^:@]+:v?\d+\.\d+\.\d+$/.test(s.image || '')) fail('compose.yml', `${name}'s image is not pinned to a version: ${s.image}`);
}

// ---- the series the service exports -------------------------------------------------------------
const telemetry = read('src/telemetry/mod.rs');
const constants = new Map([...telemetry.matchAll(/pub const (\w+): &str = "(\w+)";/g)].map((m) => [m[1], m[2]]));
const histograms = new Set([...telemetry.matchAll(/describe_histogram!\(\s*(\w+)/g)].map((m) => constants.get(m[1])));
const exported = new Set([
    ...constants.values(),
    ...[...read('src/telemetry/process.rs').matchAll(/"(process_\w+)"/g)].map((m) => m[1]),
]);
if (!exported.has('clawdforge_requests_total') || histograms.size < 3 || !exported.has('process_cpu_seconds_total')) {
    fail('src/telemetry', 'the series\' names were not found where this check looks for them');
}
// The apps' budgets and what they have spent in each budget's window (gauges from the ledger).
for (const name of ['clawdforge_budget_usd', 'clawdforge_budget_used_usd']) exported.add(name);
// Ledger-wide gauges: every worker reports the same figure, so they are aggregated with max.
const ledgerWide = new Set(['clawdforge_sessions_open', 'clawdforge_budget_usd', 'clawdforge_budget_used_usd']);

// Each series' labels, from the table in docs/operations.md ("Metrics"); then those not there yet.
const labelsOf = new Map();
const metricsDoc = read('docs/operations.md').split(/^## /m).find((s) => s.startsWith('Metrics\n')) || '';
for (const line of metricsDoc.split('\n').filter((l) => l.startsWith('| `'))) {
    const cells = line.split('|').map((c) => c.trim());
    const names = [...cells[1].matchAll(/`(\w+)`/g)].map((m) => m[1]);
    const labels = [...cells[3].matchAll(/`(\w+)`/g)].map((m) => m[1]);
    for (const name of names) labelsOf.set(name, labels);
}
for (const name of ['clawdforge_budget_usd', 'clawdforge_budget_used_usd']) {
    if (!labelsOf.has(name)) labelsOf.set(name, ['app', 'limit']);
}
// Prometheus's own series of each target, and the labels it gives every series.
labelsOf.set('up', []);
const targetLabels = ['job', 'instance'];

/** What a selected name is: the exported series, and whether it is a counter; null if unknown. */
function series(name) {
    if (name === 'up') return { base: name, counter: false, bucket: false };
    if (exported.has(name) && !histograms.has(name)) return { base: name, counter: name.endsWith('_total'), bucket: false };
    const m = /^(\w+)_(bucket|sum|count)$/.exec(name);
    if (m && histograms.has(m[1])) return { base: m[1], counter: true, bucket: m[2] === 'bucket' };
    return null;
}

// ---- config/prometheus/prometheus.yml -----------------------------------------------------------
const PROM = 'config/prometheus/prometheus.yml';
const prometheus = yamlFile(PROM) || {};
let scrapeInterval = null;
const promConfig = mount('prometheus', PROM);
if (promConfig && !(services.prometheus.command || []).includes(`--config.file=${promConfig}`)) {
    fail('compose.yml', `prometheus is not started with --config.file=${promConfig}`);
}
if (onlyKeys(PROM, prometheus, ['global', 'scrape_configs', 'rule_files', 'scrape_config_files',
    'alerting', 'remote_write', 'remote_read', 'storage', 'tracing', 'runtime', 'otlp'])) {
    const global = prometheus.global || {};
    if (onlyKeys(`${PROM} global`, global, ['scrape_interval', 'scrape_timeout', 'evaluation_interval',
        'external_labels', 'query_log_file', 'scrape_protocols', 'body_size_limit', 'sample_limit'])) {
        for (const key of ['scrape_interval', 'scrape_timeout', 'evaluation_interval']) {
            if (key in global && duration(global[key]) === null) fail(`${PROM} global`, `${key} is not a duration: ${global[key]}`);
        }
        scrapeInterval = global.scrape_interval || '1m';
        if (duration(global.scrape_timeout || '10s') > duration(scrapeInterval)) {
            fail(`${PROM} global`, 'scrape_timeout is longer than scrape_interval');
        }
    }
    const jobs = Array.isArray(prometheus.scrape_configs) ? prometheus.scrape_configs : [];
    if (!jobs.length) fail(PROM, 'no scrape_configs');
    const scraped = new Map(); // compose service -> how it is found
    const names = new Set();
    for (const [i, job] of jobs.entries()) {
        const where = `${PROM} scrape_configs[${i}]`;
        if (!onlyKeys(where, job, ['job_name', 'scrape_interval', 'scrape_timeout', 'metrics_path', 'scheme',
            'honor_labels', 'honor_timestamps', 'params', 'static_configs', 'dns_sd_configs', 'relabel_configs',
            'metric_relabel_configs'])) continue;
        if (typeof job.job_name !== 'string' || !job.job_name) fail(where, 'no job_name');
        if (names.has(job.job_name)) fail(where, `job_name ${job.job_name} twice`);
        names.add(job.job_name);
        for (const key of ['scrape_interval', 'scrape_timeout']) {
            if (key in job && duration(job[key]) === null) fail(where, `${key} is not a duration`);
        }
        if ((job.metrics_path || '/metrics') !== '/metrics') fail(where, 'the service serves /metrics, not ' + job.metrics_path);
        if ((job.scheme || 'http') !== 'http') fail(where, 'the service serves plain HTTP');
        const check = (host, port, how) => {
            if (!services[host]) return fail(where, `${host} is not a compose service`);
            if (!ports(host).has(String(port))) {
                fail(where, `${host} listens on ${[...ports(host)].join(', ') || 'no port'} in compose.yml, not ${port}`);
            }
            scraped.set(host, how);
        };
        for (const [j, sc] of (job.static_configs || []).entries()) {
            if (!onlyKeys(`${where} static_configs[${j}]`, sc, ['targets', 'labels'])) continue;
            for (const target of sc.targets || []) {
                const m = /^([\w.-]+):(\d+)$/.exec(target);
                if (!m) fail(where, `target ${target} is not host:port`);
                else check(m[1], m[2], 'static');
            }
        }
        for (const [j, sd] of (job.dns_sd_configs || []).entries()) {
            const w = `${where} dns_sd_configs[${j}]`;
            if (!onlyKeys(w, sd, ['names', 'type', 'port', 'refresh_interval'])) continue;
            if (!['A', 'AAAA', 'SRV', 'MX', 'NS'].includes(sd.type || 'SRV')) fail(w, `unknown type ${sd.type}`);
            if (sd.type !== 'A') fail(w, 'compose\'s DNS answers A records (one per replica), not SRV');
            if (!Number.isInteger(sd.port)) fail(w, 'no port (needed for type A)');
            if ('refresh_interval' in sd && duration(sd.refresh_interval) === null) fail(w, 'refresh_interval is not a duration');
            for (const name of sd.names || []) check(name, sd.port, 'dns');
        }
    }
    if (scraped.get('worker') !== 'dns') fail(PROM, 'the workers are not found by DNS under the service worker (every replica)');
    if (scraped.get('sidecar') !== 'static') fail(PROM, 'no job scrapes the sidecar');
    const metricsAddr = ((services.worker || {}).environment || {}).METRICS_ADDR || '';
    const workerJob = jobs.find((j) => (j.dns_sd_configs || []).some((sd) => (sd.names || []).includes('worker')));
    const workerPort = workerJob && workerJob.dns_sd_configs.find((sd) => sd.names.includes('worker')).port;
    if (!metricsAddr.endsWith(`:${workerPort}`)) fail(PROM, `the workers serve /metrics on ${metricsAddr}, not port ${workerPort}`);
}

// ---- config/grafana/provisioning --------------------------------------------------------------
const DS = 'config/grafana/provisioning/datasources/prometheus.yml';
const PROVIDER = 'config/grafana/provisioning/dashboards/clawdforge.yml';
mount('grafana', 'config/grafana/provisioning/datasources');
mount('grafana', 'config/grafana/provisioning/dashboards');
const dashboardsDir = mount('grafana', 'config/grafana/dashboards');
const datasources = new Map(); // uid -> type
const sources = yamlFile(DS) || {};
if (onlyKeys(DS, sources, ['apiVersion', 'datasources', 'deleteDatasources', 'prune'])) {
    if (sources.apiVersion !== 1) fail(DS, 'apiVersion is not 1');
    const list = Array.isArray(sources.datasources) ? sources.datasources : [];
    for (const [i, ds] of list.entries()) {
        const where = `${DS} datasources[${i}]`;
        if (!onlyKeys(where, ds, ['name', 'uid', 'type', 'access', 'url', 'isDefault', 'editable', 'orgId',
            'jsonData', 'version'])) continue;
        if (!ds.name || !ds.uid || !ds.type) fail(where, 'needs a name, a uid and a type');
        if (datasources.has(ds.uid)) fail(where, `uid ${ds.uid} twice`);
        datasources.set(ds.uid, ds.type);
        const m = /^http:\/\/([\w.-]+):(\d+)$/.exec(ds.url || '');
        if (!m) fail(where, `url ${ds.url} is not http://<service>:<port>`);
        else if (!services[m[1]]) fail(where, `${m[1]} is not a compose service`);
        else if (!ports(m[1]).has(m[2])) fail(where, `${m[1]} does not listen on ${m[2]} in compose.yml`);
        if (ds.type === 'prometheus') {
            const interval = (ds.jsonData || {}).timeInterval;
            if (scrapeInterval && interval !== scrapeInterval) {
                fail(where, `jsonData.timeInterval ${interval} is not Prometheus's scrape_interval ${scrapeInterval}`);
            }
        }
    }
    if (list.filter((ds) => ds.isDefault).length !== 1) fail(DS, 'not exactly one default data source');
    if (![...datasources.values()].includes('prometheus')) fail(DS, 'no Prometheus data source');
}
const providers = yamlFile(PROVIDER) || {};
if (onlyKeys(PROVIDER, providers, ['apiVersion', 'providers'])) {
    if (providers.apiVersion !== 1) fail(PROVIDER, 'apiVersion is not 1');
    const list = Array.isArray(providers.providers) ? providers.providers : [];
    if (!list.length) fail(PROVIDER, 'no providers');
    for (const [i, p] of list.entries()) {
        const where = `${PROVIDER} providers[${i}]`;
        if (!onlyKeys(where, p, ['name', 'orgId', 'folder', 'folderUid', 'type', 'disableDeletion',
            'allowUiUpdates', 'updateIntervalSeconds', 'options'])) continue;
        if (p.type !== 'file') fail(where, 'type is not file');
        if (dashboardsDir && (p.options || {}).path !== dashboardsDir) {
            fail(where, `reads ${(p.options || {}).path}, compose.yml mounts the dashboards at ${dashboardsDir}`);
        }
    }
}
const home = ((services.grafana || {}).environment || {}).GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH;
if (home && dashboardsDir && !(home.startsWith(`${dashboardsDir}/`)
    && fs.existsSync(path.join(repo, 'config/grafana/dashboards', home.slice(dashboardsDir.length + 1))))) {
    fail('compose.yml', `Grafana's home dashboard ${home} is not a file under config/grafana/dashboards`);
}

// ---- PromQL -------------------------------------------------------------------------------------

// Grafana's variables in an expression, and what stands for them when it is parsed.
const GRAFANA_VARIABLES = /\$__rate_interval\b|\$__interval\b|\$__range\b|\$\{__(rate_interval|interval|range)\}/g;

const text = (expr, node) => expr.slice(node.from, node.to);
const exprChildren = (node) => {
    const out = [];
    for (let c = node && node.firstChild; c; c = c.nextSibling) if (c.type.is('Expr')) out.push(c);
    return out;
};
const labelNames = (expr, node) => (node ? node.getChildren('LabelName').map((n) => text(expr, n)) : []);
const COUNTER_FUNCTIONS = ['rate', 'irate', 'increase'];

/**
 * The labels of what `node` gives: a Set; 'scalar'; or null where this check does not follow
 * them (the labels of the selected series are then the bound).
 */
function resultLabels(expr, node) {
    if (!node) return null;
    switch (node.name) {
        case 'ParenExpr':
        case 'UnaryExpr':
            return resultLabels(expr, exprChildren(node)[0]);
        case 'NumberDurationLiteral':
        case 'StringLiteral':
            return 'scalar';
        case 'AggregateExpr': {
            const op = node.getChild('AggregateOp').firstChild.name;
            const args = exprChildren(node.getChild('FunctionCallBody'));
            if (['Topk', 'Bottomk', 'LimitK', 'LimitRatio'].includes(op)) return resultLabels(expr, args[args.length - 1]);
            if (op === 'CountValues') return null;
            const modifier = node.getChild('AggregateModifier');
            if (!modifier) return new Set();
            if (modifier.getChild('Without')) return null;
            return new Set(labelNames(expr, modifier.getChild('GroupingLabels')));
        }
        case 'FunctionCall': {
            const fn = text(expr, node.getChild('FunctionIdentifier'));
            const args = exprChildren(node.getChild('FunctionCallBody'));
            if (fn === 'histogram_quantile') {
                const inner = resultLabels(expr, args[1]);
                return inner instanceof Set ? new Set([...inner].filter((l) => l !== 'le')) : inner;
            }
            return null;
        }
        case 'BinaryExpr': {
            if (node.getChild('MatchingModifierClause') || node.getChild('Or')) return null;
            const [lhs, rhs] = exprChildren(node);
            const l = resultLabels(expr, lhs);
            return l === 'scalar' ? resultLabels(expr, rhs) : l;
        }
        default:
            return null;
    }
}

/** The errors of one expression of a dashboard's query (after Grafana's variables). */
function checkExpr(raw, legend) {
    const problems = [];
    const expr = raw.replace(GRAFANA_VARIABLES, '5m');
    if (expr.includes('$')) problems.push('uses a variable the dashboard does not define');
    // The editor's state parses within a time budget; the whole expression is parsed here, and
    // a transaction gives the state that tree.
    let state = EditorState.create({ doc: expr, extensions: promQLLanguage(LanguageType.PromQL) });
    ensureSyntaxTree(state, expr.length, 10000);
    state = state.update({}).state;
    const tree = syntaxTree(state);
    if (tree.length !== expr.length) return [...problems, 'not parsed to its end'];
    // The first syntax error (the grammar's error nodes, also one at the end, which the UI's
    // checks below leave out); what follows it is not worth reading.
    let syntax = null;
    tree.iterate({
        enter: (ref) => {
            if (syntax === null && ref.type.isError) syntax = ref.from;
            return syntax === null;
        },
    });
    if (syntax !== null) {
        const at = `${expr.slice(0, syntax)}⟨here⟩${expr.slice(syntax)}`;
        return [...problems, `syntax error at character ${syntax + 1}: ${at}`];
    }
    // Prometheus's UI's checks: types of arguments and operands, and so on.
    const parser = new Parser(state);
    parser.analyze();
    for (const d of parser.getDiagnostics()) problems.push(`${d.message} at "${expr.slice(d.from, d.to)}"`);
    const allowed = new Set(targetLabels);
    const used = [];
    tree.iterate({
        enter: (ref) => {
            const node = ref.node;
            if (node.name === 'QuotedLabelName') {
                problems.push(`quoted label name ${text(expr, node)}: name series and labels plainly`);
            } else if (node.name === 'LabelName') {
                used.push(text(expr, node));
            } else if (node.name === 'VectorSelector') {
                const id = node.getChild('Identifier');
                if (!id) return void problems.push(`selector ${text(expr, node)} names no series`);
                const name = text(expr, id);
                const s = series(name);
                if (!s) return void problems.push(`${name} is not a series the service exports (src/telemetry)`);
                if (!labelsOf.has(s.base)) {
                    return void problems.push(`${s.base}'s labels are not in docs/operations.md's table ("Metrics")`);
                }
                for (const l of labelsOf.get(s.base)) allowed.add(l);
                if (s.bucket) allowed.add('le');
                const fn = node.parent && node.parent.name === 'MatrixSelector'
                    && node.parent.parent && node.parent.parent.parent;
                const counterOk = fn && fn.name === 'FunctionCall'
                    && COUNTER_FUNCTIONS.includes(text(expr, fn.getChild('FunctionIdentifier')));
                if (s.counter && !counterOk) problems.push(`counter ${name} not under ${COUNTER_FUNCTIONS.join('/')}(…[range])`);
                if (ledgerWide.has(name)) {
                    let up = node.parent;
                    while (up && up.name !== 'AggregateExpr') up = up.parent;
                    if (!up || up.getChild('AggregateOp').firstChild.name !== 'Max') {
                        problems.push(`${name} is the same on every worker: aggregate it with max, first`);
                    }
                }
            }
            return undefined;
        },
    });
    for (const l of used) if (!allowed.has(l)) problems.push(`label ${l} is not a label of the series selected`);
    const result = resultLabels(expr, exprChildren(tree.topNode)[0]);
    for (const [, l] of (legend || '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        const bound = result instanceof Set ? result : result === 'scalar' ? new Set() : allowed;
        if (!bound.has(l)) problems.push(`legend {{${l}}} is not a label of the result`);
    }
    return [...new Set(problems)];
}

// ---- config/grafana/dashboards ----------------------------------------------------------------
const DIR = 'config/grafana/dashboards';
const files = fs.readdirSync(path.join(repo, DIR)).filter((f) => f.endsWith('.json'));
if (!files.includes('clawdforge.json')) fail(DIR, 'no clawdforge.json');
const seen = { panels: 0, exprs: 0, series: new Set() };
for (const file of files) {
    const where = `${DIR}/${file}`;
    const raw = read(where);
    let dash;
    try {
        dash = JSON.parse(raw);
    } catch (e) {
        fail(where, `not JSON: ${e.message}`);
        continue;
    }
    if (file === 'clawdforge.json' && raw !== require('./grafana-dashboard.cjs').text()) {
        fail(where, 'not what scripts/grafana-dashboard.cjs makes: run node scripts/grafana-dashboard.cjs');
    }
    if (!dash.uid || !dash.title) fail(where, 'no uid or title');
    if ('__inputs' in dash || raw.includes('${DS_')) fail(where, 'data source inputs (${DS_…}): name the provisioned uid');
    const all = [];
    for (const p of dash.panels || []) {
        all.push(p);
        for (const inner of p.panels || []) all.push(inner);
    }
    const ids = new Set();
    const cells = new Map();
    for (const p of all) {
        const at = `${where} panel ${p.id} "${p.title}"`;
        if (!Number.isInteger(p.id) || p.id < 1) fail(at, 'id is not a positive integer');
        if (ids.has(p.id)) fail(at, `id ${p.id} twice`);
        ids.add(p.id);
        const g = p.gridPos || {};
        if (![g.x, g.y, g.w, g.h].every(Number.isInteger) || g.x < 0 || g.y < 0 || g.w < 1 || g.h < 1 || g.x + g.w > 24) {
            fail(at, `gridPos ${JSON.stringify(g)} is not inside the 24-column grid`);
        } else {
            for (let x = g.x; x < g.x + g.w; x++) {
                for (let y = g.y; y < g.y + g.h; y++) {
                    const other = cells.get(`${x},${y}`);
                    if (other !== undefined && other !== p.id) fail(at, `overlaps panel ${other}`);
                    cells.set(`${x},${y}`, p.id);
                }
            }
        }
        if (p.type === 'row') continue;
        seen.panels += 1;
        const ds = p.datasource || {};
        if (!datasources.has(ds.uid) || datasources.get(ds.uid) !== ds.type) {
            fail(at, `data source ${JSON.stringify(ds)} is not a provisioned one (${[...datasources].map(([u, t]) => `${t} ${u}`).join(', ')})`);
        }
        const targets = p.targets || [];
        if (!targets.length) fail(at, 'no queries');
        const refIds = new Set();
        for (const t of targets) {
            const tat = `${at} query ${t.refId}`;
            if (!t.refId || refIds.has(t.refId)) fail(tat, 'refId missing or twice');
            refIds.add(t.refId);
            const tds = t.datasource || ds;
            if (tds.uid !== ds.uid || tds.type !== ds.type) fail(tat, 'on another data source than its panel');
            if (ds.type !== 'prometheus') continue;
            if (typeof t.expr !== 'string' || !t.expr.trim()) {
                fail(tat, 'no expression');
                continue;
            }
            seen.exprs += 1;
            for (const m of t.expr.matchAll(/\b(clawdforge_\w+|process_\w+)/g)) seen.series.add(m[1]);
            for (const problem of checkExpr(t.expr, t.legendFormat)) fail(tat, `${problem}\n    in: ${t.expr}`);
        }
    }
}

if (errors.length) {
    for (const e of errors) console.error(`check-monitoring: ${e}`);
    console.error(`check-monitoring: ${errors.length} error(s)`);
    process.exit(1);
}
console.log(`prometheus.yml: jobs ${prometheus.scrape_configs.map((j) => j.job_name).join(', ')}; `
    + `grafana: data sources ${[...datasources.keys()].join(', ')}; dashboards ${files.join(', ')}: `
    + `${seen.panels} panels, ${seen.exprs} expressions over ${seen.series.size} series, all valid`);
