"""Serving speed: our batched multi-adapter engine / `humanizer serve` vs mlx-lm and mlx-optiq.

    .venv/bin/python bench/bench_serve.py [--json out.json] [--presets small,large]
        [--peers mlx-lm[,optiq]] [--optiq-python PATH]
        [--rounds 2] [--reps 2] [--new-tokens 128]
        [--clients 8] [--requests 3] [--max-tokens 64] [--mixed-rounds 1]
        [--skip-isolation] [--stream-reps 2] [--stream-tokens 64]
        [--skip-single] [--skip-mixed] [--skip-prefill]
        [--long-tokens 3000] [--short-tokens 16] [--prefill-reps 2] [--prefill-rounds 1]

    # ours beside `optiq serve` (issue 14): mixed load, isolation, single stream via the servers
    .venv/bin/python bench/bench_serve.py --peers optiq --skip-prefill --json serve.json

Same weights on both sides: the embedded `smollm2-135m` (4-bit GGUF import). Our engine
and server load it as they do by default on CPU (dequantized to float32 in memory,
`engine.adapters.layers.load_model`); mlx-lm loads a float32 copy of the very same dequantized
weights saved once to disk (`bench/common.py: prepare_f32_model`), so no side runs a
quantized matmul. Same BLAS: every process (children and both servers) runs with
OpenBLAS preloaded (`engine.blas.fast_blas_env(True)`); each reports what it mapped.

Adapters, per --presets (made once, cached in ~/.cache/humanizer-bench/serve/):
  sft   a real SFT adapter: `humanizer lora train smollm2-135m --data examples/sft`
        (small: 16 iters at learning rate 1e-3; large: 2 iters; trained briefly, their
        quality is irrelevant: the small ones are trained just enough that base, sft and
        sft+dpo give different greedy replies to every mixed-workload prompt, which the
        isolation pass needs; see TRAINING);
  dpo   a real DPO delta on it: `--data examples/dpo --method dpo --mount-adapter sft`
        (small: 16 iters at 1e-4);
  sftdpo `humanizer lora combine sft dpo`: one plain adapter equal to sft+dpo stacked,
        which stock mlx-lm loads;
  fused `python -m mlx_lm fuse --model <f32> --adapter-path sftdpo`: sft+dpo baked into
        float32 weights (mlx-lm's own fuse tool);
  optiq/dpo the dpo delta with its tensor names unprefixed, for optiq (see _undelta_copy).

1. Single stream (greedy, one fixed chat prompt, --new-tokens new tokens, after one
   warm-up generation per configuration): decode tok/s = (tokens - 1) / (time of the
   last token - time of the first token), i.e. prefill excluded, the same definition on
   both sides. Ours: `Engine.generate` with adapter "base", "sft", "sft+dpo" (both
   residuals in one forward). mlx-lm: `mlx_lm.generate.stream_generate` on `mlx_lm.load`
   of the f32 copy with no adapter, with adapter_path=sft, with adapter_path=sftdpo
   (combined), and on the fused model. Each side runs in its own subprocess; the
   parent alternates ours / mlx-lm for --rounds rounds, each child repeats every
   configuration --reps times round-robin; medians of all timed runs are reported.

2. Mixed workload: --clients concurrent clients (threads, urllib), each sending
   --requests chat requests one after the other (greedy, --max-tokens), client i's
   request j choosing adapter (i + j) mod 3 of base / sft / sft+dpo, so every client
   switches adapters per request as a real client would. (a) `humanizer serve --model
   smollm2-135m --adapter sft --adapter dpo` with the body field "adapter"; (b)
   `python -m mlx_lm.server --model <f32>` with the request fields "model": <f32 folder>
   and "adapters": <sft folder> | <sftdpo folder> | none (mlx-lm's way of choosing an
   adapter per request: it reloads model + adapter when the choice changes); (c) with
   --peers optiq, `optiq serve --model <f32> --adapter sft --adapter optiq/dpo` (mlx-optiq's
   venv, bench/optiq_env.py) with its body field "adapters": "sft-small" |
   "sft-small+dpo-small" (its stacking syntax) | "base". Measured: aggregate completion
   tokens/s (all completion tokens / wall time from the first request to the last
   response), request latency p50/p95, failures, and the CPUs other processes used
   meanwhile (the server under test excluded). Every server binds 127.0.0.1 and is
   stopped before the next starts; with --mixed-rounds > 1 the order rotates.
   Then, on ours and optiq (the servers that keep both adapters resident):
   isolation: each distinct (prompt, adapter) request of the workload (18 of the 24)
   served alone, one at a time, on the same server after the load; a request whose
   greedy reply under load differs from its reply alone is a crossed output. The
   sensitivity is printed too: on how many prompts the alone replies differ between
   adapters (a crossing between adapters that give the same reply cannot be seen), and,
   against one reference for all, every server's replies under load compared with ours
   served alone (a server whose replies alone are already wrong shows there).
   Single stream through the server: --stream-reps streamed greedy requests per choice
   (the single-stream prompt, --stream-tokens new tokens), decode tok/s from the SSE
   chunks' arrival times, tokens from the usage chunk (serve_http.stream_decode).

3. A short request beside a long prefill, before / after fair prefill: our engine only,
   once with prefill_policy="fcfs" (before: the oldest prompt's chunks to its end first)
   and once with "fair" (after: prefilling prompts take turns, a chunk each), each in its
   own subprocess, the order flipped every --prefill-rounds round. Per rep: the short chat
   request (--short-tokens new tokens, greedy) alone; then a --long-tokens plain prompt
   (1 new token) is submitted and, as soon as its first prefill chunk is done, the same
   short request. Measured: the short request's latency (submit to last token) and time
   to first token, the long prompt's time to first token (what fairness costs it); the
   ratios fcfs / fair. Adapters are not involved (base), so this part needs no training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import serve_http as http  # noqa: E402
from common import child_blas, table, write_result  # noqa: E402
from optiq_env import ensure_optiq_python, optiq_cli, optiq_versions  # noqa: E402
from serve_http import CHOICES, MIXED_PROMPTS  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
SINGLE_PROMPT = [{"role": "user", "content": (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather, the keeper's daily routine and what the message says.")}]


# ------------------------------------------------------------------------ children


def _decode_tps(n: int, t_first: float | None, t_last: float | None) -> float | None:
    if n < 2 or t_first is None or t_last is None or t_last <= t_first:
        return None
    return (n - 1) / (t_last - t_first)


def child_ours(spec: dict) -> dict:
    import mlx.core as mx

    from engine.generate import Engine

    p = spec["preset"]
    t0 = time.perf_counter()
    eng = Engine.load(spec["model_src"], adapters=[(p["sft"], "sft"), (p["dpo"], "dpo")], max_rows=8)
    eng.start()
    load_s = time.perf_counter() - t0
    prompt = eng.encode_chat(SINGLE_PROMPT)
    n_new = spec["new_tokens"]
    runs = {c: [] for c in CHOICES}
    tokens = {}
    try:
        for c in CHOICES:  # warm-up
            eng.generate(prompt, c, timeout=300, temperature=0.0, max_tokens=16)
        for _ in range(spec["reps"]):
            for c in CHOICES:
                g = eng.generate(prompt, c, timeout=300, temperature=0.0, max_tokens=n_new)
                # first token time and finish time: engine's own timestamps (time.time())
                runs[c].append({"tokens": g.completion_tokens,
                                "decode_tps": _decode_tps(g.completion_tokens, g.first_token_at, g.finished_at),
                                "finish": g.finish_reason})
                tokens[c] = g.token_ids[:24]
        mode = eng.mode
    finally:
        eng.close()
    return {"side": "ours", "mode": mode, "load_s": load_s, "prompt_tokens": len(prompt), "runs": runs,
            "first_tokens": tokens, "blas": child_blas(), "mlx": mx.__version__}


def child_prefill(spec: dict) -> dict:
    """One prefill policy: a short request alone, then beside a long prompt's prefill."""
    import mlx.core as mx

    from engine.generate import Engine, SamplingParams

    t0 = time.perf_counter()
    eng = Engine.load(spec["model_src"], max_rows=8, prefill_policy=spec["policy"])
    eng.start()
    load_s = time.perf_counter() - t0
    short = eng.encode_chat([{"role": "user", "content": MIXED_PROMPTS[2]}])
    text = " ".join(MIXED_PROMPTS)
    long = eng.encode(text)
    while len(long) < spec["long_tokens"]:
        long += eng.encode(" " + text)
    long = long[:spec["long_tokens"]]
    greedy = lambda n: SamplingParams(temperature=0.0, max_tokens=n)  # noqa: E731
    runs = []
    try:
        eng.generate(short, None, timeout=300, temperature=0.0, max_tokens=4)  # warm-up
        eng.generate(long[:eng.prefill_chunk + 1], None, timeout=300, temperature=0.0, max_tokens=1)
        for _ in range(spec["reps"]):
            alone = eng.submit(short, None, greedy(spec["short_tokens"])).result(600)
            g_long = eng.submit(long, None, greedy(1))
            deadline = time.monotonic() + 600
            while g_long.prefilled_tokens < min(eng.prefill_chunk, len(long) - 1) and not g_long.done:
                if time.monotonic() > deadline:
                    raise SystemExit("the long prompt's first chunk took over 600 s")
                time.sleep(0.002)
            beside = eng.submit(short, None, greedy(spec["short_tokens"])).result(600)
            g_long.result(1200)
            ta, tb, tl = alone.timing(), beside.timing(), g_long.timing()
            runs.append({"short_alone_s": ta["latency_s"], "short_beside_s": tb["latency_s"],
                         "short_ttft_s": tb["ttft_s"], "long_ttft_s": tl["ttft_s"],
                         "short_done_before_long_token": beside.finished_at < (g_long.first_token_at or 0),
                         "same_tokens": beside.token_ids == alone.token_ids, "short_tokens": len(beside.token_ids)})
    finally:
        eng.close()
    return {"side": spec["policy"], "load_s": load_s, "long_tokens": len(long), "short_prompt_tokens": len(short),
            "prefill_chunk": eng.prefill_chunk, "runs": runs, "blas": child_blas(), "mlx": mx.__version__}


def child_peer(spec: dict) -> dict:
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    p = spec["preset"]
    f32 = spec["model_f32"]
    t0 = time.perf_counter()
    models = {
        "base": load(f32),
        "sft (adapter)": load(f32, adapter_path=p["sft"]),
        "sft+dpo (combined adapter)": load(f32, adapter_path=p["sftdpo"]),
        "sft+dpo (fused)": load(p["fused"]),
    }
    load_s = time.perf_counter() - t0
    tok = models["base"][1]
    prompt = tok.apply_chat_template(SINGLE_PROMPT, add_generation_prompt=True)
    if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    prompt = [int(t) for t in prompt]
    n_new = spec["new_tokens"]

    def one(model, tokenizer, max_tokens):
        ids, t_first, t_last, own = [], None, None, None
        for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
            now = time.time()
            if t_first is None:
                t_first = now
            t_last = now
            ids.append(int(r.token))
            own = r.generation_tps
        return ids, t_first, t_last, own

    runs = {c: [] for c in models}
    tokens = {}
    for c, (m, t) in models.items():
        one(m, t, 16)
    for _ in range(spec["reps"]):
        for c, (m, t) in models.items():
            ids, t1, t2, own = one(m, t, n_new)
            runs[c].append({"tokens": len(ids), "decode_tps": _decode_tps(len(ids), t1, t2), "own_tps": own})
            tokens[c] = ids[:24]
    return {"side": "mlx-lm", "load_s": load_s, "prompt_tokens": len(prompt), "runs": runs, "first_tokens": tokens,
            "blas": child_blas(), "mlx": mx.__version__}


# ------------------------------------------------------------------------ preparation


def _run(cmd: list[str], log, cwd=None, timeout=900) -> None:
    log("  $ " + " ".join(str(c) for c in cmd))
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=common._child_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout[-3000:]}")


# Per preset: (iters, SFT learning rate, DPO learning rate); None = the preset's own. The
# small adapters (the mixed workload's) are trained until their greedy replies differ from
# base and from each other on every workload prompt: the isolation pass can only see a
# crossing between adapters whose replies differ. Speed does not depend on the values.
TRAINING = {"small": (16, "1e-3", "1e-4"), "large": (2, None, None)}


def _trained_as(folder: Path, iters: int, lr: str | None) -> bool:
    try:
        t = json.loads((folder / "adapter_config.json").read_text())["humanizer"]["training"]
    except (OSError, ValueError, KeyError):
        return False
    return (folder / "adapters.safetensors").is_file() and t.get("iters") == iters and \
        (lr is None or float(t.get("learning_rate", 0)) == float(lr))


def prepare(work: Path, presets: list[str], model_spec: str, log=print) -> dict:
    src, f32 = common.prepare_f32_model(model_spec, common.default_cache_dir(), log=log)
    humanizer = Path(sys.executable).parent / "humanizer"
    out = {"model_src": str(src), "model_f32": str(f32), "presets": {}}
    for p in presets:
        d = {k: work / f"{k}-{p}" for k in ("sft", "dpo", "sftdpo", "fused")}
        d["optiq_dpo"] = work / "optiq" / f"dpo-{p}"
        iters, sft_lr, dpo_lr = TRAINING.get(p, (2, None, None))
        common_args = ["--preset", p, "--batch-size", "1", "--max-seq-length", "256", "--val-batches", "0",
                       "--iters", str(iters)]
        stale = False  # a retrained adapter makes everything made from it stale
        for key, lr, extra in (("sft", sft_lr, ["--data", ROOT / "examples/sft"]),
                               ("dpo", dpo_lr, ["--data", ROOT / "examples/dpo", "--method", "dpo",
                                                "--mount-adapter", d["sft"]])):
            if stale or not _trained_as(d[key], iters, lr):
                shutil.rmtree(d[key], ignore_errors=True)
                _run([humanizer, "lora", "train", model_spec, *extra, *common_args,
                      *(["--learning-rate", lr] if lr else []), "--output", d[key]], log)
                stale = True
        if stale:
            for key in ("sftdpo", "fused", "optiq_dpo"):
                shutil.rmtree(d[key], ignore_errors=True)
        if not (d["sftdpo"] / "adapters.safetensors").is_file():
            _run([humanizer, "lora", "combine", d["sft"], d["dpo"], "--output", d["sftdpo"]], log)
        if not (d["fused"] / "config.json").is_file():
            _run([sys.executable, "-m", "mlx_lm", "fuse", "--model", f32, "--adapter-path", d["sftdpo"],
                  "--save-path", d["fused"]], log)
        if not (d["optiq_dpo"] / "adapters.safetensors").is_file():
            _undelta_copy(d["dpo"], d["optiq_dpo"], log)
        out["presets"][p] = {k: str(v) for k, v in d.items()}
    return out


def _undelta_copy(delta: Path, out: Path, log) -> None:
    """A copy of our DPO delta that optiq can mount. Ours stores a delta's tensors under
    DELTA_PREFIX so that stock mlx-lm refuses to load it without its parent; optiq looks
    its tensors up by the plain names and, finding none, mounts the delta on 0 layers
    without an error (then "sft+dpo" serves sft alone). Same tensors, same config (optiq
    reads lora_parameters.scale); only the names lose the prefix."""
    import mlx.core as mx

    from engine.adapters.folder import ADAPTER_FILE, CONFIG_FILE, load_weights
    from engine.workspace import atomic_dir

    log(f"  optiq copy of {delta} (tensor names without the delta prefix) -> {out}")
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / ADAPTER_FILE), load_weights(delta), metadata={"format": "mlx"})
        (tmp / CONFIG_FILE).write_text((delta / CONFIG_FILE).read_text())


# ------------------------------------------------------------------------ servers


def _server_cmd(side: str, prep: dict, p: dict, port: int, args) -> list:
    """The command line of one server; every server binds 127.0.0.1 and decodes up to 8 rows."""
    addr = ["--host", "127.0.0.1", "--port", str(port)]
    if side == "ours":
        # adapters mounted under their folders' names (sft-<preset>, dpo-<preset>)
        return [Path(sys.executable).parent / "humanizer", "serve", "--model", prep["model_src"], "--adapter",
                p["sft"], "--adapter", p["dpo"], *addr, "--max-concurrent", "8"]
    if side == "optiq":
        # its multi-adapter path: both mounted on one base, picked per request; --max-concurrent 8
        # is its default, spelled out (it sets mlx-lm's decode concurrency 8, prefill 2)
        return [*optiq_cli(args.optiq_python), "serve", "--model", prep["model_f32"], "--adapter", p["sft"],
                "--adapter", p["optiq_dpo"], *addr, "--max-tokens", str(args.max_tokens), "--max-concurrent", "8"]
    return [sys.executable, "-m", "mlx_lm.server", "--model", prep["model_f32"], *addr,
            "--max-tokens", str(args.max_tokens)]


def _bodies(side: str, prep: dict, p: dict, port: int) -> dict:
    """The body fields that pick base / sft / sft+dpo on each server."""
    if side == "ours":
        return {c: {"adapter": n} for c, n in http.adapter_names(port).items()}
    if side == "optiq":
        # its documented field is "adapters" (a name, "a+b" to stack, "base" for none); no
        # "model" field, so mlx-lm under it keeps its one loaded model
        return {c: {"adapters": n} for c, n in http.adapter_names(port).items()}
    f32 = prep["model_f32"]  # mlx-lm: reloads model + adapter when the request's choice changes
    return {"base": {"model": f32}, "sft": {"model": f32, "adapters": p["sft"]},
            "sft+dpo": {"model": f32, "adapters": p["sftdpo"]}}


def run_mixed(prep: dict, preset: str, args, work: Path, log=print) -> dict:
    """Per round, each server in turn (order rotated): start it, one untimed warm-up request
    per choice, the timed mixed workload, then (ours and optiq: the servers that keep both
    adapters resident) the isolation pass and single-stream decode through the server."""
    p = prep["presets"][preset]
    sides = ["ours", *args.peer_list]
    out = {side: [] for side in sides}
    url_of = "http://127.0.0.1:{}/v1/chat/completions".format
    for rnd in range(args.mixed_rounds):
        for side in sides[rnd % len(sides):] + sides[:rnd % len(sides)]:
            port = http.free_port()
            log(f"  mixed {preset} round {rnd + 1}: {side} ...")
            t0 = time.perf_counter()
            with http.Server(side, _server_cmd(side, prep, p, port, args), f"http://127.0.0.1:{port}/health",
                             work / f"server-{side}-{preset}-{rnd}.log", cwd=ROOT) as srv:
                start_s = time.perf_counter() - t0
                body = _bodies(side, prep, p, port)
                url = url_of(port)
                for c in CHOICES:
                    http.http_post(url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                         "temperature": 0.0, **body[c]}, timeout=120)
                sample, srv_cpu = common.cpu_sample(), common._proc_cpu_seconds(srv.proc.pid)
                res = http.workload(url, body.__getitem__, args.clients, args.requests, args.max_tokens,
                                    args.mixed_deadline)
                res.update(server_start_s=start_s, blas=srv.blas, body=body,
                           other_cpus=_others_than(sample, srv.proc.pid, srv_cpu))
                log(f"    {res['ok']}/{res['requests']} ok, {res['completion_tokens']} tokens in "
                    f"{(res['wall_s'] or 0):.1f} s = {(res['tokens_per_s'] or 0):.1f} tok/s, "
                    f"p50 {(res['latency_p50_s'] or 0):.2f} s, p95 {(res['latency_p95_s'] or 0):.2f} s")
                if side != "mlx-lm" and not args.skip_isolation:
                    # after the timed part: served alone first, a prompt cache would speed up the load
                    res["alone"] = http.alone_pass(url, body.__getitem__, args.clients, args.requests,
                                                   args.max_tokens)
                    res["isolation"] = http.crossed(res, res["alone"])
                    log(f"    isolation: {res['isolation']['crossed']}/{res['isolation']['compared']} crossed; "
                        f"alone replies differ by adapter on {res['isolation']['alone_differ_by_adapter']}")
                if side != "mlx-lm" and args.stream_reps:
                    res["stream"] = {c: [http.stream_decode(url, body[c], SINGLE_PROMPT, args.stream_tokens)
                                         for _ in range(args.stream_reps)] for c in CHOICES}
                    log("    single stream tok/s: " + ", ".join(
                        f"{c} {_median([r['decode_tps'] for r in rs]) or 0:.1f}" for c, rs in res["stream"].items()))
            out[side].append(res)
    return out


def _others_than(sample, pid: int, cpu0: float | None) -> float | None:
    """CPUs used on average since `sample` by processes other than this one and the server
    under test (common.other_cpus_since counts the server too)."""
    others, cpu1 = common.other_cpus_since(sample), common._proc_cpu_seconds(pid)
    if others is None or cpu0 is None or cpu1 is None:
        return None
    return max(0.0, others - (cpu1 - cpu0) / (time.perf_counter() - sample[0]))


# ------------------------------------------------------------------------ parent


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_single(prep: dict, preset: str, args, work: Path, log=print) -> dict:
    spec = {"model_src": prep["model_src"], "model_f32": prep["model_f32"], "preset": prep["presets"][preset],
            "new_tokens": args.new_tokens, "reps": args.reps}
    spec_path = work / f"single-{preset}.json"
    spec_path.write_text(json.dumps(spec))
    rounds = {"ours": [], "mlx-lm": []}
    for rnd in range(args.rounds):
        for side in ("ours", "peer") if rnd % 2 == 0 else ("peer", "ours"):
            log(f"  single {preset} round {rnd + 1}: {side} ...")
            sample = common.cpu_sample()
            res = common.run_child(SCRIPT, side, spec_path, work / f"single-{preset}-{side}-{rnd}.json",
                                   timeout=300, log=log)
            res["other_cpus"] = common.other_cpus_since(sample)
            rounds["ours" if side == "ours" else "mlx-lm"].append(res)
    summary = {}
    for side, results in rounds.items():
        confs = {}
        for res in results:
            for c, runs in (res.get("runs") or {}).items():
                confs.setdefault(c, []).extend(runs)
        summary[side] = {c: {"median_tps": _median([r["decode_tps"] for r in runs]),
                             "all_tps": [round(r["decode_tps"], 1) for r in runs if r["decode_tps"]],
                             "tokens": sorted({r["tokens"] for r in runs})} for c, runs in confs.items()}
    firsts = {f"{side} {c}": tuple(t) for side, results in rounds.items() for res in results[:1]
              for c, t in (res.get("first_tokens") or {}).items()}
    groups = {}
    for k, t in firsts.items():
        groups.setdefault(t, []).append(k)
    return {"rounds": rounds, "summary": summary, "greedy_agreement": list(groups.values())}


def run_prefill(model_src: str, args, work: Path, log=print) -> dict:
    rounds = {"fcfs": [], "fair": []}
    for rnd in range(args.prefill_rounds):
        for policy in ("fcfs", "fair") if rnd % 2 == 0 else ("fair", "fcfs"):
            spec_path = work / f"prefill-{policy}.json"
            spec_path.write_text(json.dumps({"model_src": model_src, "policy": policy, "reps": args.prefill_reps,
                                             "long_tokens": args.long_tokens, "short_tokens": args.short_tokens}))
            log(f"  prefill round {rnd + 1}: {policy} ...")
            sample = common.cpu_sample()
            res = common.run_child(SCRIPT, "prefill", spec_path, work / f"prefill-{policy}-{rnd}.json",
                                   timeout=1800, log=log)
            res["other_cpus"] = common.other_cpus_since(sample)
            rounds[policy].append(res)
    summary = {}
    for policy, results in rounds.items():
        runs = [r for res in results for r in res.get("runs") or []]
        summary[policy] = {k: _median([r[k] for r in runs]) for k in
                           ("short_alone_s", "short_beside_s", "short_ttft_s", "long_ttft_s")}
        summary[policy]["runs"] = len(runs)
        summary[policy]["short_first"] = sum(bool(r["short_done_before_long_token"]) for r in runs)
        summary[policy]["same_tokens"] = all(r["same_tokens"] for r in runs)
    return {"rounds": rounds, "summary": summary}


def _model_src(model_spec: str) -> str:
    from engine.models import resolve_model
    from engine.workspace import Workspace

    return str(Path(resolve_model(model_spec, Workspace.open())).resolve())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["ours", "peer", "prefill"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write all numbers to this file")
    ap.add_argument("--model", default=common.DEFAULT_MODEL)
    ap.add_argument("--presets", default="small,large", help="adapter shapes (our training presets)")
    ap.add_argument("--mixed-presets", default="small", help="presets for the mixed workload")
    ap.add_argument("--rounds", type=int, default=2, help="single stream: ours/mlx-lm child pairs")
    ap.add_argument("--reps", type=int, default=2, help="single stream: timed runs per config per child")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mixed-rounds", type=int, default=1)
    ap.add_argument("--mixed-deadline", type=float, default=240.0, help="seconds per workload at most")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--skip-mixed", action="store_true")
    ap.add_argument("--skip-prefill", action="store_true", help="skip the short-beside-long-prefill part")
    ap.add_argument("--long-tokens", type=int, default=3000, help="prefill part: the long prompt's tokens")
    ap.add_argument("--short-tokens", type=int, default=16, help="prefill part: the short request's new tokens")
    ap.add_argument("--prefill-reps", type=int, default=2, help="prefill part: reps per policy per child")
    ap.add_argument("--prefill-rounds", type=int, default=1, help="prefill part: fcfs/fair child pairs")
    ap.add_argument("--peers", default="mlx-lm",
                    help="servers beside ours, comma-separated: mlx-lm (its stock server; also runs the "
                         "in-process single-stream part), optiq (`optiq serve`, mlx-optiq's venv)")
    ap.add_argument("--optiq-python", help="an interpreter with mlx-optiq (default: the bench's own venv, "
                                           "made on first use, see bench/optiq_env.py)")
    ap.add_argument("--skip-isolation", action="store_true",
                    help="skip the greedy-outputs-alone pass (ours, optiq)")
    ap.add_argument("--stream-reps", type=int, default=2,
                    help="single stream through the server (ours, optiq): streamed requests per adapter choice")
    ap.add_argument("--stream-tokens", type=int, default=64, help="single stream through the server: new tokens")
    ap.add_argument("--work", default=str(common.default_cache_dir() / "serve"))
    args = ap.parse_args()
    args.peer_list = [x for x in args.peers.split(",") if x]
    if unknown := set(args.peer_list) - {"mlx-lm", "optiq"}:
        ap.error(f"unknown peer(s): {', '.join(sorted(unknown))}")

    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        write_result(args.out, {"ours": child_ours, "peer": child_peer, "prefill": child_prefill}[args.child](spec))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    common.print_machine(info)
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    presets = [p for p in args.presets.split(",") if p]
    mixed_presets = [p for p in args.mixed_presets.split(",") if p]
    print(f"settings  single: {args.new_tokens} new tokens greedy, {args.rounds} rounds x {args.reps} reps; "
          f"mixed: {args.clients} clients x {args.requests} requests, {args.max_tokens} max tokens, greedy, "
          f"{args.mixed_rounds} round(s); presets {presets}, mixed {mixed_presets}")
    print(f"load avg  {load0[0]:.2f} at start (other work shares this machine)")
    versions = {}
    if "optiq" in args.peer_list:
        args.optiq_python = str(ensure_optiq_python(common.default_cache_dir(), args.optiq_python))
        versions["optiq"] = optiq_versions(args.optiq_python)
        print(f"optiq     {args.optiq_python}: {versions['optiq']}")
    if args.skip_single and args.skip_mixed:  # the prefill part needs the model only: no adapters, no f32 copy
        prep = {"model_src": _model_src(args.model)}
    else:
        prep = prepare(work, sorted(set(presets) | set(mixed_presets)), args.model)
        print(f"weights   ours: {prep['model_src']} (dequantized to float32 in memory, the default on CPU)\n"
              f"          mlx-lm: {prep['model_f32']} (the same float32 weights saved once)")
    result = {"machine": info, "settings": vars(args), "versions": versions, "prep": prep, "single": {},
              "mixed": {}, "prefill": None, "load_avg_start": load0}

    if not args.skip_single and "mlx-lm" in args.peer_list:  # the in-process part: ours vs mlx-lm only
        for p in presets:
            result["single"][p] = run_single(prep, p, args, work)
    if not args.skip_mixed:
        for p in mixed_presets:
            result["mixed"][p] = run_mixed(prep, p, args, work)
    if not args.skip_prefill:
        result["prefill"] = run_prefill(prep["model_src"], args, work)
    result["total_s"] = time.perf_counter() - t_all
    result["load_avg_end"] = os.getloadavg()
    report(result)
    common.save_json(args.json, result)


def report(result: dict) -> None:
    print()
    for p, s in result["single"].items():
        o, m = s["summary"].get("ours", {}), s["summary"].get("mlx-lm", {})
        ob = (o.get("base") or {}).get("median_tps")
        rows = []
        for name, d in [(f"ours {c}", o.get(c)) for c in CHOICES] + [(f"mlx-lm {c}", d) for c, d in m.items()]:
            if not d:
                continue
            t = d["median_tps"]
            rows.append([name, f"{t:.1f}" if t else "-", f"{t / ob:.2f}x" if t and ob else "-",
                         "/".join(map(str, d["tokens"])), " ".join(map(str, d["all_tps"]))])
        print(f"single stream, preset {p} (decode tok/s, median; runs listed)")
        print(table(rows, ["config", "tok/s", "vs ours base", "tokens", "runs"]))
        pairs = [("ours base / mlx-lm base", "base", "base"),
                 ("ours sft / mlx-lm sft (adapter)", "sft", "sft (adapter)"),
                 ("ours sft+dpo / mlx-lm sft+dpo (combined adapter)", "sft+dpo", "sft+dpo (combined adapter)"),
                 ("ours sft+dpo / mlx-lm sft+dpo (fused)", "sft+dpo", "sft+dpo (fused)")]
        ratios = {}
        for label, a, b in pairs:
            x, y = (o.get(a) or {}).get("median_tps"), (m.get(b) or {}).get("median_tps")
            if x and y:
                ratios[label] = x / y
                print(f"  {label}: {x / y:.2f}x")
        ab = (o.get("sft+dpo") or {}).get("median_tps")
        if ab and ob:
            ratios["ours sft+dpo / ours base"] = ab / ob
            print(f"  ours sft+dpo / ours base: {ab / ob:.2f}x (goal >= 0.85) "
                  f"{'MET' if ab / ob >= 0.85 else 'MISSED'}")
        s["ratios"] = ratios
        print(f"  greedy outputs (first 24 tokens), groups of equal: {s.get('greedy_agreement')}")
        print()
    result["mixed_summary"] = {p: report_mixed(p, s) for p, s in result["mixed"].items()}
    if result.get("prefill"):
        report_prefill(result["prefill"], result["settings"])
    print(f"total {result['total_s']:.0f} s; load avg at end {result['load_avg_end'][0]:.2f} "
          "(the machine was shared with other work)")


def report_mixed(preset: str, s: dict) -> dict:
    fmt = lambda x, f="{:.2f}": f.format(x) if x is not None else "-"  # noqa: E731
    rows = []
    for side, runs in s.items():
        for i, r in enumerate(runs):
            iso = r.get("isolation")
            rows.append([f"{side} #{i + 1}", f"{r['ok']}/{r['requests']}", str(r["completion_tokens"]),
                         fmt(r["wall_s"], "{:.1f}"), fmt(r["tokens_per_s"], "{:.1f}"), fmt(r["latency_p50_s"]),
                         fmt(r["latency_p95_s"]), f"{iso['crossed']}/{iso['compared']}" if iso else "-",
                         fmt(r.get("other_cpus"))])
    print(f"mixed workload, preset {preset}")
    print(table(rows, ["server", "ok", "tokens", "wall s", "tok/s", "p50 s", "p95 s", "crossed",
                       "other CPUs"]))
    tps = {side: _median([r["tokens_per_s"] for r in runs]) for side, runs in s.items()}
    ratios = {}
    for peer in [x for x in s if x != "ours"]:
        if tps["ours"] and tps[peer]:
            ratios[f"aggregate tok/s ours / {peer}"] = r = tps["ours"] / tps[peer]
            print(f"  aggregate tok/s ours / {peer}: {r:.2f}x (goal >= 3x) {'MET' if r >= 3 else 'MISSED'}; "
                  f"failures ours {sum(x['failed'] for x in s['ours'])} (goal 0), "
                  f"{peer} {sum(x['failed'] for x in s[peer])}")
    crossed = {side: sum(r["isolation"]["crossed"] for r in runs) for side, runs in s.items()
               if runs and all(r.get("isolation") for r in runs)}
    if crossed:
        met = "MET" if crossed.get("ours") == 0 else "MISSED"
        print("  crossed outputs (reply under load != reply alone): "
              + ", ".join(f"{side} {n}" for side, n in crossed.items()) + f"; ours goal 0: {met}")
    stream = {}
    for side, runs in s.items():
        st = [r["stream"] for r in runs if r.get("stream")]
        if st:
            stream[side] = {c: _median([x["decode_tps"] for d in st for x in d[c]]) for c in CHOICES}
    if stream:
        rows = [[side] + [fmt(d[c], "{:.1f}") for c in CHOICES]
                + [fmt(d["sft+dpo"] / d["base"] if d["sft+dpo"] and d["base"] else None)]
                for side, d in stream.items()]
        print("  single stream through the server (decode tok/s, median, SSE chunks)")
        print(table(rows, ["server", *CHOICES, "sft+dpo / base"]))
        for side, d in stream.items():
            if d["sft+dpo"] and d["base"]:
                ratios[f"{side} stream sft+dpo / base"] = d["sft+dpo"] / d["base"]
        for peer in [x for x in stream if x != "ours"]:
            for c in CHOICES:
                if stream["ours"].get(c) and stream[peer].get(c):
                    ratios[f"stream {c} ours / {peer}"] = stream["ours"][c] / stream[peer][c]
    for label, r in ratios.items():
        if "stream" in label:
            print(f"  {label}: {r:.2f}x")
    s_ratios = {"ratios": ratios, "crossed": crossed, "stream_tps": stream}
    for side, runs in s.items():
        for r in runs:
            if r["errors"]:
                print(f"  {side} errors: {r['errors']}")
            iso = r.get("isolation") or {}
            print(f"  {side}: BLAS {r.get('blas')}, server start {r.get('server_start_s', 0):.1f} s, "
                  f"tokens by choice {r['tokens_by_choice']}"
                  + (f", alone replies differ by adapter {iso['alone_differ_by_adapter']} (prompts served with both)"
                     if iso else ""))
            for d in iso.get("diffs", [])[:3]:
                print(f"    crossed: client {d['client']} prompt {d['prompt']} {d['choice']}: "
                      f"load {d['under_load'][:60]!r} / alone {d['alone'][:60]!r}")
    alone = {side: runs[0]["alone"] for side, runs in s.items() if runs and runs[0].get("alone")}
    for peer in [x for x in alone if x != "ours"]:
        same = sum(alone["ours"].get(k) == v for k, v in alone[peer].items())
        s_ratios[f"alone replies ours == {peer}"] = f"{same}/{len(alone[peer])}"
        print(f"  alone replies equal across servers, ours == {peer}: {same}/{len(alone[peer])}")
    if "ours" in alone:  # every server's replies under load against one reference: ours served alone
        for side in [x for x in s if x != "ours"]:
            outs = [o for r in s[side] for o in r["outputs"]]
            same = sum(o["text"] == alone["ours"].get(f"{o['prompt']}|{o['choice']}") for o in outs)
            s_ratios[f"{side} replies under load == ours alone"] = f"{same}/{len(outs)}"
            print(f"  {side} replies under load equal to ours served alone: {same}/{len(outs)}")
    print()
    return s_ratios


def report_prefill(pre: dict, settings: dict) -> None:
    s = pre["summary"]
    fmt = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
    rows = [[f"{p} ({'before' if p == 'fcfs' else 'after'})", fmt(d["short_alone_s"]), fmt(d["short_beside_s"]),
             fmt(d["short_ttft_s"]), fmt(d["long_ttft_s"]), f"{d['short_first']}/{d['runs']}",
             "yes" if d["same_tokens"] else "NO"] for p, d in s.items()]
    print(f"short request ({settings['short_tokens']} new tokens) beside a {settings['long_tokens']}-token "
          "prefill, seconds (median)")
    print(table(rows, ["prefill policy", "short alone", "short beside long", "short TTFT", "long TTFT",
                       "short done first", "same tokens"]))
    ratios = {}
    for label, key, a, b in (("short latency beside long, fcfs / fair", "short_beside_s", "fcfs", "fair"),
                             ("short TTFT beside long, fcfs / fair", "short_ttft_s", "fcfs", "fair"),
                             ("long TTFT, fair / fcfs (what fairness costs the long prompt)", "long_ttft_s",
                              "fair", "fcfs")):
        x, y = s.get(a, {}).get(key), s.get(b, {}).get(key)
        if x and y:
            ratios[label] = x / y
            print(f"  {label}: {x / y:.2f}x")
    pre["ratios"] = ratios
    for p, results in pre["rounds"].items():
        for res in results:
            if res.get("error"):
                print(f"  {p}: child failed: {res['error']}")
    print()


if __name__ == "__main__":
    main()
