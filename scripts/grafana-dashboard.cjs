#!/usr/bin/env node
// Makes Grafana's clawdforge dashboard, config/grafana/dashboards/clawdforge.json, which Grafana
// of compose.yml's `monitoring` profile loads (docs/operations.md, "Monitoring"):
//
//   node scripts/grafana-dashboard.cjs           # writes the file
//   node scripts/grafana-dashboard.cjs --check   # exits 1 if the file differs from what it makes
//
// Every query names the data source by the uid that config/grafana/provisioning/datasources
// gives it, and only series the service exports (docs/operations.md, "Metrics");
// scripts/check-deploy.sh checks both, and that every expression parses.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const FILE = path.join(__dirname, '..', 'config', 'grafana', 'dashboards', 'clawdforge.json');
const PROMETHEUS = { type: 'prometheus', uid: 'clawdforge-prometheus' };

// Grafana's window for rate(): at least four scrapes, wider as the graph zooms out.
const RATE = '$__rate_interval';

/** A query: `expr`, shown as `legend` ({{label}} takes a label's value). */
function q(expr, legend, more = {}) {
    return { expr, legend, ...more };
}

/** `60 *` the per-second rate of `counter`, summed by `labels`: events per minute. */
function perMinute(counter, labels, matchers = '') {
    const by = labels.length ? ` by (${labels.join(', ')})` : '';
    return `60 * sum${by} (rate(${counter}${matchers}[${RATE}]))`;
}

/** The `quantile` of histogram `name` over `labels`. */
function quantile(quantile, name, labels) {
    const by = [...labels, 'le'].join(', ');
    return `histogram_quantile(${quantile}, sum by (${by}) (rate(${name}_bucket[${RATE}])))`;
}

/** Dashed lines for the series whose name matches `regexp` (a limit, not a figure). */
function dashed(regexp) {
    return {
        matcher: { id: 'byRegexp', options: regexp },
        properties: [
            { id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } },
            { id: 'custom.fillOpacity', value: 0 },
        ],
    };
}

function thresholds(...steps) {
    return {
        mode: 'absolute',
        steps: [{ color: 'green', value: null }, ...steps.map(([value, color]) => ({ color, value }))],
    };
}

function targets(queries, instant) {
    return queries.map((query, i) => ({
        refId: String.fromCharCode(65 + i),
        datasource: PROMETHEUS,
        expr: query.expr,
        legendFormat: query.legend,
        range: !instant,
        instant: Boolean(instant),
    }));
}

const panels = {
    timeseries({ title, description, unit, queries, overrides = [], stack = false }) {
        return {
            type: 'timeseries',
            title,
            description,
            datasource: PROMETHEUS,
            fieldConfig: {
                defaults: {
                    unit,
                    min: 0,
                    custom: {
                        fillOpacity: stack ? 30 : 10,
                        showPoints: 'never',
                        stacking: { mode: stack ? 'normal' : 'none', group: 'A' },
                    },
                },
                overrides,
            },
            options: {
                legend: { displayMode: 'list', placement: 'bottom', showLegend: true },
                tooltip: { mode: 'multi', sort: 'desc' },
            },
            targets: targets(queries),
        };
    },

    stat({ title, description, unit, queries, steps = [] }) {
        return {
            type: 'stat',
            title,
            description,
            datasource: PROMETHEUS,
            fieldConfig: { defaults: { unit, thresholds: thresholds(...steps) }, overrides: [] },
            options: {
                reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
                colorMode: 'value',
                graphMode: 'area',
                textMode: 'auto',
            },
            targets: targets(queries),
        };
    },

    bargauge({ title, description, unit, queries, max, steps = [] }) {
        return {
            type: 'bargauge',
            title,
            description,
            datasource: PROMETHEUS,
            fieldConfig: {
                defaults: { unit, min: 0, ...(max === undefined ? {} : { max }), thresholds: thresholds(...steps) },
                overrides: [],
            },
            options: {
                reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
                orientation: 'horizontal',
                displayMode: 'gradient',
                showUnfilled: true,
            },
            targets: targets(queries, true),
        };
    },
};

// The dashboard, row by row: [row title, [[width, height, panel], …]]. Panels fill a row of the
// 24-column grid from the left, and wrap.
const layout = [
    ['Overview', [
        [4, 4, panels.stat({
            title: 'Workers',
            description: 'Workers answering the sidecar\'s ping (clawdforge_workers: needs the sidecar\'s '
                + 'scrape, see ALLOW_CIDRS in docs/operations.md), and workers whose /metrics Prometheus '
                + 'scrapes.',
            unit: 'none',
            queries: [
                q('max(clawdforge_workers)', 'answering'),
                q('count(up{job="clawdforge-workers"} == 1)', 'scraped'),
            ],
        })],
        [4, 4, panels.stat({
            title: 'Open sessions',
            description: 'Open sessions in the ledger, all apps.',
            unit: 'none',
            queries: [q('sum(max by (app, agent) (clawdforge_sessions_open))', 'open')],
        })],
        [4, 4, panels.stat({
            title: 'Turns running',
            description: 'Turns the workers are running now.',
            unit: 'none',
            queries: [q('sum(clawdforge_turns_running)', 'running')],
        })],
        [4, 4, panels.stat({
            title: 'Turns queued',
            description: 'Turns waiting on a worker for a slot or for their session.',
            unit: 'none',
            queries: [q('sum(clawdforge_turns_queued)', 'queued')],
            steps: [[1, 'orange'], [10, 'red']],
        })],
        [4, 4, panels.stat({
            title: 'Requests',
            description: 'Requests the workers answered, per minute.',
            unit: 'reqpm',
            queries: [q(perMinute('clawdforge_requests_total', []), 'requests')],
        })],
        [4, 4, panels.stat({
            title: 'Errors',
            description: 'Share of the requests answered with an error (any outcome but ok).',
            unit: 'percentunit',
            queries: [q(
                `sum(rate(clawdforge_requests_total{outcome!="ok"}[${RATE}]))`
                    + ` / sum(rate(clawdforge_requests_total[${RATE}]))`,
                'errors',
            )],
            steps: [[0.01, 'orange'], [0.05, 'red']],
        })],
    ]],

    ['Requests', [
        [8, 8, panels.timeseries({
            title: 'Requests by operation',
            description: 'Requests answered per minute, by operation (the subject without forge.).',
            unit: 'reqpm',
            queries: [q(perMinute('clawdforge_requests_total', ['op']), '{{op}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Errors by operation and outcome',
            description: 'Requests answered with an error per minute, by operation and error kind.',
            unit: 'reqpm',
            queries: [q(perMinute('clawdforge_requests_total', ['op', 'outcome'], '{outcome!="ok"}'),
                '{{op}} {{outcome}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Request latency by operation',
            description: 'Time to answer a request, p50 and p95 (a turn\'s includes the agent\'s time).',
            unit: 's',
            queries: [
                q(quantile(0.5, 'clawdforge_request_duration_seconds', ['op']), '{{op}} p50'),
                q(quantile(0.95, 'clawdforge_request_duration_seconds', ['op']), '{{op}} p95'),
            ],
        })],
    ]],

    ['Turns and runs', [
        [8, 8, panels.timeseries({
            title: 'Turn duration by agent',
            description: 'Time the agent took over a turn: p50, p95, p99.',
            unit: 's',
            queries: [0.5, 0.95, 0.99].map((p) => q(
                quantile(p, 'clawdforge_turn_duration_seconds', ['agent']),
                `{{agent}} p${Math.round(p * 100)}`,
            )),
        })],
        [8, 8, panels.timeseries({
            title: 'Time to first event by agent',
            description: 'Time from a turn\'s start to its first event: p50, p95.',
            unit: 's',
            queries: [0.5, 0.95].map((p) => q(
                quantile(p, 'clawdforge_turn_first_event_seconds', ['agent']),
                `{{agent}} p${Math.round(p * 100)}`,
            )),
        })],
        [8, 8, panels.timeseries({
            title: 'Turns by outcome',
            description: 'Turns ended per minute: the stop reason (end_turn, cancelled, …), interrupted, '
                + 'or the error kind.',
            unit: 'opm',
            stack: true,
            queries: [q(perMinute('clawdforge_turns_total', ['outcome']), '{{outcome}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Tool calls by kind and status',
            description: 'Tool calls per minute, counted when their turn ends, at their final status.',
            unit: 'opm',
            stack: true,
            queries: [q(perMinute('clawdforge_tool_calls_total', ['kind', 'status']), '{{kind}} {{status}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Events by type',
            description: 'Events of turns and runs per minute, by type.',
            unit: 'opm',
            stack: true,
            queries: [q(perMinute('clawdforge_events_total', ['type']), '{{type}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Runs by model and outcome',
            description: 'One-shot runs ended per minute.',
            unit: 'opm',
            stack: true,
            queries: [q(perMinute('clawdforge_runs_total', ['model', 'outcome']), '{{model}} {{outcome}}')],
        })],
    ]],

    ['Spend and limits', [
        [12, 8, panels.timeseries({
            title: 'Spend against budget',
            description: 'What each app has spent in the current window of each budget its policy sets '
                + '(from the ledger; solid), and the budget (dashed).',
            unit: 'currencyUSD',
            queries: [
                q('max by (app, limit) (clawdforge_budget_used_usd)', '{{app}} {{limit}} spent'),
                q('max by (app, limit) (clawdforge_budget_usd)', '{{app}} {{limit}} budget'),
            ],
            overrides: [dashed('.* budget$')],
        })],
        [12, 8, panels.bargauge({
            title: 'Budget used',
            description: 'Spent in the current window over the budget, for each budget an app\'s policy '
                + 'sets; at 100 % the app\'s further runs (turns, for agent_usd_per_month) are refused.',
            unit: 'percentunit',
            max: 1,
            steps: [[0.8, 'orange'], [1, 'red']],
            queries: [q(
                'max by (app, limit) (clawdforge_budget_used_usd) / max by (app, limit) (clawdforge_budget_usd)',
                '{{app}} {{limit}}',
            )],
        })],
        [8, 8, panels.timeseries({
            title: 'Spend rate by app',
            description: 'US dollars per hour: one-shot runs (claude\'s total_cost_usd) and turns (as '
                + 'the agents report them).',
            unit: 'currencyUSD',
            queries: [
                q(`3600 * sum by (app) (rate(clawdforge_run_cost_usd_total[${RATE}]))`, '{{app}} runs'),
                q(`3600 * sum by (app) (rate(clawdforge_agent_cost_usd_total[${RATE}]))`, '{{app}} agents'),
            ],
        })],
        [8, 8, panels.bargauge({
            title: 'Spend in the time range by app',
            description: 'US dollars over the dashboard\'s time range, by app: runs and agents\' turns. '
                + 'The counters start at each worker\'s start; the ledger has the exact figures '
                + '(clawdforge usage).',
            unit: 'currencyUSD',
            queries: [
                q('sum by (app) (increase(clawdforge_run_cost_usd_total[$__range]))', '{{app}} runs'),
                q('sum by (app) (increase(clawdforge_agent_cost_usd_total[$__range]))', '{{app}} agents'),
            ],
        })],
        [8, 8, panels.timeseries({
            title: 'Quota refusals by app and limit',
            description: 'Requests refused per minute by a limit of the app\'s policy.',
            unit: 'reqpm',
            stack: true,
            queries: [q(perMinute('clawdforge_quota_refusals_total', ['app', 'limit']), '{{app}} {{limit}}')],
        })],
    ]],

    ['Load', [
        [8, 8, panels.timeseries({
            title: 'Open sessions by app',
            description: 'Open sessions in the ledger (every worker reports the same figure: the '
                + 'highest is taken, then the agents summed).',
            unit: 'none',
            stack: true,
            queries: [q('sum by (app) (max by (app, agent) (clawdforge_sessions_open))', '{{app}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'Work in flight',
            description: 'Turns running and queued, runs running: all workers.',
            unit: 'none',
            queries: [
                q('sum(clawdforge_turns_running)', 'turns running'),
                q('sum(clawdforge_turns_queued)', 'turns queued'),
                q('sum(clawdforge_runs_running)', 'runs running'),
            ],
        })],
        [8, 8, panels.timeseries({
            title: 'Agent processes',
            description: 'Agent processes the workers hold, by backend.',
            unit: 'none',
            queries: [q('sum by (backend) (clawdforge_agent_processes)', '{{backend}}')],
        })],
    ]],

    ['Processes', [
        [8, 8, panels.timeseries({
            title: 'Workers',
            description: 'Workers answering the sidecar\'s ping, and workers Prometheus scrapes.',
            unit: 'none',
            queries: [
                q('max(clawdforge_workers)', 'answering the sidecar'),
                q('count(up{job="clawdforge-workers"} == 1)', 'scraped'),
            ],
        })],
        [8, 8, panels.timeseries({
            title: 'Resident memory',
            description: 'Resident memory of each worker and of the sidecar (agent processes not included).',
            unit: 'bytes',
            queries: [q('process_resident_memory_bytes{job=~"clawdforge-.*"}', '{{job}} {{instance}}')],
        })],
        [8, 8, panels.timeseries({
            title: 'CPU',
            description: 'CPU time per second of each worker and of the sidecar (1 = one core).',
            unit: 'percentunit',
            queries: [q(`rate(process_cpu_seconds_total{job=~"clawdforge-.*"}[${RATE}])`,
                '{{job}} {{instance}}')],
        })],
    ]],
];

/** The dashboard, as Grafana's JSON model. */
function dashboard() {
    const out = [];
    let id = 0;
    let y = 0;
    for (const [title, row] of layout) {
        out.push({
            id: ++id,
            type: 'row',
            title,
            collapsed: false,
            gridPos: { h: 1, w: 24, x: 0, y },
            panels: [],
        });
        y += 1;
        let x = 0;
        let height = 0;
        for (const [w, h, panel] of row) {
            if (x + w > 24) {
                y += height;
                x = 0;
                height = 0;
            }
            const { type, title: name, ...rest } = panel;
            out.push({ id: ++id, type, title: name, gridPos: { h, w, x, y }, ...rest });
            x += w;
            height = Math.max(height, h);
        }
        y += height;
    }
    return {
        id: null,
        uid: 'clawdforge',
        title: 'clawdforge',
        description: 'Requests, turns, spend, load and processes of clawdforge\'s workers and sidecar.',
        tags: ['clawdforge'],
        editable: false,
        graphTooltip: 1,
        refresh: '30s',
        schemaVersion: 39,
        version: 1,
        time: { from: 'now-6h', to: 'now' },
        timezone: 'browser',
        annotations: { list: [] },
        templating: { list: [] },
        links: [],
        panels: out,
    };
}

/** JSON indented by two spaces, with what fits in 100 columns on one line. */
function format(value, indent = '', key = '') {
    const flat = JSON.stringify(value);
    if (typeof value !== 'object' || value === null || indent.length + key.length + flat.length <= 100) {
        return flat;
    }
    const inner = `${indent}  `;
    if (Array.isArray(value)) {
        return `[\n${value.map((v) => inner + format(v, inner)).join(',\n')}\n${indent}]`;
    }
    const fields = Object.entries(value).map(([k, v]) => {
        const name = `${JSON.stringify(k)}: `;
        return inner + name + format(v, inner, name);
    });
    return `{\n${fields.join(',\n')}\n${indent}}`;
}

function text() {
    return `${format(dashboard())}\n`;
}

module.exports = { dashboard, text, FILE, PROMETHEUS };

if (require.main === module) {
    if (process.argv.includes('--check')) {
        const committed = fs.existsSync(FILE) ? fs.readFileSync(FILE, 'utf8') : '';
        if (committed !== text()) {
            console.error(`${path.relative(process.cwd(), FILE)} is not what scripts/grafana-dashboard.cjs `
                + 'makes: run node scripts/grafana-dashboard.cjs');
            process.exit(1);
        }
    } else {
        fs.writeFileSync(FILE, text());
        console.log(`wrote ${path.relative(process.cwd(), FILE)}`);
    }
}
