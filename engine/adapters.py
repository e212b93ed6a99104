"""Adapter folders: save, read, and check that an adapter fits a base model.

An adapter is a folder with

    adapters.safetensors   the LoRA weights, mlx-lm names: model.layers.N.<key>.lora_a (in, r)
                           and .lora_b (r, out)
    adapter_config.json    mlx-lm's format: fine_tune_type "lora", num_layers,
                           lora_parameters {rank, scale, dropout, keys}; plus ours under
                           "humanizer": method, base {name, fingerprint}, parent (for a
                           delta: {name, path, fingerprint} of the adapter it was trained
                           on top of), training config, final metrics

so a single SFT adapter loads in stock `mlx_lm.load(model, adapter_path=...)`. A delta
(a DPO adapter trained on top of a mounted SFT adapter) holds only its own change and
is refused unless its parent is mounted with it. Its tensor names carry the prefix
`DELTA_PREFIX`, so stock mlx-lm refuses it too (on its own it would load without error
and give wrong outputs), naming that prefix in its error; `humanizer lora combine
SFT DPO` makes the single adapter stock mlx-lm can load.

The config must describe the weights (rank, num_layers, keys: check_config, and against
the model in check_fits), or the adapter is refused with the field named. A delta stacks
only on the parent its config records: the same weights and the same identity (name or
folder; is_recorded_parent), never on a copy under another name. A real stack is an
adapter on its chain of parents, applying no weights twice (real_stacks, deepest_stack).

Fingerprints: a base model's is a SHA-256 over its safetensors tensors' names, dtypes,
shapes and a strided sample of their bytes (read from the file, cheap and stable); an
adapter's is the SHA-256 of its adapters.safetensors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from engine.errors import HumanizerError
from engine.workspace import atomic_dir

ADAPTER_FILE = "adapters.safetensors"
WEIGHT_FILES = "model*.safetensors"  # a model folder's weights, as mlx-lm loads them (other files beside them are not)
CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1
SAMPLES_PER_TENSOR = 8
SAMPLE_BYTES = 64
DELTA_PREFIX = "needs_its_parent_adapter_mounted_first."


class AdapterConfigError(HumanizerError):
    """adapter_config.json does not describe the weights in adapters.safetensors (or the model)."""


class NeedsParent(HumanizerError):
    """A delta whose recorded parent is not among the adapters it would stack on."""


# --- fingerprints --------------------------------------------------------------------


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, byte offset where the data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise HumanizerError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise HumanizerError(f"{path} is not a safetensors file (bad header)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise HumanizerError(f"{path} is not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def model_fingerprint(model_dir) -> str:
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob(WEIGHT_FILES))
    if not files:
        raise HumanizerError(f"no *.safetensors in {model_dir}", "is this an MLX model folder?")
    h = hashlib.sha256()
    for file in files:
        header, base = safetensors_header(file)
        with open(file, "rb") as f:
            for name in sorted(header):
                t = header[name]
                start, end = t["data_offsets"]
                h.update(f"{name}|{t['dtype']}|{t['shape']}|".encode())
                size = end - start
                if size <= SAMPLES_PER_TENSOR * SAMPLE_BYTES:
                    f.seek(base + start)
                    h.update(f.read(size))
                    continue
                stride = (size - SAMPLE_BYTES) // (SAMPLES_PER_TENSOR - 1)
                for i in range(SAMPLES_PER_TENSOR):
                    f.seek(base + start + i * stride)
                    h.update(f.read(SAMPLE_BYTES))
    return "sha256:" + h.hexdigest()[:32]


def file_fingerprint(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:32]


def model_linear_dims(model_dir) -> dict[str, tuple[int, int]]:
    """Module path -> (input dims, output dims) of every 2-D `.weight` in the model folder
    (quantized weights unpacked using the folder's quantization config)."""
    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    quant = cfg.get("quantization") or cfg.get("quantization_config") or {}
    dims: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob(WEIGHT_FILES)):
        header, _ = safetensors_header(file)
        for name, t in header.items():
            if not name.endswith(".weight") or len(t["shape"]) != 2:
                continue
            path = name[: -len(".weight")]
            out_d, in_d = t["shape"]
            if path + ".scales" in header:
                layer_q = quant.get(path)
                bits = layer_q.get("bits", 4) if isinstance(layer_q, dict) else quant.get("bits", 4)
                in_d = in_d * 32 // bits
            dims[path] = (in_d, out_d)
    return dims


# --- adapter folders -----------------------------------------------------------------


@dataclass
class AdapterInfo:
    path: Path
    name: str
    fine_tune_type: str
    num_layers: int
    rank: int
    scale: float
    dropout: float
    keys: list[str] | None
    method: str | None = None  # "sft" / "dpo"; None for an adapter made by another tool
    base: dict | None = None  # {"name", "fingerprint"}
    parent: dict | None = None  # {"name", "path", "fingerprint"} for a delta
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    fingerprint: str = ""
    config: dict = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)  # module paths the adapter changes, sorted
    size_bytes: int = 0  # of adapters.safetensors
    fits: bool | None = None  # set by list_adapters / fit_status against a model; None: not checked
    fit_reason: str | None = None  # why it does not fit (or a note when it fits, e.g. "needs its parent")
    stacked_on: str | None = None  # once mounted, a delta's: the name its recorded parent is mounted under

    @property
    def is_delta(self) -> bool:
        return bool(self.parent)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "config"}
        d["path"] = str(self.path)
        d["is_delta"] = self.is_delta
        return d


def adapter_weights_of(model) -> dict:
    """The trainable lora_a / lora_b of a model (mlx-lm names); a dict passes through."""
    if isinstance(model, Mapping) and not hasattr(model, "trainable_parameters"):
        return dict(model)
    from mlx.utils import tree_flatten

    return {
        k: v for k, v in tree_flatten(model.trainable_parameters())
        if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
    }


def adapter_config(config: Mapping, metadata: Mapping) -> dict:
    keys = config.get("keys")
    return {
        "fine_tune_type": "lora",
        "num_layers": int(config["num_layers"]),
        "lora_parameters": {
            "rank": int(config["rank"]),
            "scale": float(config["scale"]),
            "dropout": float(config.get("dropout", 0.0)),
            "keys": list(keys) if keys is not None else None,
        },
        "humanizer": {"format": FORMAT_VERSION, **metadata},
    }


def write_adapter_files(folder: Path, weights: Mapping, config: dict) -> None:
    """Write the two files into an existing (temp) folder. A delta's tensor names get
    DELTA_PREFIX (see the module docstring)."""
    import mlx.core as mx

    if not weights:
        raise HumanizerError("the model has no trainable LoRA weights to save")
    prefix = DELTA_PREFIX if (config.get("humanizer") or {}).get("parent") else ""
    mx.save_safetensors(str(folder / ADAPTER_FILE), {prefix + k: v for k, v in weights.items()},
                        metadata={"format": "mlx"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    for name in (ADAPTER_FILE, CONFIG_FILE):
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())


def save_adapter(model, out_dir, config: Mapping, metadata: Mapping) -> Path:
    """Write an adapter folder atomically (all or nothing): the trainable LoRA weights of
    `model` (or a dict of them) and adapter_config.json from `config` (num_layers, rank,
    scale, dropout, keys) with `metadata` (method, base, parent, training, metrics)."""
    out_dir = Path(out_dir)
    weights = adapter_weights_of(model)
    cfg = adapter_config(config, metadata)
    with atomic_dir(out_dir) as tmp:
        write_adapter_files(tmp, weights, cfg)
    return out_dir


def tensor_name(stored: str) -> str:
    """The model parameter a stored adapter tensor belongs to (DELTA_PREFIX removed)."""
    return stored[len(DELTA_PREFIX):] if stored.startswith(DELTA_PREFIX) else stored


def load_weights(adapter_dir) -> dict:
    """The adapter's LoRA weights by model parameter name."""
    import mlx.core as mx

    return {tensor_name(k): v for k, v in mx.load(str(Path(adapter_dir) / ADAPTER_FILE)).items()}


def read_adapter(adapter_dir) -> AdapterInfo:
    d = Path(adapter_dir).expanduser()
    if not d.is_dir():
        raise HumanizerError(f"no such adapter folder: {d}")
    cfg_path, w_path = d / CONFIG_FILE, d / ADAPTER_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        missing = [p.name for p in (w_path, cfg_path) if not p.is_file()]
        raise HumanizerError(
            f"{d} is not an adapter (missing {', '.join(missing)})",
            "an adapter folder holds adapters.safetensors and adapter_config.json; "
            "a training run still in progress writes them at the end",
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        lp = cfg.get("lora_parameters") or {}
        ftype = cfg.get("fine_tune_type", "lora")
        if ftype != "lora":
            raise HumanizerError(f"{d}: fine_tune_type '{ftype}' is not supported (only 'lora')")
        hz = cfg.get("humanizer") or {}
        info = AdapterInfo(
            path=d,
            name=d.name,
            fine_tune_type=ftype,
            num_layers=int(cfg.get("num_layers", -1)),
            rank=int(lp["rank"]),
            scale=float(lp["scale"]),
            dropout=float(lp.get("dropout", 0.0)),
            keys=lp.get("keys"),
            method=hz.get("method"),
            base=hz.get("base"),
            parent=hz.get("parent"),
            training=hz.get("training") or {},
            metrics=hz.get("metrics") or {},
            config=cfg,
        )
    except HumanizerError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise HumanizerError(f"{cfg_path} is not a valid adapter config ({type(e).__name__}: {e})") from None
    header, _ = safetensors_header(w_path)  # readable
    info.layers = sorted({tensor_name(k).rsplit(".", 1)[0] for k in header})
    check_config(info, header)
    info.size_bytes = w_path.stat().st_size
    info.fingerprint = file_fingerprint(w_path)
    return info


def _config_error(info: AdapterInfo, problem: str, field: str) -> AdapterConfigError:
    return AdapterConfigError(
        f"{info.path / CONFIG_FILE}: {problem}",
        f"adapter_config.json must describe the weights in {ADAPTER_FILE}: correct '{field}' there "
        "(or use the adapter folder as it was saved)",
    )


def _key_matches(weight_key: str, key: str) -> bool:
    """A config key names a layer by its block-relative path or a suffix of it ("q_proj")."""
    return weight_key == key or weight_key.endswith("." + key)


def check_config(info: AdapterInfo, header: Mapping) -> None:
    """Refuse (AdapterConfigError naming the field and file) a config that does not describe the
    weights: another rank, fewer blocks than the weights change, keys naming no tensor or not
    naming one that is there. What needs the model (num_layers against its blocks) is in check_fits."""
    if info.rank < 1:
        raise _config_error(info, f"lora_parameters.rank is {info.rank}", "lora_parameters.rank")
    if info.keys is not None and (not isinstance(info.keys, list) or not all(isinstance(k, str) for k in info.keys)):
        raise _config_error(info, f"lora_parameters.keys is {info.keys!r}, not a list of layer names",
                            "lora_parameters.keys")
    blocks, weight_keys = set(), []
    for stored, t in sorted(header.items()):
        path, _, leaf = tensor_name(stored).rpartition(".")
        shape = t.get("shape") or []
        if leaf not in ("lora_a", "lora_b") or len(shape) != 2:
            continue  # mounting names these (only 2-D lora_a / lora_b are supported)
        rank = shape[1] if leaf == "lora_a" else shape[0]
        if rank != info.rank:
            raise _config_error(info, f"lora_parameters.rank is {info.rank}, but {ADAPTER_FILE} has rank {rank} "
                                f"({tensor_name(stored)}: shape {tuple(shape)})", "lora_parameters.rank")
        m = _BLOCK_RE.search(path)
        if m:
            blocks.add(int(m.group(1)))
        key = m.group(2) if m else path
        if key not in weight_keys:
            weight_keys.append(key)
    if info.num_layers > 0 and blocks and max(blocks) - min(blocks) + 1 > info.num_layers:
        raise _config_error(info, f"num_layers is {info.num_layers}, but {ADAPTER_FILE} changes "
                            f"{max(blocks) - min(blocks) + 1} blocks ({min(blocks)}-{max(blocks)})", "num_layers")
    if info.keys is None:
        return
    for w in weight_keys:
        if not any(_key_matches(w, k) for k in info.keys):
            raise _config_error(info, f"lora_parameters.keys {info.keys} does not name '{w}', which {ADAPTER_FILE} "
                                "changes", "lora_parameters.keys")
    for k in info.keys:
        if not any(_key_matches(w, k) for w in weight_keys):
            raise _config_error(info, f"lora_parameters.keys has '{k}', which matches no tensor in {ADAPTER_FILE} "
                                f"(it changes {', '.join(weight_keys)})", "lora_parameters.keys")


def _info(adapter) -> AdapterInfo:
    return adapter if isinstance(adapter, AdapterInfo) else read_adapter(adapter)


def check_fits(adapter, model_dir, *, strict: bool = True) -> list[str]:
    """Refuse (HumanizerError naming both) an adapter whose tensors do not fit the model's
    layers, or that was trained on a base with another fingerprint. With strict=False a
    fingerprint mismatch (same shapes) is returned as a warning instead."""
    a = _info(adapter)
    model_dir = Path(model_dir)
    dims = model_linear_dims(model_dir)
    header, _ = safetensors_header(a.path / ADAPTER_FILE)
    base_name = (a.base or {}).get("name", "unknown")
    problems = []
    for stored, t in sorted(header.items()):
        key = tensor_name(stored)
        path, leaf = key.rsplit(".", 1)
        if path not in dims:
            problems.append(f"{path}: no such layer in {model_dir.name}")
            continue
        in_d, out_d = dims[path]
        shape = t["shape"]
        if leaf == "lora_a" and shape[0] != in_d:
            problems.append(f"{key}: adapter input {shape[0]}, model layer input {in_d}")
        elif leaf == "lora_b" and shape[-1] != out_d:
            problems.append(f"{key}: adapter output {shape[-1]}, model layer output {out_d}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HumanizerError(
            f"adapter '{a.name}' (trained on '{base_name}') does not fit model '{model_dir.name}': "
            + "; ".join(problems[:3]) + more,
            "mount an adapter on the base model it was trained on",
        )
    _check_num_layers(a, dims, model_dir)
    warnings = []
    want = (a.base or {}).get("fingerprint")
    if want:
        have = model_fingerprint(model_dir)
        if have != want:
            msg = (
                f"adapter '{a.name}' was trained on base model '{base_name}' (fingerprint {want}), "
                f"but model '{model_dir.name}' has different weights (fingerprint {have})"
            )
            if strict:
                raise HumanizerError(msg, "mount it on the model it was trained on, or train it again on this one")
            warnings.append(msg)
    return warnings


def _check_num_layers(a: AdapterInfo, dims: Mapping, model_dir: Path) -> None:
    """num_layers N means the last N blocks of the model (mlx-lm's reading); the weights must start at
    the first of them, and N may not exceed the model's blocks (-1 or 0: all of them)."""
    model_blocks = {int(m.group(1)) for p in dims if (m := _BLOCK_RE.search(p))}
    blocks, _ = layer_blocks(a)
    if not model_blocks or not blocks:
        return
    n = max(model_blocks) + 1
    if a.num_layers > n:
        raise _config_error(a, f"num_layers is {a.num_layers}, but model '{model_dir.name}' has {n} blocks "
                            f"(the weights change blocks {blocks[0]}-{blocks[-1]})", "num_layers")
    if a.num_layers > 0 and blocks[0] != n - a.num_layers:
        raise _config_error(a, f"num_layers is {a.num_layers} (blocks {n - a.num_layers}-{n - 1} of model "
                            f"'{model_dir.name}'), but {ADAPTER_FILE} changes blocks {blocks[0]}-{blocks[-1]}",
                            "num_layers")


def _same_path(recorded, path: Path) -> bool:
    p = Path(str(recorded)).expanduser()
    if not p.is_absolute():  # e.g. a bundle's "adapters/NAME": the name says it
        return False
    try:
        return p.resolve() == Path(path).resolve()
    except OSError:
        return False


def is_recorded_parent(delta: AdapterInfo, candidate: AdapterInfo, mount_name: str | None = None) -> bool:
    """Whether `candidate` (mounted as `mount_name`) is the adapter the delta's config records as its
    parent: the same weights (fingerprint) AND the same identity (the recorded name is its mount name
    or folder name, or the recorded path is its folder). A copy under another name is not it."""
    p = delta.parent or {}
    if not p or not candidate.fingerprint or candidate.fingerprint != p.get("fingerprint"):
        return False
    if p.get("name") and p.get("name") in (candidate.name, mount_name):
        return True
    return bool(p.get("path")) and _same_path(p["path"], candidate.path)


def find_parent(delta: AdapterInfo, mounted: Mapping[str, AdapterInfo | None]) -> str | None:
    """The name in `mounted` (name -> info) of the delta's recorded parent, the one mounted under
    the recorded name first; None for an adapter that is no delta, or when its parent is absent."""
    if not delta.parent:
        return None
    hits = [n for n, i in mounted.items() if i is not None and i is not delta and is_recorded_parent(delta, i, n)]
    want = delta.parent.get("name")
    return want if want in hits else (hits[0] if hits else None)


def _copies_note(delta: AdapterInfo, others: Mapping[str, AdapterInfo | None], rename: bool = True) -> str:
    """Why an adapter with the parent's weights but another identity is not taken for it."""
    p = delta.parent or {}
    copies = [n for n, i in others.items() if i is not None and i.fingerprint == p.get("fingerprint")]
    if not copies:
        return ""
    note = (f"; '{copies[0]}' has the same weights but is another adapter ({others[copies[0]].path}), and a delta "
            "stacks only on the parent its config records")
    return note + (f": mount that copy under the name '{p.get('name')}' to use it as the parent" if rename else "")


def check_parent(adapter, mounted: Mapping[str, AdapterInfo]) -> None:
    """A delta (DPO trained on top of an SFT adapter) needs its recorded parent among `mounted`."""
    a = _info(adapter)
    if not a.parent or find_parent(a, mounted):
        return
    p = a.parent
    fp = p.get("fingerprint")
    what = f"a {a.method.upper()} " if a.method else "a "
    msg = (
        f"adapter '{a.name}' is {what}delta trained on top of adapter '{p.get('name')}' "
        f"({p.get('path')}, fingerprint {fp}); it holds only the change from that adapter, "
        "so alone it means nothing"
    )
    same_name = [n for n, i in mounted.items()
                 if (i.name == p.get("name") or n == p.get("name")) and i.fingerprint != fp]
    if same_name:
        msg += f"; the mounted '{same_name[0]}' is a different version (fingerprint {mounted[same_name[0]].fingerprint})"
    msg += _copies_note(a, mounted)
    raise NeedsParent(msg, f"mount '{p.get('name')}' (from {p.get('path')}) first, then '{a.name}'")


def check_parent_active(names, mounted: Mapping[str, AdapterInfo | None]) -> None:
    """Every active delta must have the adapter it is stacked on active too."""
    active = {n: mounted[n] for n in names if mounted.get(n) is not None}
    for n, info in active.items():
        if not info.parent:
            continue
        parent = info.stacked_on or find_parent(info, mounted)
        if parent not in active:
            raise HumanizerError(
                f"adapter '{n}' is a delta on '{parent or info.parent.get('name')}' and cannot be used without it",
                f"use '{parent or info.parent.get('name')}+{n}'",
            )


# --- stacks: a delta on its own parent, no weights twice ------------------------------


def weight_fingerprints(info: AdapterInfo) -> set[str]:
    """The fingerprints of all the weights an adapter holds: its own, and for a combined adapter
    those of the adapters it was combined from."""
    fps = {info.fingerprint} if info.fingerprint else set()
    for src in (info.config.get("humanizer") or {}).get("combined_from") or []:
        if isinstance(src, dict) and src.get("fingerprint"):
            fps.add(src["fingerprint"])
    return fps


def repeated_weights(a: str, ia: AdapterInfo, b: str, ib: AdapterInfo) -> str | None:
    """Why stacking adapters `a` and `b` would apply the same weights twice, or None."""
    if ia.fingerprint and ia.fingerprint == ib.fingerprint:
        return f"'{a}' and '{b}' have the same weights (fingerprint {ia.fingerprint})"
    if ib.fingerprint in weight_fingerprints(ia):
        return f"'{a}' already holds the weights of '{b}' (it was combined from them)"
    if ia.fingerprint in weight_fingerprints(ib):
        return f"'{b}' already holds the weights of '{a}' (it was combined from them)"
    if weight_fingerprints(ia) & weight_fingerprints(ib):
        return f"'{a}' and '{b}' were combined from the same adapter"
    return None


def stack_of(name: str, mounted: Mapping[str, AdapterInfo | None]) -> tuple[str, ...]:
    """The real stack that ends in `name`: its chain of parents (each delta on the adapter it is
    stacked on), root first. Stops where a parent is missing (then the chain is incomplete)."""
    chain = [name]
    cur = mounted.get(name)
    while cur is not None and cur.parent:
        parent = cur.stacked_on or find_parent(cur, mounted)
        if parent is None or parent in chain:
            break
        chain.insert(0, parent)
        cur = mounted.get(parent)
    return tuple(chain)


def real_stacks(mounted: Mapping[str, AdapterInfo | None]) -> list[tuple[str, ...]]:
    """The stacks worth offering, smallest first, then in mount order: base (), and for each mounted
    adapter the chain that ends in it, when complete (no delta without its parent) and applying
    no weights twice. Unrelated adapters summed are not "real" stacks (a request may still ask)."""
    out: list[tuple[str, ...]] = [()]
    for name in mounted:
        chain = stack_of(name, mounted)
        root = mounted.get(chain[0])
        if root is None or root.parent:
            continue
        if any(repeated_weights(a, mounted[a], b, mounted[b]) for a, b in itertools.combinations(chain, 2)):
            continue
        if chain not in out:
            out.append(chain)
    return sorted(out, key=len)


def deepest_stack(stacks) -> str:
    """The deepest stack among `stacks` (model ids such as "sft+dpo", or tuples of names), the
    first listed on a tie; "base" when there is none. With /v1/models ids (which are the real
    stacks) this is what a chat should default to."""
    best: tuple[str, ...] = ()
    for s in stacks:
        parts = tuple(p for p in (s.split("+") if isinstance(s, str) else s) if p and p != "base")
        if len(parts) > len(best):
            best = parts
    return "+".join(best) or "base"


# --- finding and describing adapters -------------------------------------------------

_BLOCK_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
SUMMARY_METRICS = ("val_loss", "val_kl", "val_accuracy", "val_margin", "loss", "steps")


def resolve_adapter(spec, ws=None) -> Path:
    """The folder of an adapter given as a path or as the name of a workspace adapter."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no adapter given", "pass an adapter folder or the name of an adapter in the workspace")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HumanizerError(f"{path} is a file, not an adapter folder",
                             "an adapter folder holds adapters.safetensors and adapter_config.json")
    if ws is not None and "/" not in text and "\\" not in text and not text.startswith(("~", ".")):
        local = ws.adapters_dir / text
        if local.is_dir():
            return local
    names = [i.name for i in list_adapters(ws)] if ws is not None else []
    where = f" and no adapter named '{text}' in {ws.adapters_dir}" if ws is not None else ""
    raise HumanizerError(
        f"no such adapter folder: {path}{where}",
        f"adapters in the workspace: {', '.join(names)}" if names else "check the path; train one with `humanizer lora train`",
    )


def list_adapters(ws, model_dir=None, errors: list | None = None) -> list[AdapterInfo]:
    """The adapters in the workspace's adapters/ folder, by name (hidden temp folders and
    folders without a finished adapter skipped; with `errors`, a list, (path, message) of
    each skipped folder is appended to it). With `model_dir`, each one's `fits` and
    `fit_reason` say whether it can be mounted on that model."""
    if ws is None or not ws.adapters_dir.is_dir():
        return []
    found = []
    for d in sorted(ws.adapters_dir.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            found.append(read_adapter(d))
        except HumanizerError as e:
            if errors is not None:
                in_progress = (d / "checkpoints").is_dir() or (d / ".train.lock").exists()
                errors.append((d, "training not finished (no final adapter yet)" if in_progress else e.message))
    if model_dir is not None:
        for info in found:
            info.fits, info.fit_reason = fit_status(info, model_dir)
            if info.fits and info.is_delta and not any(is_recorded_parent(info, o, o.name) for o in found):
                info.fit_reason += f"; its parent '{info.parent.get('name')}' is not in the workspace"
    return found


def fit_status(adapter, model_dir) -> tuple[bool, str | None]:
    """(fits, reason): False with check_fits's message when the adapter cannot go on the
    model; True with a note for a delta (it mounts only with its parent), else None."""
    a = _info(adapter)
    try:
        check_fits(a, model_dir)
    except HumanizerError as e:
        return False, e.message
    if a.is_delta:
        return True, f"a delta: mount it together with its parent '{a.parent.get('name')}'"
    return True, None


def stack_order(adapters) -> list[AdapterInfo]:
    """The adapters with every parent before its deltas (a delta's parent must be among
    them); the same adapter given twice is refused."""
    infos = [_info(a) for a in adapters]
    seen: dict[str, AdapterInfo] = {}
    for i in infos:
        if i.fingerprint in seen:
            raise HumanizerError(f"adapter '{i.name}' ({i.path}) is given twice (same weights as {seen[i.fingerprint].path})")
        seen[i.fingerprint] = i
    order: list[AdapterInfo] = []
    pending = list(infos)
    while pending:
        progress = False
        for i in list(pending):
            if not i.is_delta or any(is_recorded_parent(i, o, o.name) for o in order):
                order.append(i)
                pending.remove(i)
                progress = True
        if not progress:
            i = pending[0]
            p = i.parent or {}
            raise NeedsParent(
                f"adapter '{i.name}' ({i.path}) is a delta trained on top of adapter '{p.get('name')}' "
                f"(fingerprint {p.get('fingerprint')}), which is not among the adapters given; alone it means nothing"
                + _copies_note(i, {o.name: o for o in infos if o is not i}, rename=False),
                f"add its parent '{p.get('name')}' too (--adapter {p.get('path') or p.get('name')}), before it",
            )
    return order


def mountable_together(adapters) -> list[AdapterInfo]:
    """Of `adapters` (e.g. a workspace's that fit a model), the ones one server can mount, in
    stack_order: one adapter per set of weights (the one a delta records as its parent, else the
    first), and each delta only with its recorded parent among them."""
    infos = [_info(a) for a in adapters]
    keep: dict[str, AdapterInfo] = {}
    for i in infos:
        cur = keep.get(i.fingerprint)
        if cur is None or (not any(is_recorded_parent(d, cur, cur.name) for d in infos)
                           and any(is_recorded_parent(d, i, i.name) for d in infos)):
            keep[i.fingerprint] = i
    kept = list(keep.values())
    while True:  # drop deltas whose parent is gone (chains: until nothing changes)
        left = [i for i in kept if not i.is_delta or any(is_recorded_parent(i, o, o.name) for o in kept)]
        if len(left) == len(kept):
            return stack_order(left)
        kept = left


def layer_blocks(info: AdapterInfo) -> tuple[list[int], list[str]]:
    """(block indices, block-relative keys) of the layers an adapter changes."""
    blocks, keys = set(), []
    for path in info.layers:
        m = _BLOCK_RE.search(path)
        if m:
            blocks.add(int(m.group(1)))
            if m.group(2) not in keys:
                keys.append(m.group(2))
        elif path not in keys:
            keys.append(path)
    return sorted(blocks), keys


def layer_summary(info: AdapterInfo) -> str:
    """E.g. '2 blocks (0-1) x q_proj, v_proj' for the layers an adapter changes."""
    blocks, keys = layer_blocks(info)
    short = ", ".join(k.rsplit(".", 1)[-1] for k in keys)
    if not blocks:
        return short or "none"
    span = f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]}-{blocks[-1]}"
    if blocks != list(range(blocks[0], blocks[-1] + 1)):
        span = ",".join(map(str, blocks))
    return f"{len(blocks)} block{'s' if len(blocks) != 1 else ''} ({span}) x {short}"


def metrics_summary(metrics: Mapping, keys=SUMMARY_METRICS) -> str:
    """The headline final metrics, e.g. 'val_loss=1.234 val_kl=0.0123 steps=600'."""
    out = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, bool) or v is None:
            continue
        out.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(out)


def describe_method(info: AdapterInfo) -> str:
    if info.method == "combined":
        parts = [s.get("method") or "?" for s in (info.config.get("humanizer") or {}).get("combined_from") or []]
        return f"combined ({'+'.join(parts)})" if parts else "combined"
    return info.method or "unknown"
