"""Who writes the drafts and rewrites: a local model on our batched engine (many rows at
once, each with its adapters), or any OpenAI-compatible server (`--endpoint`: ours,
mlx_lm.server, llama.cpp, Ollama) for users with a stronger drafter.

Both take a batch of chat prompts with a seed each and return one `Written` per prompt,
in order. A seed per prompt (not per batch) keeps every sample the same however the
batch is cut, which is what makes `--resume` give the same rows."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from engine.errors import HumanizerError


@dataclass
class Written:
    text: str
    finish: str  # stop | length | error
    tokens: int = 0
    error: str | None = None


class EngineWriter:
    """A model folder (any model spec) with optional adapters mounted, on our Engine."""

    def __init__(self, model: str, ws, adapters: tuple[str, ...] = (), rows: int = 8, run=None):
        from engine.adapters import resolve_adapter
        from engine.events import NullRun
        from engine.generate import Engine
        from engine.models import resolve_model

        self.model_dir = resolve_model(model, ws, run or NullRun())
        # "sft+dpo" mounts both, the parent first, and generates with the stack
        paths = [resolve_adapter(part, ws) for a in adapters if a for part in a.split("+") if part]
        self.engine = Engine.load(self.model_dir, adapters=paths, max_rows=rows).start()
        self.adapter = "+".join(self.engine.mounted()) or "base"
        self.describe = {"model": str(model), "model_dir": str(self.model_dir), "adapter": self.adapter,
                         "adapter_paths": [str(p) for p in paths], "backend": f"engine ({self.engine.mode})"}

    def write(self, prompts: list[list[dict]], seeds: list[int], *, temperature: float, top_p: float,
              max_tokens: list[int]) -> list[Written]:
        from engine.generate import SamplingParams

        gens = []
        for messages, seed, limit in zip(prompts, seeds, max_tokens):
            tokens = self.engine.encode_chat(messages)
            params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=limit, seed=seed)
            try:
                gens.append(self.engine.submit(tokens, self.adapter, params))
            except HumanizerError as e:
                for g in gens:
                    g.cancel()
                raise HumanizerError(e.message, "lower --max-words (shorter passages make shorter prompts), "
                                     "or use a model with a longer context") from None
        out = []
        for g in gens:
            g.result()
            err = getattr(g, "error", None)
            out.append(Written(g.text, g.finish_reason or "stop", g.completion_tokens, err))
        return out

    def close(self) -> None:
        self.engine.close()


class EndpointWriter:
    """POST /v1/chat/completions to an OpenAI-compatible server, `rows` requests at a time."""

    def __init__(self, url: str, model: str = "", adapter: str = "", api_key: str = "", rows: int = 8,
                 timeout: float = 300.0):
        self.base = url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self.adapter = adapter
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(max(1, rows), thread_name_prefix="endpoint")
        self.model = model or adapter or self._first_model()
        self.describe = {"endpoint": self.base, "model": self.model, "adapter": adapter or None,
                         "backend": "OpenAI-compatible endpoint"}

    def _request(self, path: str, body: dict | None = None) -> dict:
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise HumanizerError(f"{url} answered HTTP {e.code}: {detail}",
                                 "check --endpoint-model / --adapter and the server's log") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise HumanizerError(f"can't reach {url}: {reason}",
                                 "start the server (humanizer serve, mlx_lm.server, llama-server, ollama serve) "
                                 "or fix --endpoint") from None
        except ValueError:
            raise HumanizerError(f"{url} did not answer JSON", "is --endpoint an OpenAI-compatible server?") from None

    def _first_model(self) -> str:
        models = self._request("/v1/models").get("data") or []
        if not models:
            raise HumanizerError(f"{self.base}/v1/models lists no model", "pass --endpoint-model")
        return str(models[0].get("id"))

    def _one(self, messages, seed, temperature, top_p, limit) -> Written:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p,
                "max_tokens": limit, "seed": seed}
        if self.adapter:
            body["adapter"] = self.adapter
        reply = self._request("/v1/chat/completions", body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HumanizerError(f"{self.base}/v1/chat/completions answered without choices[0].message.content",
                                 "is --endpoint an OpenAI-compatible server?") from None
        tokens = int((reply.get("usage") or {}).get("completion_tokens") or 0)
        return Written(text, choice.get("finish_reason") or "stop", tokens)

    def write(self, prompts, seeds, *, temperature, top_p, max_tokens) -> list[Written]:
        futures = [self.pool.submit(self._one, m, s, temperature, top_p, n)
                   for m, s, n in zip(prompts, seeds, max_tokens)]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def open_writer(settings, ws, adapters: tuple[str, ...] = (), run=None):
    if settings.endpoint:
        return EndpointWriter(settings.endpoint, settings.endpoint_model, "+".join(a for a in adapters if a),
                              settings.api_key, settings.rows)
    return EngineWriter(settings.model, ws, adapters, settings.rows, run)
