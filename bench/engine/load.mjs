// Load a GGUF with llama.cpp (node-llama-cpp's prebuilt CPU binary) and
// generate tokens greedily; print one JSON line:
//   {"load_ms", "first_token_ms", "gen_ms", "tokens": [...], "threads"}
// load_ms is loadModel's wall time: llama.cpp maps the file (MAP_POPULATE and
// madvise(WILLNEED) on Linux), so it includes reading every byte.
//
//   node load.mjs MODEL [--tokens 16] [--threads N] [--prompt TEXT]
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import os from "node:os";
import {performance} from "node:perf_hooks";

function option(name, fallback) {
    const i = process.argv.indexOf("--" + name);
    return i > 0 ? process.argv[i + 1] : fallback;
}

const model_path = process.argv[2];
const ntokens = Number(option("tokens", "16"));
const cores = os.availableParallelism ? os.availableParallelism() : os.cpus().length;
const threads = Math.min(Number(option("threads", String(cores))), cores);
const prompt = option("prompt", "the quick brown fox");

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error,
                              maxThreads: threads});
const t0 = performance.now();
const model = await llama.loadModel({modelPath: model_path, useMmap: true, gpuLayers: 0});
const t1 = performance.now();
const context = await model.createContext({contextSize: 256, batchSize: 64, threads});
const sequence = context.getSequence();
const input = model.tokenize(prompt);
const tokens = [];
let first = null;
for await (const token of sequence.evaluate(input, {temperature: 0})) {
    if (first === null)
        first = performance.now();
    tokens.push(token);
    if (tokens.length >= ntokens)
        break;
}
const t2 = performance.now();
await context.dispose();
await model.dispose();
await llama.dispose();
console.log(JSON.stringify({load_ms: t1 - t0, first_token_ms: first - t0, gen_ms: t2 - t1,
                            tokens, threads}));
