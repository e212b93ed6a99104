"""export: a bundle folder a person can serve or share.

model/ (hard links when the file system allows, else copies), adapters/<name>/ (each adapter,
a delta's parent recorded by its bundle name), a README.md model card (engine.adapters.card)
and humanizer_bundle.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from engine import adapters as A
from engine.adapters.card import model_card
from engine.adapters.common import BUNDLE_RECORD, IMPORT_RECORD, model_adapters_output
from engine.events import NullRun, Run
from engine.workspace import atomic_dir


def _bundle_names(infos: list[A.AdapterInfo]) -> list[str]:
    """Adapter names usable in a server's "a+b" (letters, digits, '-', '_'), unique."""
    names = []
    for info in infos:
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", info.name).strip("-") or "adapter"
        if not re.match(r"^[A-Za-z0-9_]", name):
            name = "a" + name
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link src to dst (True), or copy it when linking is not possible (False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _hf_repo_of(model_dir: Path) -> str | None:
    """The Hub repo of a model folder in the Hugging Face cache or an embedded model."""
    from engine.models import EMBEDDED_MODELS

    if model_dir.name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[model_dir.name].get("hf_repo")
    m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", str(model_dir.resolve()) + "/")
    return f"{m.group(1)}/{m.group(2)}" if m else None


def _license_of(model_dir: Path) -> str | None:
    from engine.models import EMBEDDED_MODELS

    if model_dir.name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[model_dir.name].get("license")
    for name in ("README.md", "readme.md"):  # an HF model card's front matter
        try:
            text = (model_dir / name).read_text(encoding="utf-8")
        except OSError:
            continue
        m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
        if m:
            lic = re.search(r"^license:\s*['\"]?([^'\"\n]+)", m.group(1), re.M)
            if lic:
                return lic.group(1).strip()
    return None


def export(model_spec_dir, adapter_dirs, out_dir, run: Run = NullRun(), ws=None, link: bool = True) -> Path:
    """Write a bundle folder (see the module docstring): the model, the adapters, a model
    card. Adapters may be folders or workspace adapter names; a delta needs its parent
    among them. Returns `out_dir`."""
    from engine.models import model_info

    model_dir, infos, out = model_adapters_output(model_spec_dir, adapter_dirs, out_dir, BUNDLE_RECORD, "bundle", ws, run)
    names = _bundle_names(infos)
    by_fp = {i.fingerprint: n for i, n in zip(infos, names)}
    minfo = model_info(model_dir)
    fingerprint = A.model_fingerprint(model_dir)
    files = [f for f in sorted(model_dir.rglob("*"))
             if f.is_file() and not any(part.startswith(".") for part in f.relative_to(model_dir).parts)
             and f.name != IMPORT_RECORD]
    linked = 0
    with atomic_dir(out) as tmp:
        for k, f in enumerate(files):
            run.progress(k, len(files) + len(infos), f"model: {f.name}")
            dst = tmp / "model" / f.relative_to(model_dir)
            linked += _link_or_copy(f, dst) if link else _copy(f, dst)
        adapters_meta = []
        for k, (info, name) in enumerate(zip(infos, names)):
            run.progress(len(files) + k, len(files) + len(infos), f"adapter: {name}")
            d = tmp / "adapters" / name
            d.mkdir(parents=True)
            shutil.copy2(info.path / A.ADAPTER_FILE, d / A.ADAPTER_FILE)
            cfg = json.loads(json.dumps(info.config))
            hz = cfg.setdefault("humanizer", {})
            if info.parent:  # the parent as it is in the bundle
                pname = by_fp[info.parent.get("fingerprint")]
                hz["parent"] = {**info.parent, "name": pname, "path": f"adapters/{pname}",
                                "original_name": info.parent.get("name")}
            (d / A.CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n", encoding="utf-8")
            adapters_meta.append({
                "name": name, "original_name": info.name, "path": f"adapters/{name}", "method": info.method,
                "parent": by_fp.get((info.parent or {}).get("fingerprint")), "fingerprint": info.fingerprint,
                "rank": info.rank, "scale": info.scale, "layers": len(info.layers),
                "training": info.training, "metrics": info.metrics,
            })
        stacks = _stacks(infos, names)
        manifest = {
            "format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": model_dir.name, "path": "model", "fingerprint": fingerprint,
                      "architecture": minfo.architecture, "quantization": minfo.quantization,
                      "source": minfo.source, "hf_repo": _hf_repo_of(model_dir), "license": _license_of(model_dir)},
            "adapters": adapters_meta,
            "stacks": stacks,
        }
        (tmp / BUNDLE_RECORD).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(out.name, manifest, infos, names, tmp), encoding="utf-8")
    run.progress(len(files) + len(infos), len(files) + len(infos), f"bundle in {out}")
    how = f"{linked} hard-linked, {len(files) - linked} copied" if link else f"{len(files)} copied"
    run.log(f"bundle {out}: model {model_dir.name} ({len(files)} files: {how}), adapters {', '.join(names)}")
    if linked:
        run.log("hard-linked files share their data with the originals: edit neither in place (export with "
                "link=False / --copy for independent copies)")
    run.artifact(out, kind="bundle")
    return out


def _copy(src: Path, dst: Path) -> bool:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return False


def _stacks(infos: list[A.AdapterInfo], names: list[str]) -> list[str]:
    """The adapter combinations worth serving: each adapter on top of its ancestors."""
    by_fp = {i.fingerprint: (i, n) for i, n in zip(infos, names)}
    stacks = []
    for info, name in zip(infos, names):
        chain, cur = [name], info
        while cur.parent and cur.parent.get("fingerprint") in by_fp:
            cur, pname = by_fp[cur.parent["fingerprint"]]
            chain.insert(0, pname)
        stacks.append("+".join(chain))
    return stacks
