// Scores HTTP cache-tests results (https://github.com/http-tests/cache-tests) with the suite's own
// rule, `determineTestResult` from test-engine/lib/results.mjs (dependencies honoured, as
// cache-tests.fyi does), for our results and for every published results/*.json, and writes the
// list of our failing tests. scripts/cache-tests.sh runs it; by hand:
//
//   node scripts/cache-tests-score.mjs --suite DIR --ours results.json [--ours results-2.json ...]
//        [--name NAME] [--failures failures.md] [--summary summary.json] [--note TEXT ...]
//        [--min-required N] [--min-optimal N]
//
// DIR is a copy of the suite (with node_modules when the failure list should carry the site's
// explanation of each test). Only the tests the CLI runs against a proxy are counted (the ones
// that are not `browser_only`), for every implementation, so the figures compare like with like.
// More than one --ours: the first run is the one scored and listed, the others are compared with
// it to find flaky tests; every run must meet the floors.
//
// Exit status: 0, 1 when a run is below a floor, 2 when the input is unusable.

import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'

function usage (message) {
  console.error(`cache-tests-score: ${message}`)
  process.exit(2)
}

const args = { ours: [], notes: [], name: 'ours (caching_proxy)', minRequired: 0, minOptimal: 0 }
for (let i = 2; i < process.argv.length; i++) {
  const arg = process.argv[i]
  const value = process.argv[++i]
  if (value === undefined) usage(`${arg} needs a value`)
  switch (arg) {
    case '--suite': args.suite = path.resolve(value); break
    case '--ours': args.ours.push(path.resolve(value)); break
    case '--name': args.name = value; break
    case '--failures': args.failures = path.resolve(value); break
    case '--summary': args.summary = path.resolve(value); break
    case '--note': args.notes.push(value.replace(/\s+/g, ' ')); break
    case '--min-required': args.minRequired = floor(arg, value); break
    case '--min-optimal': args.minOptimal = floor(arg, value); break
    default: usage(`unknown argument ${arg}`)
  }
}
if (!args.suite) usage('--suite DIR is required')
if (args.ours.length === 0) usage('--ours FILE is required')

function floor (arg, value) {
  if (!/^\d+$/.test(value)) usage(`${arg} must be a whole number, not "${value}"`)
  return parseInt(value, 10)
}

const suiteUrl = file => pathToFileURL(path.join(args.suite, file)).href
const testSuites = (await import(suiteUrl('tests/index.mjs'))).default
const { determineTestResult, resultTypes } = await import(suiteUrl('test-engine/lib/results.mjs'))
const published = (await import(suiteUrl('results/index.mjs'))).default

// The kinds the suite defines (an absent kind is a conformance test: see determineTestResult).
const KINDS = ['required', 'optimal', 'check']
const kindOf = test => test.kind ?? 'required'

// The tests the CLI runs against a proxy or CDN: the filter of test-engine/client/runner.mjs with
// useBrowserCache false (browser_only tests are skipped, cdn_only and browser_skip ones run).
const counted = []
for (const suite of testSuites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    counted.push({ test, suite })
  }
}
for (const { test } of counted) {
  if (!KINDS.includes(kindOf(test))) usage(`test ${test.id} has an unknown kind ${test.kind}`)
}

const outcomeNames = new Map(Object.entries(resultTypes).map(([name, type]) => [type, name]))
const outcome = (results, id) => outcomeNames.get(determineTestResult(testSuites, id, results))
// The outcome of the test's own checks, as if its dependencies had passed (what the CLI prints
// for a single test).
const ownOutcome = (results, id) =>
  outcomeNames.get(determineTestResult(testSuites, id, results, false))
const passed = name => name === 'pass' || name === 'yes'

// The tests at the root of a dependency failure: failed dependencies that failed on their own.
function rootCauses (results, id, seen = new Set()) {
  const roots = []
  for (const dep of lookup(id).depends_on || []) {
    if (seen.has(dep)) continue
    seen.add(dep)
    const name = outcome(results, dep)
    if (passed(name)) continue
    if (name === 'dependency_fail') roots.push(...rootCauses(results, dep, seen))
    else roots.push(dep)
  }
  return [...new Set(roots)]
}

function score (results) {
  const byKind = Object.fromEntries(KINDS.map(kind =>
    [kind, { total: 0, pass: 0, passIgnoringDependencies: 0, outcomes: {} }]))
  let tested = 0
  for (const { test } of counted) {
    const kind = byKind[kindOf(test)]
    const name = outcome(results, test.id)
    kind.total++
    kind.outcomes[name] = (kind.outcomes[name] || 0) + 1
    if (passed(name)) kind.pass++
    if (passed(ownOutcome(results, test.id))) kind.passIgnoringDependencies++
    if (test.id in results) tested++
  }
  return { byKind, tested }
}

function readResults (file) {
  let results
  try {
    results = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (error) {
    usage(`cannot read results ${file}: ${error.message}`)
  }
  if (results === null || typeof results !== 'object' || Array.isArray(results)) {
    usage(`${file} is not a cache-tests results object`)
  }
  return results
}

const runs = args.ours.map(readResults)
const ours = runs[0]
runs.forEach((results, i) => {
  const missing = counted.filter(({ test }) => !(test.id in results)).map(({ test }) => test.id)
  if (missing.length > 0) {
    usage(`${args.ours[i]} has no result for ${missing.length} of the ${counted.length} tests the CLI ` +
      `runs (${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}): the run did not complete`)
  }
  if (!counted.some(({ test }) => passed(ownOutcome(results, test.id)))) {
    usage(`no test passes in ${args.ours[i]}: the proxy does not work (or does not forward)`)
  }
})

// -- The table ----------------------------------------------------------------------------------

const rows = [{ name: args.name, type: 'this run', ...score(ours) }]
const others = []
for (const item of published) {
  const file = path.join(args.suite, 'results', item.file)
  if (!fs.existsSync(file)) continue
  others.push({ name: `${item.name} ${item.version}`, type: item.type, ...score(readResults(file)) })
}
others.sort((a, b) =>
  b.byKind.required.pass - a.byKind.required.pass ||
  b.byKind.optimal.pass - a.byKind.optimal.pass ||
  a.name.localeCompare(b.name))
rows.push(...others)

const totals = rows[0].byKind
const header = `| implementation | type | required pass (of ${totals.required.total}) | ` +
  `optimal pass (of ${totals.optimal.total}) | check yes (of ${totals.check.total}) | tests counted |`
const table = [header, '|---|---|--:|--:|--:|--:|']
for (const row of rows) {
  const name = row === rows[0] ? `**${row.name}**` : row.name
  table.push(`| ${name} | ${row.type} | ${row.byKind.required.pass} | ${row.byKind.optimal.pass} | ` +
    `${row.byKind.check.pass} | ${row.tested} of ${counted.length} |`)
}

const out = []
out.push(`### HTTP cache-tests: ${counted.length} tests run against a proxy ` +
  `(${KINDS.map(kind => `${totals[kind].total} ${kind}`).join(', ')})`)
out.push('')
out.push(...table)
out.push('')
out.push('Scored with `determineTestResult` of the suite (a test whose dependencies did not pass is a ' +
  'dependency failure, not a pass). Browsers did not run the proxy-only tests: those count as untested.')
out.push('')
out.push(`Our outcomes: ${KINDS.map(kind => `${kind} ${formatOutcomes(totals[kind].outcomes)}`).join('; ')}.`)
out.push('')
out.push('Ours with dependencies ignored (each test\'s own checks; not comparable with the table): ' +
  KINDS.map(kind => `${kind} ${totals[kind].passIgnoringDependencies}`).join(', ') + '.')
for (const note of args.notes) out.push('', `Note: ${note}`)

function formatOutcomes (outcomes) {
  return '(' + Object.entries(outcomes).sort((a, b) => b[1] - a[1])
    .map(([name, count]) => `${name} ${count}`).join(', ') + ')'
}

// -- Flaky tests: outcomes that differ between runs ---------------------------------------------

const flaky = []
if (runs.length > 1) {
  for (const { test } of counted) {
    // Dependencies honoured or not: most tests hang on a few roots, whose flakiness would hide
    // theirs.
    const outcomes = runs.map(results => outcome(results, test.id))
    const own = runs.map(results => ownOutcome(results, test.id))
    if (new Set(outcomes).size > 1 || new Set(own).size > 1) {
      flaky.push({ test, outcomes, messages: runs.map(results => message(results, test.id)) })
    }
  }
  out.push('')
  out.push(`Flaky across ${runs.length} runs: ${flaky.length} test(s)` +
    (flaky.length ? '' : '.'))
  for (const { test, outcomes, messages } of flaky) {
    out.push(`- \`${test.id}\` (${kindOf(test)}): ${outcomes.map((o, i) => `run ${i + 1} ${o}` +
      (messages[i] ? ` (${messages[i]})` : '')).join('; ')}`)
  }
  for (let i = 1; i < runs.length; i++) {
    const s = score(runs[i]).byKind
    out.push(`- run ${i + 1}: required ${s.required.pass}, optimal ${s.optimal.pass}, check ${s.check.pass}`)
  }
}

// What our result says about a test, in one line.
function message (results, id) {
  const result = results[id]
  const test = lookup(id)
  const name = outcome(results, id)
  if (passed(name)) return ''
  if (name === 'dependency_fail') {
    const own = ownOutcome(results, id)
    return `${dependencyText(results, id)}; its own checks: ${own}` +
      (passed(own) ? '' : ` (${ownMessage(result)})`)
  }
  return ownMessage(result)
}

function ownMessage (result) {
  if (result === undefined) return 'not run'
  if (Array.isArray(result)) return `${result[0]}: ${result[1]}`
  return JSON.stringify(result)
}

function dependencyText (results, id) {
  return 'depends on ' + rootCauses(results, id).map(dep => `\`${dep}\` (${outcome(results, dep)})`)
    .join(', ')
}

function lookup (id) {
  return counted.find(({ test }) => test.id === id).test
}

// -- The failure list ---------------------------------------------------------------------------

const failing = counted
  .map(({ test, suite }) => ({ test, suite, outcome: outcome(ours, test.id) }))
  .filter(({ outcome }) => !passed(outcome))
const kindOrder = kind => KINDS.indexOf(kind)
const normalize = text => text
  .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, '<uuid>')
  .replace(/\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT/g, '<date>')
  .replace(/\d+/g, 'N')

// Root test id -> the tests that are dependency failures because of it.
const blocked = new Map()
for (const f of failing) {
  if (f.outcome !== 'dependency_fail') continue
  for (const root of rootCauses(ours, f.test.id)) {
    if (!blocked.has(root)) blocked.set(root, [])
    blocked.get(root).push(f.test)
  }
}
const blockedByRoot = [...blocked].sort((a, b) => b[1].length - a[1].length)
if (blockedByRoot.length) {
  out.push('')
  out.push('Dependency failures, by the test at their root:')
  for (const [root, tests] of blockedByRoot) {
    out.push(`- \`${root}\` (${kindOf(lookup(root))}, ${outcome(ours, root)}: ${message(ours, root)}) ` +
      `blocks ${tests.length} tests (${KINDS.map(kind => `${tests.filter(t => kindOf(t) === kind).length} ${kind}`).join(', ')})`)
  }
}

if (args.failures) {
  const explain = await explainer()
  const md = []
  md.push('# HTTP cache-tests: our failing tests')
  md.push('')
  md.push(`Results: \`${args.ours[0]}\`. Scored with the suite's \`determineTestResult\` ` +
    '(dependencies honoured). Kinds: **required** = conformance (RFC 9111 MUSTs), **optimal** = ' +
    'cache efficiency (reuse when allowed), **check** = informational (a "no" is not a failure, but ' +
    'other tests may depend on a "yes"). "Own checks" is the outcome of the test\'s own checks with its ' +
    'dependencies ignored (what it will be once they pass).')
  md.push('')
  md.push(...table)
  md.push('')
  md.push(`${failing.length} tests did not pass (or answered no): ` + KINDS.map(kind =>
    `${failing.filter(f => kindOf(f.test) === kind).length} ${kind}`).join(', ') + '.')
  for (const note of args.notes) {
    md.push('')
    md.push(`Note: ${note}`)
  }
  if (flaky.length) {
    md.push('')
    md.push(`Flaky across ${runs.length} runs (outcome changed): ` +
      flaky.map(({ test }) => `\`${test.id}\``).join(', '))
  }
  md.push('')
  md.push('## Root causes of the dependency failures')
  md.push('')
  md.push('| test | kind | outcome | result | tests blocked (required, optimal, check) |')
  md.push('|---|---|---|---|---|')
  for (const [root, tests] of blockedByRoot) {
    const test = lookup(root)
    md.push(`| \`${root}\` | ${kindOf(test)} | ${outcome(ours, root)} | ${cell(message(ours, root))} | ` +
      `${tests.length} (${KINDS.map(kind => tests.filter(t => kindOf(t) === kind).length).join(', ')}) |`)
  }
  md.push('')
  md.push('## By failure message')
  md.push('')
  md.push('| count | outcome | message (numbers as N) | tests |')
  md.push('|--:|---|---|---|')
  const groups = new Map()
  for (const f of failing) {
    const key = `${f.outcome}\u0000${f.outcome === 'dependency_fail' ? dependencyText(ours, f.test.id) : normalize(message(ours, f.test.id))}`
    if (!groups.has(key)) groups.set(key, [])
    groups.get(key).push(f.test.id)
  }
  for (const [key, ids] of [...groups].sort((a, b) => b[1].length - a[1].length)) {
    const [name, text] = key.split('\u0000')
    md.push(`| ${ids.length} | ${name} | ${cell(text)} | ${ids.map(id => `\`${id}\``).join(' ')} |`)
  }
  md.push('')
  md.push('## By failure message of the tests\' own checks (dependencies ignored)')
  md.push('')
  md.push('| count | kinds (required, optimal, check) | own outcome | message (numbers as N) | tests |')
  md.push('|--:|---|---|---|---|')
  const ownGroups = new Map()
  for (const f of failing) {
    const own = ownOutcome(ours, f.test.id)
    if (passed(own)) continue
    const key = `${own}\u0000${normalize(ownMessage(ours[f.test.id]))}`
    if (!ownGroups.has(key)) ownGroups.set(key, [])
    ownGroups.get(key).push(f.test)
  }
  for (const [key, tests] of [...ownGroups].sort((a, b) => b[1].length - a[1].length)) {
    const [name, text] = key.split('\u0000')
    md.push(`| ${tests.length} | ${KINDS.map(kind => tests.filter(t => kindOf(t) === kind).length).join(', ')} | ` +
      `${name} | ${cell(text)} | ${tests.map(t => `\`${t.id}\``).join(' ')} |`)
  }
  md.push('')
  md.push('## By suite section')
  md.push('')
  md.push('| section | required | optimal | check |')
  md.push('|---|--:|--:|--:|')
  for (const suite of testSuites) {
    const inSuite = failing.filter(f => f.suite === suite)
    if (inSuite.length === 0) continue
    md.push(`| ${suite.name} (\`${suite.id}\`) | ` +
      KINDS.map(kind => inSuite.filter(f => kindOf(f.test) === kind).length).join(' | ') + ' |')
  }
  md.push('')
  md.push('## The list')
  md.push('')
  md.push('| id | kind | outcome | own checks | section | test | our result |')
  md.push('|---|---|---|---|---|---|---|')
  const sorted = [...failing].sort((a, b) =>
    kindOrder(kindOf(a.test)) - kindOrder(kindOf(b.test)) ||
    testSuites.indexOf(a.suite) - testSuites.indexOf(b.suite))
  for (const f of sorted) {
    md.push(`| \`${f.test.id}\` | ${kindOf(f.test)} | ${f.outcome} | ${ownOutcome(ours, f.test.id)} | ${f.suite.id} | ` +
      `${cell(f.test.name)} | ${cell(message(ours, f.test.id))} |`)
  }
  md.push('')
  md.push('## Each test, as the suite explains it')
  md.push('')
  md.push('The tests whose own checks do not pass, and the roots of dependency failures (the other ' +
    'dependency failures pass once their roots do). ' +
    'Reproduce one with the suite\'s CLI (origin and proxy running): ' +
    '`npm_config_base=http://127.0.0.1:PROXY npm_config_id=TEST-ID node --no-warnings test-engine/cli.mjs` ' +
    'in the suite\'s directory (it prints every request and response).')
  for (const f of sorted) {
    if (passed(ownOutcome(ours, f.test.id)) && !blocked.has(f.test.id)) continue
    md.push('')
    md.push(`### \`${f.test.id}\` (${kindOf(f.test)}, ${f.outcome})`)
    md.push('')
    md.push(`Our result: ${message(ours, f.test.id)}`)
    md.push('')
    md.push('<details><summary>the test</summary>')
    md.push('')
    md.push(await explain(f.test))
    md.push('')
    md.push('</details>')
  }
  fs.mkdirSync(path.dirname(args.failures), { recursive: true })
  fs.writeFileSync(args.failures, md.join('\n') + '\n')
  out.push('')
  out.push(`Every test that did not pass (${failing.length}, checks answered "no" included), ` +
    `grouped and explained: ${args.failures}`)
}

function cell (text) {
  return String(text).replace(/\|/g, '\\|').replace(/\n/g, ' ')
}

// The site's own explanation of a test (test-engine/lib/tpl/explain-test.liquid), when liquidjs is
// installed in the suite; else the test's definition.
async function explainer () {
  const fallback = async test => '~~~json\n' + JSON.stringify(test, null, 1) + '\n~~~'
  let Liquid
  try {
    const require = createRequire(path.join(args.suite, 'package.json'))
    Liquid = (await import(pathToFileURL(require.resolve('liquidjs')).href)).Liquid
  } catch {
    return fallback
  }
  const engine = new Liquid({ root: path.join(args.suite, 'test-engine/lib/tpl'), extname: '.liquid', cache: true })
  engine.registerFilter('typeof', v => typeof (v))
  engine.registerFilter('toLocaleString', v => v.toLocaleString())
  engine.registerFilter('skipHeaders', v => v ? v.filter(hdr => hdr.length < 3 || hdr[2] !== false) : [])
  return async test => {
    try {
      const text = await engine.renderFile('explain-test', { test })
      // Its headings start at h1: put them under this list's h3.
      return text.replace(/^(#+) /gm, (_, hashes) => `${'#'.repeat(Math.min(hashes.length + 3, 6))} `)
        .replace(/\n{3,}/g, '\n\n').trim()
    } catch {
      return fallback(test)
    }
  }
}

// -- Summary and floors -------------------------------------------------------------------------

if (args.summary) {
  fs.mkdirSync(path.dirname(args.summary), { recursive: true })
  fs.writeFileSync(args.summary, JSON.stringify({
    counted: counted.length,
    runs: runs.map(results => score(results).byKind),
    flaky: flaky.map(({ test, outcomes }) => ({ id: test.id, kind: kindOf(test), outcomes })),
    published: others.map(({ name, type, byKind }) => ({ name, type, byKind }))
  }, null, 2) + '\n')
}

console.log(out.join('\n'))

let belowFloor = false
runs.forEach((results, i) => {
  const { byKind } = score(results)
  const run = runs.length > 1 ? ` (run ${i + 1})` : ''
  if (byKind.required.pass < args.minRequired) {
    console.error(`FAIL: ${byKind.required.pass} required tests pass${run}, below the floor of ${args.minRequired} (CACHE_TESTS_MIN_REQUIRED)`)
    belowFloor = true
  }
  if (byKind.optimal.pass < args.minOptimal) {
    console.error(`FAIL: ${byKind.optimal.pass} optimal tests pass${run}, below the floor of ${args.minOptimal} (CACHE_TESTS_MIN_OPTIMAL)`)
    belowFloor = true
  }
})
process.exit(belowFloor ? 1 : 0)
