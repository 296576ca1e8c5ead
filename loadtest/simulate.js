// k6 load test of the sentiment service: POST /project/bulk-predict with a controlled cache hit rate.
//
// Environment (all optional):
//   BASE_URL           service under test (default http://localhost:8000)
//   CACHE_HIT_RATE     0..1 (default 0)
//   HIT_GRANULARITY    request (default): a hit sends the fixed warm request (identical body), a miss
//                      sends TEXTS_PER_REQUEST texts never seen before;
//                      text: each text is drawn from a WARM_POOL_SIZE-sentence warm pool with
//                      probability CACHE_HIT_RATE, and is new otherwise (the "partial repeat" mix)
//   TEXTS_PER_REQUEST  texts per request (default 10)
//   WARM_POOL_SIZE     warm sentences (default 50)
//   SCENARIO           closed (default: ramp 0 -> VUS, hold, ramp to 0), open (constant arrival rate),
//                      saturation (arrival rate stepped up), smoke (a few seconds, for CI)
//   VUS, RAMP_UP, HOLD, RAMP_DOWN          closed model (defaults 10, 30s, 60s, 15s)
//   RATE, DURATION, MAX_VUS                open model (defaults 50 req/s, 60s, 200)
//   START_RATE, STEP_RATE, STEPS, STEP_DURATION   saturation (defaults 10, 10, 10, 20s)
//   HEALTH_RATE        requests/s to /project/health alongside the load (default 5; 0 = off)
//   RUN_ID             makes the "new" texts unique across runs (default: start time)
//   SUMMARY_FILE       where handleSummary writes the JSON summary (default: none is written; `sentiment
//                      loadtest` sets it to loadtest/results/<run>/rate-<r>/summary.json)
//   P99_MS             p(99) threshold in ms (default 2000)
//   UNEXPECTED_LOG_LIMIT  answers per VU that are neither 200 nor shed logged with status, error and body (default 5)
//   TEXT_POOL_FILE     a JSON text pool (`sentiment bench`'s mixed workload writes one: {"texts": [{"text",
//                      "tokens", "size"}, ...]}): each request takes the next TEXTS_PER_REQUEST texts of the
//                      pool, in order across all VUs (every text sent once; after the last one the pool
//                      starts again with a round mark appended, counted in pool_wrapped_texts), instead
//                      of CACHE_HIT_RATE / HIT_GRANULARITY. Requests are tagged size:short (every text
//                      short), size:medium or size:long (the longest size among their texts), and
//                      tokens_classified counts the pool's token counts of the texts answered. A request
//                      shed with 503/429 is sent again after Retry-After (up to POOL_RETRIES times,
//                      default 10), so the texts answered are the pool's mix; pool_request_duration is
//                      each request's time from its first attempt to its answer, waits included.
//
// Size a run with these variables through k6's -e, which keeps the health probes alongside:
//   k6 run -e VUS=10 -e RAMP_UP=0s -e HOLD=30s -e RAMP_DOWN=0s loadtest/simulate.js
// k6's own sizing flags work too, but `k6 run --vus 10 --duration 30s` (or --iterations) replaces the
// scenarios above with k6's default one, which runs the default export (the same request as the load
// scenario) and no health probes: its summary says so.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { SharedArray } from 'k6/data';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:8000';
const HIT_RATE = parseFloat(__ENV.CACHE_HIT_RATE || '0');
const GRANULARITY = __ENV.HIT_GRANULARITY || 'request';
const TEXTS_PER_REQUEST = parseInt(__ENV.TEXTS_PER_REQUEST || '10', 10);
const WARM_POOL_SIZE = parseInt(__ENV.WARM_POOL_SIZE || '50', 10);
const SCENARIO = __ENV.SCENARIO || 'closed';
const HEALTH_RATE = parseFloat(__ENV.HEALTH_RATE || '5');
const RUN_ID = __ENV.RUN_ID || `${Date.now()}`;
const SUMMARY_FILE = __ENV.SUMMARY_FILE || '';
const P99_MS = __ENV.P99_MS || '2000';
const TEXT_POOL_FILE = __ENV.TEXT_POOL_FILE || '';
// Read once in the init context and shared by every VU (open() only works here).
const POOL = TEXT_POOL_FILE ? new SharedArray('text pool', () => JSON.parse(open(TEXT_POOL_FILE)).texts) : null;
const SIZE_ORDER = { short: 0, medium: 1, long: 2 };
const POOL_RETRIES = parseInt(__ENV.POOL_RETRIES || '10', 10);

const SUBJECTS = ['The film', 'This movie', 'The plot', 'The acting', 'The soundtrack', 'The script', 'The ending',
  'The director\'s new work', 'The sequel', 'The cast', 'The dialogue', 'The pacing', 'This documentary',
  'The cinematography', 'The lead performance', 'The story', 'The comedy', 'The thriller', 'The animation',
  'The premise', 'The final act', 'The villain', 'The score', 'The editing', 'The remake'];
const PREDICATES = ['is a joy from start to finish', 'is a tedious, muddled mess', 'left me cold and bored',
  'is warm, funny and beautifully made', 'never rises above its clichés', 'is one of the best of the year',
  'feels lazy and overlong', 'is sharp, moving and smart', 'wastes a talented cast', 'is a delightful surprise',
  'falls apart in the second half', 'is gripping and heartfelt', 'is dull and predictable',
  'deserves a much wider audience', 'is an embarrassing misfire', 'works beautifully on every level',
  'is too long by half an hour', 'made me laugh out loud', 'is hollow and forgettable', 'is a small triumph'];

function sentence(n) {
  return `${SUBJECTS[n % SUBJECTS.length]} ${PREDICATES[Math.floor(n / SUBJECTS.length) % PREDICATES.length]}.`;
}

const WARM_POOL = Array.from({ length: WARM_POOL_SIZE }, (_, i) => sentence(i * 7 + 3));
const WARM_REQUEST = JSON.stringify({ text: WARM_POOL.slice(0, TEXTS_PER_REQUEST) });
const HEADERS = { 'Content-Type': 'application/json' };
const PARAMS = { headers: HEADERS, tags: { name: 'bulk-predict' }, timeout: '30s' };

export const texts = new Counter('texts_classified');
export const warmTexts = new Rate('warm_text_rate');
export const shed = new Counter('shed_requests');
export const tokens = new Counter('tokens_classified');
export const wrapped = new Counter('pool_wrapped_texts');
// With a pool: from a request's first attempt to its last, waits after 503 included (the client's view).
export const requestTime = new Trend('pool_request_duration', true);
export const givenUp = new Counter('pool_requests_given_up'); // still shed after POOL_RETRIES retries

function newText(i) {
  // A unique tail makes the text (and its tokens) new: it must miss every cache.
  return `${sentence(__VU * 131 + __ITER * 17 + i)} (${RUN_ID}-${__VU}-${__ITER}-${i})`;
}

function poolRequest() {
  // The next TEXTS_PER_REQUEST texts of the pool: iterationInTest numbers this scenario's iterations
  // across all VUs, so no two requests share a text.
  const first = exec.scenario.iterationInTest * TEXTS_PER_REQUEST;
  const list = [];
  let size = 'short';
  let count = 0;
  for (let i = 0; i < TEXTS_PER_REQUEST; i++) {
    const position = first + i;
    const entry = POOL[position % POOL.length];
    const round = Math.floor(position / POOL.length);
    if (round > 0) wrapped.add(1);
    list.push(round > 0 ? `${entry.text} [round ${round}]` : entry.text);
    count += entry.tokens;
    if (SIZE_ORDER[entry.size] > SIZE_ORDER[size]) size = entry.size;
  }
  return { payload: JSON.stringify({ text: list }), size, tokens: count };
}

function body() {
  if (GRANULARITY === 'text') {
    const list = [];
    for (let i = 0; i < TEXTS_PER_REQUEST; i++) {
      const warm = Math.random() < HIT_RATE;
      warmTexts.add(warm);
      list.push(warm ? WARM_POOL[Math.floor(Math.random() * WARM_POOL.length)] : newText(i));
    }
    return JSON.stringify({ text: list });
  }
  const hit = Math.random() < HIT_RATE;
  for (let i = 0; i < TEXTS_PER_REQUEST; i++) warmTexts.add(hit);
  if (hit) return WARM_REQUEST;
  return JSON.stringify({ text: Array.from({ length: TEXTS_PER_REQUEST }, (_, i) => newText(i)) });
}

function loadScenario() {
  const vus = parseInt(__ENV.VUS || '10', 10);
  switch (SCENARIO) {
    case 'smoke':
      return { executor: 'constant-vus', vus: Math.min(vus, 2), duration: __ENV.DURATION || '5s' };
    case 'open':
      return {
        executor: 'constant-arrival-rate', rate: parseInt(__ENV.RATE || '50', 10), timeUnit: '1s',
        duration: __ENV.DURATION || '60s', preAllocatedVUs: vus, maxVUs: parseInt(__ENV.MAX_VUS || '200', 10),
      };
    case 'saturation': {
      const start = parseInt(__ENV.START_RATE || '10', 10);
      const step = parseInt(__ENV.STEP_RATE || '10', 10);
      const steps = parseInt(__ENV.STEPS || '10', 10);
      const stepDuration = __ENV.STEP_DURATION || '20s';
      const stages = [];
      for (let i = 0; i < steps; i++) {
        stages.push({ target: start + i * step, duration: '2s' }, { target: start + i * step, duration: stepDuration });
      }
      return {
        executor: 'ramping-arrival-rate', startRate: start, timeUnit: '1s', stages,
        preAllocatedVUs: vus, maxVUs: parseInt(__ENV.MAX_VUS || '300', 10),
      };
    }
    default:
      return {
        executor: 'ramping-vus', startVUs: 0, gracefulRampDown: '10s',
        stages: [
          { duration: __ENV.RAMP_UP || '30s', target: vus },
          { duration: __ENV.HOLD || '60s', target: vus },
          { duration: __ENV.RAMP_DOWN || '15s', target: 0 },
        ],
      };
  }
}

const scenarios = { load: Object.assign({ exec: 'predict' }, loadScenario()) };
if (HEALTH_RATE > 0 && SCENARIO !== 'smoke') {
  const load = scenarios.load;
  const seconds = (d) => parseInt(d, 10) * (d.endsWith('m') ? 60 : 1);
  let total;
  if (load.stages) total = load.stages.reduce((sum, s) => sum + seconds(s.duration), 0);
  else total = seconds(load.duration);
  scenarios.health = {
    executor: 'constant-arrival-rate', exec: 'health', rate: HEALTH_RATE, timeUnit: '1s',
    duration: `${total}s`, preAllocatedVUs: 2, maxVUs: 10,
  };
}

const thresholds = {
  'http_req_failed{scenario:load}': ['rate<0.01'],
  'http_req_duration{scenario:load}': [`p(99)<${P99_MS}`],
  'http_req_failed{scenario:default}': ['rate<0.01'], // the same bounds under --vus / --duration
  'http_req_duration{scenario:default}': [`p(99)<${P99_MS}`],
  'http_reqs{scenario:load}': ['count>=0'], // reported per scenario in the summary
  'http_req_duration{scenario:load,expected_response:true}': ['p(99)>=0'], // latency of the answered ones
  'http_req_duration{scenario:health}': ['p(99)>=0'],
  'http_reqs{scenario:health}': ['count>=0'],
};
if (POOL) {
  // Latency and count by request size (size:short = every text of the request short).
  for (const size of Object.keys(SIZE_ORDER)) {
    thresholds[`http_req_duration{scenario:load,size:${size}}`] = ['p(99)>=0'];
    thresholds[`http_reqs{scenario:load,size:${size}}`] = ['count>=0'];
    thresholds[`pool_request_duration{size:${size}}`] = ['p(99)>=0'];
    thresholds[`shed_requests{size:${size}}`] = ['count>=0'];
  }
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
  discardResponseBodies: false,
};

function isShed(response) {
  return response.status === 429 || (response.status === 503 && String(response.body).includes('"overloaded"'));
}

// The first UNEXPECTED_LOG_LIMIT answers per VU that are neither 200 nor a shed (429, or 503 "overloaded") go to k6's log
// with their status, k6's error and the start of the body: a failed rate alone does not say what failed.
const UNEXPECTED_LOG_LIMIT = parseInt(__ENV.UNEXPECTED_LOG_LIMIT || '5', 10);
let unexpectedLogged = 0;

function reportUnexpected(response) {
  if (unexpectedLogged >= UNEXPECTED_LOG_LIMIT) return;
  unexpectedLogged += 1;
  const body = typeof response.body === 'string' ? response.body.slice(0, 300) : '';
  console.warn(`unexpected answer: status ${response.status} error_code ${response.error_code} ` +
    `error "${response.error}" after ${response.timings.duration.toFixed(1)} ms, body: ${body}`);
}

function post(request) {
  const params = request.size ? Object.assign({}, PARAMS, { tags: { name: 'bulk-predict', size: request.size } }) : PARAMS;
  const response = http.post(`${BASE_URL}/project/bulk-predict`, request.payload, params);
  const ok = check(response, {
    'status is 200': (r) => r.status === 200,
    'one ranked list per text': (r) => {
      if (r.status !== 200) return false;
      const predictions = r.json('predictions');
      return Array.isArray(predictions) && predictions.length === TEXTS_PER_REQUEST &&
        predictions.every((ranked) => ranked.length >= 2 && ranked[0].score >= ranked[1].score);
    },
  });
  if (response.status !== 200 && !isShed(response)) reportUnexpected(response);
  if (ok) {
    texts.add(TEXTS_PER_REQUEST);
    if (request.size) tokens.add(request.tokens);
  }
  const refused = response.status === 503 || response.status === 429;
  if (refused) {
    // A well-behaved client: a shed request is retried after Retry-After, not in a tight loop.
    shed.add(1, request.size ? { size: request.size } : {});
    sleep(Math.min(parseFloat(response.headers['Retry-After'] || '1') || 1, 5));
  }
  return refused;
}

export function predict() {
  if (!POOL) {
    post({ payload: body(), size: null, tokens: 0 });
    return;
  }
  // The pool's texts are the mix being measured: a shed request is sent again (up to POOL_RETRIES
  // times), so the texts answered are the pool's, long ones included, not what shedding lets through.
  const request = poolRequest();
  const started = Date.now();
  let refused = true;
  for (let attempt = 0; refused && attempt <= POOL_RETRIES; attempt++) refused = post(request);
  if (refused) givenUp.add(1, { size: request.size });
  requestTime.add(Date.now() - started, { size: request.size });
}

// What k6 runs when --vus / --duration / --iterations replace the scenarios.
export default predict;

export function health() {
  const response = http.get(`${BASE_URL}/project/health`, { tags: { name: 'health' }, timeout: '10s' });
  check(response, { 'health is 200': (r) => r.status === 200 });
}

function metric(data, name, stat) {
  const m = data.metrics[name];
  return m && m.values && m.values[stat] !== undefined ? m.values[stat] : null;
}

export function handleSummary(data) {
  // Under --vus/--duration there is no `load` scenario: the plain metrics are the load's.
  const load = metric(data, 'http_reqs{scenario:load}', 'count') ? '{scenario:load}' : '';
  const d = `http_req_duration${load}`;
  const lines = [
    `scenario=${load ? SCENARIO : 'default (k6 flags)'} ` +
      (POOL ? 'text pool' : `cache_hit_rate=${HIT_RATE} granularity=${GRANULARITY}`) + ` texts/request=${TEXTS_PER_REQUEST}`,
    `requests/s ${(metric(data, `http_reqs${load}`, 'rate') || metric(data, 'iterations', 'rate') || 0).toFixed(1)}` +
      `  texts/s ${(metric(data, 'texts_classified', 'rate') || 0).toFixed(1)}` +
      `  failed ${((metric(data, `http_req_failed${load}`, 'rate') || 0) * 100).toFixed(2)}%`,
    `latency ms p50 ${metric(data, d, 'med')?.toFixed(1)} p90 ${metric(data, d, 'p(90)')?.toFixed(1)}` +
      ` p95 ${metric(data, d, 'p(95)')?.toFixed(1)} p99 ${metric(data, d, 'p(99)')?.toFixed(1)}`,
  ];
  if (POOL) {
    const short = metric(data, 'pool_request_duration{size:short}', 'p(99)');
    lines.push(`text pool ${TEXT_POOL_FILE} (${POOL.length} texts): tokens/s ${(metric(data, 'tokens_classified', 'rate') || 0).toFixed(0)}` +
      `  short-request p99 ${short === null ? '-' : short.toFixed(1)} ms` +
      `  given up ${metric(data, 'pool_requests_given_up', 'count') || 0}` +
      `  wrapped texts ${metric(data, 'pool_wrapped_texts', 'count') || 0}`);
  }
  if (metric(data, 'http_reqs{scenario:health}', 'count')) {
    lines.push(`health p99 ${metric(data, 'http_req_duration{scenario:health}', 'p(99)').toFixed(1)} ms`);
  } else if (!load) {
    lines.push('no health probes: k6\'s --vus/--duration/--iterations replaced the script\'s scenarios ' +
      '(size the run with -e VUS=10 -e RAMP_UP=0s -e HOLD=30s -e RAMP_DOWN=0s to keep them)');
  }
  const outputs = { stdout: lines.join('\n') + '\n' };
  if (SUMMARY_FILE) outputs[SUMMARY_FILE] = JSON.stringify(data, null, 2);
  return outputs;
}
