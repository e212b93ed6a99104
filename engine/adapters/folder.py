"""An adapter folder: its files, fingerprints, saving and reading it, and checking that its
config describes its weights (check_config). See the package docstring for the format."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from engine.errors import AdapterConfigError, HumanizerError
from engine.workspace import atomic_dir

ADAPTER_FILE = "adapters.safetensors"
WEIGHT_FILES = "model*.safetensors"  # a model folder's weights, as mlx-lm loads them (other files beside them are not)
CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1
SAMPLES_PER_TENSOR = 8
SAMPLE_BYTES = 64
DELTA_PREFIX = "needs_its_parent_adapter_mounted_first."
BLOCK_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


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
    DELTA_PREFIX (see the package docstring)."""
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


def config_error(info: AdapterInfo, problem: str, field: str) -> AdapterConfigError:
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
        raise config_error(info, f"lora_parameters.rank is {info.rank}", "lora_parameters.rank")
    if info.keys is not None and (not isinstance(info.keys, list) or not all(isinstance(k, str) for k in info.keys)):
        raise config_error(info, f"lora_parameters.keys is {info.keys!r}, not a list of layer names",
                            "lora_parameters.keys")
    blocks, weight_keys = set(), []
    for stored, t in sorted(header.items()):
        path, _, leaf = tensor_name(stored).rpartition(".")
        shape = t.get("shape") or []
        if leaf not in ("lora_a", "lora_b") or len(shape) != 2:
            continue  # mounting names these (only 2-D lora_a / lora_b are supported)
        rank = shape[1] if leaf == "lora_a" else shape[0]
        if rank != info.rank:
            raise config_error(info, f"lora_parameters.rank is {info.rank}, but {ADAPTER_FILE} has rank {rank} "
                                f"({tensor_name(stored)}: shape {tuple(shape)})", "lora_parameters.rank")
        m = BLOCK_RE.search(path)
        if m:
            blocks.add(int(m.group(1)))
        key = m.group(2) if m else path
        if key not in weight_keys:
            weight_keys.append(key)
    if info.num_layers > 0 and blocks and max(blocks) - min(blocks) + 1 > info.num_layers:
        raise config_error(info, f"num_layers is {info.num_layers}, but {ADAPTER_FILE} changes "
                            f"{max(blocks) - min(blocks) + 1} blocks ({min(blocks)}-{max(blocks)})", "num_layers")
    if info.keys is None:
        return
    for w in weight_keys:
        if not any(_key_matches(w, k) for k in info.keys):
            raise config_error(info, f"lora_parameters.keys {info.keys} does not name '{w}', which {ADAPTER_FILE} "
                                "changes", "lora_parameters.keys")
    for k in info.keys:
        if not any(_key_matches(w, k) for w in weight_keys):
            raise config_error(info, f"lora_parameters.keys has '{k}', which matches no tensor in {ADAPTER_FILE} "
                                f"(it changes {', '.join(weight_keys)})", "lora_parameters.keys")


def info_of(adapter) -> AdapterInfo:
    """An AdapterInfo as given, or read from an adapter folder."""
    return adapter if isinstance(adapter, AdapterInfo) else read_adapter(adapter)


def layer_blocks(info: AdapterInfo) -> tuple[list[int], list[str]]:
    """(block indices, block-relative keys) of the layers an adapter changes."""
    blocks, keys = set(), []
    for path in info.layers:
        m = BLOCK_RE.search(path)
        if m:
            blocks.add(int(m.group(1)))
            if m.group(2) not in keys:
                keys.append(m.group(2))
        elif path not in keys:
            keys.append(path)
    return sorted(blocks), keys
