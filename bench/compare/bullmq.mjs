// BullMQ's side of `spool bench-compare` (host/src/bench/compare.rs runs it).
// One phase per run, against the benchmark's redis-server (a unix socket),
// printing one JSON line of figures; the benchmark reads Redis' INFO around
// each run itself. Phases:
//   add N                add N jobs with addBulk, 1,000 per call (untimed setup)
//   submit N             the same, timed: jobs/s
//   process N C          a no-op Worker of concurrency C until N jobs completed
//   process-chat N C URL a chat-shaped Worker (below) until N jobs completed,
//                        its model the Ollama-protocol server at URL
// Environment: REDIS_SOCKET (the socket path).
import http from 'node:http';
import { Queue, Worker } from 'bullmq';

const connection = { path: process.env.REDIS_SOCKET, maxRetriesPerRequest: null };
const QUEUE = 'bench';
const BATCH = 1000;
const [phase, nArg, cArg, modelUrl] = process.argv.slice(2);
const SYSTEM_PROMPT = 'You are a helpful assistant. Answer concisely.';
const n = Number(nArg);

async function addAll(queue) {
  for (let start = 0; start < n; start += BATCH) {
    const jobs = [];
    for (let i = start; i < Math.min(n, start + BATCH); i++) {
      jobs.push({ name: 'noop', data: { n: i } });
    }
    await queue.addBulk(jobs);
  }
}

// One streamed Ollama /api/chat call on a kept-alive connection: its NDJSON
// lines folded into the answer's text and its final (`done`) line.
function chat(agent, prompt) {
  const body = JSON.stringify({
    model: 'stub-chat',
    messages: [{ role: 'system', content: SYSTEM_PROMPT }, { role: 'user', content: prompt }],
    stream: true,
  });
  return new Promise((resolve, reject) => {
    const request = http.request(`${modelUrl}/api/chat`, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        reject(new Error(`the model answered ${response.statusCode}`));
        return;
      }
      response.setEncoding('utf8');
      let pending = '';
      let text = '';
      let done = null;
      response.on('data', (chunk) => {
        pending += chunk;
        let end;
        while ((end = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, end);
          pending = pending.slice(end + 1);
          if (line.trim() === '') continue;
          const frame = JSON.parse(line);
          text += frame.message?.content ?? '';
          if (frame.done) done = frame;
        }
      });
      response.on('end', () => (done ? resolve({ text, done }) : reject(new Error('the stream ended before done'))));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

// What spool's chat handler does around its model call, in BullMQ's terms:
// the same events (progress 10 and 30, the answer's text as one delta, progress
// 90; BullMQ writes active and completed itself) and the same model call.
function chatProcessor(agent) {
  return async (job) => {
    await job.updateProgress({ percent: 10, message: 'shaping prompt' });
    await job.updateProgress({ percent: 30, message: 'calling model' });
    const reply = await chat(agent, `job ${job.data.n}`);
    await job.updateProgress({ delta: reply.text });
    await job.updateProgress({ percent: 90, message: 'parsing answer' });
    return {
      response: reply.text,
      model: reply.done.model,
      usage: { promptTokens: reply.done.prompt_eval_count, completionTokens: reply.done.eval_count },
    };
  };
}

async function main() {
  if (phase === 'add' || phase === 'submit') {
    const queue = new Queue(QUEUE, { connection });
    await queue.waitUntilReady();
    const started = process.hrtime.bigint();
    await addAll(queue);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const rss = process.memoryUsage().rss;
    await queue.close();
    console.log(JSON.stringify({ phase, jobs: n, seconds, rate: n / seconds, rss }));
    return;
  }
  if (phase === 'process' || phase === 'process-chat') {
    const concurrency = Number(cArg);
    const processor = phase === 'process'
      ? async () => {}
      : chatProcessor(new http.Agent({ keepAlive: true, maxSockets: concurrency }));
    let done = 0;
    let finished;
    const allDone = new Promise((resolve) => { finished = resolve; });
    const cpuBefore = process.cpuUsage();
    const started = process.hrtime.bigint();
    const worker = new Worker(QUEUE, processor, { connection, concurrency });
    worker.on('completed', () => {
      done += 1;
      if (done === n) finished();
    });
    // A failed job would never be counted done: the phase ends, in error.
    worker.on('failed', (_job, err) => {
      console.error('job failed', err);
      process.exit(1);
    });
    await allDone;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu = process.cpuUsage(cpuBefore);
    await worker.close();
    console.log(JSON.stringify({
      phase, jobs: n, concurrency, seconds, rate: n / seconds,
      cpu_us: cpu.user + cpu.system,
    }));
    return;
  }
  throw new Error(`unknown phase ${phase}`);
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
