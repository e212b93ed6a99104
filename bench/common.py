"""Shared pieces of the training benchmarks (bench_sft.py, bench_dpo.py).

- the model: SmolLM2-135M (the embedded `smollm2-135m`, 4-bit / 8-bit quantized)
  dequantized once to float32 and saved as an MLX model folder in a cache, so both
  sides of a comparison load the very same float32 weights from disk;
- the data: generated chat rows ("rewrite this draft" prompts), tokenized with the
  model's chat template through `engine.data.load_data`, then cut to exact token
  lengths so every batch on both sides has the same shape; the token ids are written
  to a JSON file that both child processes read;
- child processes: every side runs in its own fresh interpreter with OpenBLAS
  preloaded (`engine.blas.fast_blas_env(True)`), reports the BLAS it really mapped,
  its step timestamps and its peak memory as JSON;
- machine / version facts and table printing.

This module imports no mlx at the top: the parent process stays light.
"""

from __future__ import annotations

import contextlib
import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.blas import blas_in_use, fast_blas_env, find_openblas  # noqa: E402

DEFAULT_MODEL = "smollm2-135m"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "humanizer-bench"


# --------------------------------------------------------------------- machine facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def machine_info() -> dict:
    mem = _mem_total_gib()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("mlx", "mlx-lm", "mlx-lm-lora", "humanizer-studio")},
        "openblas": find_openblas(),
    }


def print_machine(info: dict) -> None:
    v = info["versions"]
    print(f"date      {info['date']}")
    print(f"machine   {info['os']}, {info['cpus']} CPUs ({info['cpu']}), {info['memory_gib']} GiB")
    print(f"python    {info['python']}; " + ", ".join(f"{k} {v[k]}" for k in v if v[k]))
    print(f"BLAS      OpenBLAS preloaded in both children: {info['openblas'] or 'NOT FOUND'}")


# --------------------------------------------------------------------- the model


def _src_key(src: Path) -> str:
    from engine.adapters import model_fingerprint

    return model_fingerprint(src)


def prepare_f32_model(model_spec: str, cache_dir: Path, log=print) -> tuple[Path, Path]:
    """(source model folder, float32 copy). The copy is the source with every quantized
    layer dequantized (mlx_lm.utils.dequantize_model, what our trainer does in memory on
    the CPU backend) and every weight cast to float32, saved once in `cache_dir`."""
    from engine.models import resolve_model
    from engine.workspace import Workspace, atomic_dir

    src = Path(resolve_model(model_spec, Workspace.open())).resolve()
    key = _src_key(src)
    dst = cache_dir / f"{src.name}-f32"
    stamp = dst / "bench_source.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("source_fingerprint") == key:
                return src, dst
        except ValueError:
            pass
    log(f"writing a float32 dequantized copy of {src} to {dst} (once)")
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine.adapters import layers as lora

    model, _ = lora.load_model(src, dequantize=True)
    weights = dict(tree_flatten(model.parameters()))
    assert all(v.dtype == mx.float32 for v in weights.values())
    config = json.loads((src / "config.json").read_text())
    for k in ("quantization", "quantization_config"):
        config.pop(k, None)
    config["torch_dtype"] = "float32"
    with atomic_dir(dst) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for f in src.iterdir():
            if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json",
                                                                              "generation_config.json")):
                shutil.copy(f, tmp / f.name)
        (tmp / "bench_source.json").write_text(json.dumps({"source": str(src), "source_fingerprint": key}))
    return src, dst


def resolve_layout(model_dir: Path, s: dict) -> None:
    """Full block-relative key paths (mlx-lm wants 'self_attn.q_proj') and a concrete block count."""
    from mlx_lm import load

    from engine.adapters import layers as lora

    model, _ = load(str(model_dir), lazy=True)
    s["keys"] = lora.resolve_keys(model, s["keys"])
    n = len(model.layers)
    s["num_layers"] = n if s["num_layers"] <= 0 or s["num_layers"] > n else s["num_layers"]
    s["model_blocks"] = n


# --------------------------------------------------------------------- the data

_WORDS = (
    "the model team report data system process result change value people work plan "
    "market users product research study approach growth future impact quality support "
    "community design policy context insight strategy experience health energy city water "
    "school story project network budget season method question answer budget history "
    "journey landscape framework outcome practice balance detail region moment effort"
).split()
_SLOP = ("a testament to", "underscores the importance of", "in today's fast-paced world",
         "it is worth noting that", "plays a pivotal role in", "a rich tapestry of")


def _sentence(rng: random.Random, slop: bool) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
    if slop:
        words.insert(rng.randint(1, len(words) - 1), rng.choice(_SLOP))
    s = " ".join(words)
    return s[0].upper() + s[1:] + "."


def _paragraph(rng: random.Random, n: int, slop: bool) -> str:
    return " ".join(_sentence(rng, slop) for _ in range(n))


def chat_rows(n: int, method: str, seed: int = 0) -> list[dict]:
    """Generated rows in our data formats: SFT `messages`, DPO `prompt`/`chosen`/`rejected`.
    Long enough (> 300 response tokens) to be cut to any length the benches use."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Rewrite this draft so that it reads like a person wrote it:\n\n" + _paragraph(rng, 6, True)
        if method == "sft":
            rows.append({"messages": [{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": _paragraph(rng, 30, False)}]})
        else:
            rows.append({"prompt": prompt, "chosen": _paragraph(rng, 30, False),
                         "rejected": _paragraph(rng, 30, True)})
    return rows


def tokenized(model_dir: Path, rows: list[dict], method: str, work: Path):
    """Rows through the real loading path (engine.data.load_data: checks, chat template,
    prompt masks): a list of Example (sft) or Pair (dpo)."""
    from mlx_lm.utils import load_tokenizer

    from engine.data import load_data

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"bench_{method}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tok = load_tokenizer(model_dir)
    ds = load_data(str(path), method, tok, max_seq_length=100_000, valid_fraction=0.0)
    return ds.train


def sft_token_rows(examples, length: int, prompt_len: int) -> list[dict]:
    """Every row exactly `length` tokens: its last `prompt_len` prompt tokens (which end
    with the assistant header), then the start of the response."""
    out = []
    for e in examples:
        p = list(e.tokens[: e.prompt_len])[-prompt_len:]
        r = list(e.tokens[e.prompt_len:])
        assert len(p) == prompt_len and len(p) + len(r) >= length, "generated row too short"
        out.append({"tokens": [int(t) for t in (p + r)[:length]], "prompt_len": prompt_len})
    return out


def dpo_token_rows(pairs, prompt_len: int, response_len: int) -> list[dict]:
    """Every pair: `prompt_len` prompt tokens, chosen and rejected `response_len` each."""
    out = []
    for p in pairs:
        prompt = list(p.prompt)[-prompt_len:]
        assert len(prompt) == prompt_len and min(len(p.chosen), len(p.rejected)) >= response_len
        out.append({"prompt": [int(t) for t in prompt],
                    "chosen": [int(t) for t in p.chosen[:response_len]],
                    "rejected": [int(t) for t in p.rejected[:response_len]]})
    return out


# --------------------------------------------------------------------- child processes


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat, first line)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, all its threads (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_sample() -> tuple | None:
    """(wall, busy CPU seconds of the machine, CPU seconds of this process) for other_cpus_since."""
    busy = _busy_cpu_seconds()
    if busy is None:
        return None
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), busy, ru.ru_utime + ru.ru_stime


def other_cpus_since(sample: tuple | None) -> float | None:
    """CPUs used on average by all OTHER processes since `sample` (0 on a quiet machine)."""
    now = cpu_sample()
    if sample is None or now is None or now[0] <= sample[0]:
        return None
    return max(0.0, ((now[1] - sample[1]) - (now[2] - sample[2])) / (now[0] - sample[0]))


def _child_env(extra: dict | None = None) -> dict:
    env = fast_blas_env(True)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_DISABLE", "1")
    env.update(extra or {})
    return env


def _child_cmd(script: Path, side: str, spec_path: Path, out_path: Path, python=None) -> list[str]:
    """`python` (default: this interpreter) runs the child: the mlx-optiq side runs in its own
    venv (bench/optiq_env.py); ROOT is on the child's sys.path through this script's prelude."""
    return [str(python or sys.executable), str(script), "--child", side, "--spec", str(spec_path), "--out", str(out_path)]


def _failed(side: str, rc, log_path: Path, log=print) -> dict:
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.is_file() else ""
    log(f"  {side}: child failed ({rc}); log tail:\n{tail}")
    return {"side": side, "error": f"exit {rc}", "log_tail": tail}


def run_child(script: Path, side: str, spec_path: Path, out_path: Path, timeout: float, log=print,
              python=None) -> dict:
    """Run `script --child SIDE --spec SPEC --out OUT` alone, in a fresh interpreter with
    OpenBLAS preloaded; returns its JSON result (or {"error": ...})."""
    log_path = out_path.with_suffix(".log")
    with open(log_path, "w") as logf:
        try:
            rc = subprocess.run(_child_cmd(script, side, spec_path, out_path, python), env=_child_env(), stdout=logf,
                                stderr=subprocess.STDOUT, cwd=str(ROOT), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc == 0 and out_path.is_file():
        return json.loads(out_path.read_text())
    return _failed(side, rc, log_path, log)


# Lock-step: both sides run at the same time, each in its own process, but only one of
# them computes at any moment. Each child stops in its trainer's per-step report and
# waits for a token from the parent; the parent hands the token to one side for one step,
# then to the other, and so on. So every timed step of either side runs alone, and a
# neighbour process that slows the machine for a while slows both sides alike.

GO_FD_ENV, DONE_FD_ENV = "HUMANIZER_BENCH_GO_FD", "HUMANIZER_BENCH_DONE_FD"


class Baton:
    """Child side of the lock-step. Call `step(n)` from the trainer's per-step report (n = the
    step just finished; 0 = before the first step) with the step count of the run. The first
    call says "ready" and waits for the token; each later call records the step's wall time
    since the token arrived, then says "done" and waits for the next token, or, after the
    last step, just returns: the process finishes its work (saving, checks) while it still
    holds the token, and its exit closes the pipe, which hands the token back."""

    def __init__(self, total: int):
        self.total = total
        self.go = int(os.environ[GO_FD_ENV])
        self.done_fd = int(os.environ[DONE_FD_ENV])
        self.t_go = self.cpu_go = None
        self.durations: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    @staticmethod
    def _cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def step(self, n: int) -> None:
        now, cpu = time.perf_counter(), self._cpu()
        if self.t_go is not None:
            self.durations[n] = now - self.t_go
            self.cpu[n] = cpu - self.cpu_go
        if n >= self.total:
            return  # the parent sees the end when this process exits (the pipe closes)
        os.write(self.done_fd, b"r" if self.t_go is None else b"d")
        if os.read(self.go, 1) != b"g":
            raise SystemExit("the bench parent went away")
        self.t_go, self.cpu_go = time.perf_counter(), self._cpu()

    def ordered(self) -> list[list]:
        """[[step, seconds], ...] in step order (JSON keeps no int keys)."""
        return [[k, self.durations[k]] for k in sorted(self.durations)]

    def ordered_cpu(self) -> list[list]:
        """[[step, CPU seconds of this process (all threads) in that step], ...]."""
        return [[k, self.cpu[k]] for k in sorted(self.cpu)]


def run_lockstep(script: Path, spec_path: Path, work: Path, sides=("ours", "peer"), timeout: float = 900,
                 log=print, pythons: dict | None = None) -> dict:
    """Start the sides one after the other (each runs alone until it is ready, so model
    loading, our DPO reference pass and mlx's first compile never overlap the other side),
    then alternate single steps between them until both have finished. Returns
    {side: result}, each result with "step_other_cpus" (per step it ran: the CPUs used by
    all OTHER processes on the machine during that step; 0 on a quiet machine) and
    "other_cpus" (their mean). `pythons` maps a side to the interpreter that runs it."""
    import select

    procs: dict[str, dict] = {}
    deadline = time.monotonic() + timeout

    def read_token(p) -> bytes:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("a side sent no report within the time limit")
            ready, _, _ = select.select([p["done"]], [], [], min(left, 5.0))
            if ready:
                return os.read(p["done"], 1)  # b"" once the child has exited

    def one_step(p) -> bytes:
        busy0, own0, t0 = _busy_cpu_seconds(), _proc_cpu_seconds(p["proc"].pid), time.perf_counter()
        os.write(p["go"], b"g")
        tok = read_token(p)
        busy1, own1, t1 = _busy_cpu_seconds(), _proc_cpu_seconds(p["proc"].pid), time.perf_counter()
        if None not in (busy0, busy1, own0, own1):
            p["other"].append(max(0.0, (busy1 - busy0 - (own1 - own0)) / (t1 - t0)))
        return tok

    result = {}
    try:
        for side in sides:
            go_r, go_w = os.pipe()
            done_r, done_w = os.pipe()
            out_path = work / f"{side}.json"
            logf = open(work / f"{side}.log", "w")
            env = _child_env({GO_FD_ENV: str(go_r), DONE_FD_ENV: str(done_w)})
            proc = subprocess.Popen(_child_cmd(script, side, spec_path, out_path, (pythons or {}).get(side)), env=env, stdout=logf,
                                    stderr=subprocess.STDOUT, cwd=str(ROOT), pass_fds=(go_r, done_w))
            os.close(go_r)
            os.close(done_w)
            p = procs[side] = {"proc": proc, "go": go_w, "done": done_r, "log": logf, "out": out_path,
                               "other": [], "active": True}
            if read_token(p) != b"r":
                p["active"] = False
                break
        if len(procs) == len(sides) and all(p["active"] for p in procs.values()):
            while any(p["active"] for p in procs.values()):
                for p in procs.values():
                    if p["active"] and one_step(p) != b"d":
                        p["active"] = False
        else:  # a side died before it was ready: stop the others too
            for p in procs.values():
                if p["proc"].poll() is None:
                    p["proc"].kill()
        for side, p in procs.items():
            try:
                rc = p["proc"].wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = "timeout"
            p["log"].close()
            if rc == 0 and p["out"].is_file():
                res = json.loads(p["out"].read_text())
                res["step_other_cpus"] = [round(x, 3) for x in p["other"]]
                res["other_cpus"] = statistics.fmean(p["other"]) if p["other"] else None
                result[side] = res
            else:
                result[side] = _failed(side, rc, work / f"{side}.log", log)
    except TimeoutError as e:
        for side in sides:
            result.setdefault(side, {"side": side, "error": str(e)})
    finally:
        for p in procs.values():
            for fd in (p["go"], p["done"]):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if p["proc"].poll() is None:
                p["proc"].kill()
                p["proc"].wait()
            with contextlib.suppress(Exception):
                p["log"].close()
    for side in sides:
        result.setdefault(side, {"side": side, "error": "not started (an earlier side failed)"})
    return result


def child_memory() -> dict:
    """Peak memory of this process: MLX's allocator peak and the OS's max RSS."""
    import mlx.core as mx

    return {
        "mlx_peak_gb": mx.get_peak_memory() / 1e9,
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # KiB on Linux
    }


def child_blas() -> dict:
    info = blas_in_use()
    return {"name": info["name"], "path": info["path"]}


def trainer_bench_args(description: str, peer: str, cache_help: str, steps: int, timeout: float,
                       children: list[str]) -> argparse.ArgumentParser:
    """The flags bench_sft and bench_dpo share (their data-shape flags are their own)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help=f"{cache_help} (default: %(default)s)")
    ap.add_argument("--preset", default="small", choices=["small", "medium", "large"])
    ap.add_argument("--rank", type=int)
    ap.add_argument("--scale", type=float)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--num-layers", type=int)
    ap.add_argument("--keys", help="comma-separated, e.g. q_proj,v_proj")
    ap.add_argument("--grad-checkpoint", action="store_true",
                    help="ours with `lora train --grad-checkpoint` (each block recomputed in the backward pass, "
                    "as mlx-optiq does by default); needs dropout 0")
    ap.add_argument("--warmup", type=int, default=2, help=f"untimed steps first ({peer} compiles its step)")
    ap.add_argument("--steps", type=int, default=steps, help="timed steps per side")
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds for the whole run of both sides")
    ap.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap


def lora_settings(args, method: str) -> dict:
    """LoRA shape and learning rate: our --preset, with any explicit flag overriding it."""
    from engine.train import PRESETS

    p = PRESETS[args.preset]
    return {
        "preset": args.preset,
        "rank": args.rank or p["rank"],
        "scale": p["scale"] if args.scale is None else args.scale,
        "dropout": p["dropout"] if args.dropout is None else args.dropout,
        "num_layers": args.num_layers or p["num_layers"],
        "keys": args.keys.split(",") if args.keys else list(p["keys"]),
        "learning_rate": p["learning_rate"][method],
        "grad_checkpoint": bool(getattr(args, "grad_checkpoint", False)),
    }


def write_result(path: str | Path, res: dict) -> None:
    Path(path).write_text(json.dumps(res, indent=2, default=str))


def step_stats(durations: list[list], warmup: int) -> dict:
    """durations: [[step, seconds], ...]; steps 1..warmup are left out."""
    timed = [d for n, d in durations if n > warmup]
    return {
        "warmup_s": [round(d, 4) for n, d in durations if n <= warmup],
        "steps_s": [round(d, 4) for d in timed],
        "mean_s": statistics.fmean(timed),
        "median_s": statistics.median(timed),
        "min_s": min(timed),
        "max_s": max(timed),
    }


# --------------------------------------------------------------------- output


def paired_ratio(peer: list[list], ours: list[list], warmup: int) -> float | None:
    """Median over steps n > warmup of peer_n / ours_n. In lock-step the two sides' step n
    run back to back, so each pair saw nearly the same machine: the least noisy ratio."""
    o = {n: d for n, d in ours if n > warmup}
    r = [d / o[n] for n, d in peer if n in o and o[n] > 0]
    return statistics.median(r) if r else None


def fmt_cpus(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def busy_note(results, cpus: int | None) -> str | None:
    """A warning when other processes took a noticeable share of the CPUs during the steps."""
    worst = max((r.get("other_cpus") or 0.0 for r in results), default=0.0)
    if worst < 0.2:
        return None
    return (f"NOTE: other processes on this machine used {worst:.2f} of its {cpus} CPUs on average during the "
            "timed steps (both sides alternate step by step, so both were slowed alike; absolute times are "
            "slower than on a quiet machine).")


def table(rows: list[list[str]], header: list[str]) -> str:
    """A GitHub-markdown table with right-aligned number columns."""
    cols = list(zip(header, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]
    def line(cells):
        return "| " + " | ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"
    sep = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def save_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
        print(f"\nwrote {path}")
