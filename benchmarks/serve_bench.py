"""`lladax serve` under load: 8 concurrent clients vs the same 8 requests one after another.

    python benchmarks/serve_bench.py [--checkpoint DIR] [--clients 8] [--gen 32 --block 32]

A live server on 127.0.0.1 (`lladax.serve.server.build_server`, a thread of this process) serves
the model of --checkpoint, or a random-init --preset (`small`: the embedded 2048-piece tokenizer)
(the sampler's cost does not depend on the weights). Every shape is compiled first (--warmup:
batch 1 and the batch of all clients), then the 8 requests (distinct prompts in one length
bucket, T = 0, /v1/completions) run sequentially (each waits for the last), then all at once
from 8 threads. Reports requests/s, tokens/s, p50 / p95 latency of each, the speed-up, and
whether every answer is identical in both modes (T = 0: batching never changes an answer).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import harness
import jax
import numpy as np
import requests

from lladax.config import preset
from lladax.data.tokenizer import load_tokenizer
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.model.transformer import init_params
from lladax.serve.engine import Engine
from lladax.serve.server import build_server


def _engine(args) -> Engine:
    sampler = SamplerConfig(gen_length=args.gen, block_length=args.block)
    if args.checkpoint:
        return Engine.load(args.checkpoint, sampler, max_batch=args.clients)
    cfg = preset(args.preset)
    params = init_params(cfg, jax.random.key(args.seed))
    tok = load_tokenizer("embedded", vocab_size=cfg.vocab_size)
    return Engine(cfg, params, tok, sampler, max_batch=args.clients, model_id=args.preset)


def _timed(url: str, prompt: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    r = requests.post(url, json={"prompt": prompt, "temperature": 0}, timeout=600)
    r.raise_for_status()
    body = r.json()
    return time.perf_counter() - t0, body["choices"][0]["text"], body["usage"]["completion_tokens"]


def _summary(name: str, wall: float, runs: list[tuple[float, str, int]]) -> dict:
    lat = np.asarray([r[0] for r in runs])
    return {
        "mode": name,
        "wall_s": wall,
        "req_per_s": len(runs) / wall,
        "tokens_per_s": sum(r[2] for r in runs) / wall,
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
    }


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--checkpoint", default=None, help="default: a random-init --preset")
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--clients", type=int, default=8)
    harness.add_options(ap, gen=32, block=32, seed=0)
    args = ap.parse_args()
    engine = _engine(args)
    prompts = [f"Request {i}: the list type" for i in range(args.clients)]
    width = max(len(engine.text_prompt(p)) for p in prompts)
    t0 = time.perf_counter()
    engine.scheduler.warmup(engine.sampler, [width], engine.tokenizer.bos_id)
    compile_s = time.perf_counter() - t0
    server = build_server(engine, "127.0.0.1", 0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/completions"
    _timed(url, prompts[0])  # the HTTP path warm
    t0 = time.perf_counter()
    sequential = [_timed(url, p) for p in prompts]
    seq = _summary("sequential", time.perf_counter() - t0, sequential)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        concurrent_runs = list(pool.map(lambda p: _timed(url, p), prompts))
    con = _summary(f"{args.clients} concurrent", time.perf_counter() - t0, concurrent_runs)
    server.should_exit = True
    thread.join(60)
    same = [r[1] for r in sequential] == [r[1] for r in concurrent_runs]
    speedup = con["req_per_s"] / seq["req_per_s"]
    print(harness.device_line())
    print(
        f"model {engine.model_id}, {args.clients} requests, prompt bucket "
        f"{engine.scheduler.width(width, args.gen)}, gen_length {args.gen}, block_length "
        f"{args.block}, steps {engine.sampler.resolved().steps}; compile (warmup) {compile_s:.1f} s"
    )
    print(harness.table_header(["mode", "wall s", "req/s", "tokens/s", "p50 s", "p95 s"]))
    for s in (seq, con):
        print(
            harness.table_row(
                [
                    s["mode"],
                    f"{s['wall_s']:.2f}",
                    f"{s['req_per_s']:.2f}",
                    f"{s['tokens_per_s']:.1f}",
                    f"{s['p50_s']:.2f}",
                    f"{s['p95_s']:.2f}",
                ]
            )
        )
    print(f"throughput {speedup:.1f}x, answers identical: {'yes' if same else 'NO'}")
    sizes = {
        s: int(engine.metrics.get("lladax_batches_total", size=s)) for s in engine.scheduler.sizes
    }
    print(f"sampler calls by batch size (warmup included): {sizes}")
    harness.print_record({"sequential": seq, "concurrent": con, "speedup": speedup, "same": same})


if __name__ == "__main__":
    main()
