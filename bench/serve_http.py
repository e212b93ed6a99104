"""HTTP side of bench_serve.py: a server under test, the clients, and what is measured
through a server's own API (stdlib only, so it runs in the bench parent).

    Server       start a server command, wait for its health URL, stop it at the end
    workload     the mixed workload: N client threads, each switching adapter per request
    alone_pass   the same (prompt, adapter) requests served one at a time
    crossed      compare the greedy outputs under load with the ones served alone
    stream_decode  single-stream decode tok/s read from the SSE chunks of a request

Every request is the same on every server (same messages, greedy, same max_tokens); only
the field that picks an adapter differs (`body_for(choice)`), so counts and times are
taken the same way on every side.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import common

CHOICES = ("base", "sft", "sft+dpo")

MIXED_PROMPTS = [
    "Rewrite this so it sounds like a person wrote it: In today's fast-paced world, it is worth noting "
    "that remote work plays a pivotal role in the future of the modern workplace.",
    "Explain in a few paragraphs why the sky is blue, for a curious ten-year-old.",
    "Write a short email to a colleague asking to move tomorrow's meeting to Friday afternoon.",
    "Give me three ideas for a weekend trip near the mountains and say what to pack for each.",
    "Rewrite this draft plainly: Our innovative solution is a testament to our commitment to "
    "excellence and underscores the importance of customer-centric design.",
    "Describe how to make a simple tomato soup, step by step.",
    "Summarize the plot of a detective story you invent, in about one hundred words.",
    "What are some good habits for learning a new language as an adult?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def http_post(url: str, body: dict, timeout: float):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def blas_of_pid(pid: int) -> str:
    """The OpenBLAS libraries a server process mapped (or what BLAS it mapped), from
    /proc/PID/maps. All of them: optiq's venv also maps numpy's own OpenBLAS, whose symbols
    carry a suffix (scipy_openblas64_), so MLX's BLAS calls still resolve to the preloaded one."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "?"
    libs = sorted({ln.split()[-1] for ln in maps.splitlines() if "blas" in ln.lower() and "/" in ln})
    ob = [x for x in libs if "openblas" in x.lower()]
    return " + ".join(ob) if ob else (", ".join(libs) or "none")


def adapter_names(port: int) -> dict:
    """Map base/sft/sft+dpo to the names a server mounted the two folders under (ours and
    optiq both list them at GET /v1/adapters; both name an adapter after its folder)."""
    _, raw = http_get(f"http://127.0.0.1:{port}/v1/adapters")
    data = json.loads(raw)
    items = data.get("data", data.get("adapters", data)) if isinstance(data, dict) else data
    names = [a.get("name") or a.get("id") for a in items] if isinstance(items, list) else list(items)
    sft = next(n for n in names if n.startswith("sft"))
    dpo = next(n for n in names if n.startswith("dpo"))
    return {"base": "base", "sft": sft, "sft+dpo": f"{sft}+{dpo}"}


class Server:
    def __init__(self, name: str, cmd: list, health: str, log_path: Path, cwd: Path, start_timeout: float = 180):
        self.name, self.cmd, self.health, self.cwd = name, cmd, health, cwd
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc = None
        self.blas = None

    def __enter__(self):
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(c) for c in self.cmd], env=common._child_env(), stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=str(self.cwd), start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if http_get(self.health, 2.0)[0] == 200:
                    self.blas = blas_of_pid(self.proc.pid)
                    return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not come up in {self.start_timeout} s; see {self.log_path}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def _request(prompt: int, max_tokens: int, extra: dict) -> dict:
    return {"messages": [{"role": "user", "content": MIXED_PROMPTS[prompt]}], "max_tokens": max_tokens,
            "temperature": 0.0, **extra}


def _one(url: str, rec: dict, body: dict, timeout: float) -> dict:
    """Send one request; fill rec with ok, latency, end time, tokens and the reply text."""
    t0 = time.perf_counter()
    try:
        status, data = http_post(url, body, timeout=timeout)
        choice = (data.get("choices") or [{}])[0]
        rec.update(ok=status == 200, latency_s=time.perf_counter() - t0, end=time.perf_counter(),
                   tokens=int(data.get("usage", {}).get("completion_tokens", 0)),
                   finish=choice.get("finish_reason"), text=(choice.get("message") or {}).get("content"))
    except Exception as e:  # noqa: BLE001 - counted as a failure
        body_txt = ""
        if isinstance(e, urllib.error.HTTPError):
            body_txt = e.read()[:300].decode(errors="replace")
        rec.update(ok=False, latency_s=time.perf_counter() - t0, end=time.perf_counter(),
                   error=f"{type(e).__name__}: {e} {body_txt}")
    return rec


def mixed_plan(clients: int, requests: int) -> list[list[tuple[int, str]]]:
    """Per client, its (prompt index, choice) requests: client i's request j picks adapter
    (i + j) mod 3 and prompt (i + 3j) mod 8, so every client switches adapter per request and
    the same prompt comes back under other adapters."""
    return [[((i + 3 * j) % len(MIXED_PROMPTS), CHOICES[(i + j) % len(CHOICES)]) for j in range(requests)]
            for i in range(clients)]


def workload(url: str, body_for, clients: int, requests: int, max_tokens: int, deadline_s: float) -> dict:
    """Run the mixed workload against a chat-completions URL. body_for(choice) -> extra body fields."""
    results, lock = [], threading.Lock()
    plan = mixed_plan(clients, requests)
    t_start = time.perf_counter()
    deadline = t_start + deadline_s

    def client(i: int):
        for prompt, choice in plan[i]:
            rec = {"client": i, "choice": choice, "prompt": prompt}
            left = deadline - time.perf_counter()
            if left <= 0:
                rec.update(ok=False, error="bench deadline passed before the request was sent")
            else:
                _one(url, rec, _request(prompt, max_tokens, body_for(choice)), left)
            with lock:
                results.append(rec)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()) + 5)
    ok = [r for r in results if r.get("ok")]
    wall = (max(r["end"] for r in ok) - t_start) if ok else None
    lat = sorted(r["latency_s"] for r in ok)
    toks = sum(r["tokens"] for r in ok)

    def pct(q):
        return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else None

    by_choice = {c: sum(r.get("tokens", 0) for r in ok if r["choice"] == c) for c in CHOICES}
    return {"requests": clients * requests, "done": len(results), "ok": len(ok),
            "failed": clients * requests - len(ok), "errors": [r["error"] for r in results if not r.get("ok")][:5],
            "completion_tokens": toks, "tokens_by_choice": by_choice, "wall_s": wall,
            "tokens_per_s": toks / wall if wall else None, "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
            "latency_max_s": lat[-1] if lat else None,
            "outputs": [{k: r.get(k) for k in ("client", "prompt", "choice", "text", "tokens")} for r in ok]}


def alone_pass(url: str, body_for, clients: int, requests: int, max_tokens: int, timeout: float = 300) -> dict:
    """Each distinct (prompt, choice) request of the mixed workload, served one at a time."""
    pairs = sorted({pc for reqs in mixed_plan(clients, requests) for pc in reqs})
    out = {}
    for prompt, choice in pairs:
        rec = _one(url, {}, _request(prompt, max_tokens, body_for(choice)), timeout)
        out[f"{prompt}|{choice}"] = rec.get("text") if rec.get("ok") else None
    return out


def crossed(load: dict, alone: dict) -> dict:
    """Count the requests whose greedy reply under the mixed load differs from the same
    request served alone, and, as the test's sensitivity, the prompts whose alone replies
    differ between adapters (a crossing between two adapters that give the same greedy
    reply cannot be seen)."""
    diffs = []
    for r in load["outputs"]:
        ref = alone.get(f"{r['prompt']}|{r['choice']}")
        if ref is None or r["text"] != ref:
            diffs.append({"client": r["client"], "prompt": r["prompt"], "choice": r["choice"],
                          "under_load": (r["text"] or "")[:120], "alone": (ref or "")[:120]})
    by_prompt = {}
    for key, text in alone.items():
        prompt, choice = key.split("|")
        by_prompt.setdefault(int(prompt), {})[choice] = text
    distinct = {}
    for c1, c2 in (("base", "sft"), ("base", "sft+dpo"), ("sft", "sft+dpo")):
        both = [d for d in by_prompt.values() if c1 in d and c2 in d]
        distinct[f"{c1} vs {c2}"] = f"{sum(d[c1] != d[c2] for d in both)}/{len(both)}"
    return {"compared": len(load["outputs"]), "crossed": len(diffs), "diffs": diffs[:8],
            "alone_differ_by_adapter": distinct, "prompts": len(by_prompt)}


def stream_decode(url: str, extra: dict, messages: list, max_tokens: int, timeout: float = 300) -> dict:
    """One streamed greedy request; decode tok/s = (tokens - 1) / (time of the last content
    chunk - time of the first), tokens from the final usage chunk, prefill excluded: the
    same definition as the in-process single-stream part."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    t_first = t_last = None
    chunks, tokens, text = 0, None, []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            obj = json.loads(line[5:])
            if obj.get("usage"):
                tokens = obj["usage"].get("completion_tokens")
            for ch in obj.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    t_first = t_first if t_first is not None else now
                    t_last = now
                    chunks += 1
                    text.append(piece)
    tps = (tokens - 1) / (t_last - t_first) if tokens and tokens > 1 and t_last and t_last > t_first else None
    return {"tokens": tokens, "chunks": chunks, "decode_tps": tps,
            "ttft_s": (t_first - t0) if t_first else None, "text": "".join(text)}
