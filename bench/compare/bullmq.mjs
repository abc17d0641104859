// BullMQ's side of `spool bench-compare` (host/src/bench/compare.rs runs it).
// One phase per run, against the benchmark's redis-server (a unix socket),
// printing one JSON line of figures; the benchmark reads Redis' INFO around
// each run itself. Phases:
//   add N                add N jobs with addBulk, 1,000 per call (untimed setup)
//   submit N             the same, timed: jobs/s
//   process N C          a no-op Worker of concurrency C until N jobs completed
// Environment: REDIS_SOCKET (the socket path).
import { Queue, Worker } from 'bullmq';

const connection = { path: process.env.REDIS_SOCKET, maxRetriesPerRequest: null };
const QUEUE = 'bench';
const BATCH = 1000;
const [phase, nArg, cArg] = process.argv.slice(2);
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
  if (phase === 'process') {
    const concurrency = Number(cArg);
    let done = 0;
    let finished;
    const allDone = new Promise((resolve) => { finished = resolve; });
    const cpuBefore = process.cpuUsage();
    const started = process.hrtime.bigint();
    const worker = new Worker(QUEUE, async () => {}, { connection, concurrency });
    worker.on('completed', () => {
      done += 1;
      if (done === n) finished();
    });
    worker.on('failed', (_job, err) => { console.error('job failed', err); });
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
