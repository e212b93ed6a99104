"""A bundle's README.md model card: how to serve it stacked, what the adapters were trained on
and how they scored, the base model, the license."""

from __future__ import annotations

from pathlib import Path

from engine import adapters as A
from engine.adapters.common import BUNDLE_RECORD, folder_bytes
from engine.workspace import human_bytes


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


TRAINING_KEYS = ("preset", "iters", "learning_rate", "batch_size", "max_seq_length", "dropout", "beta", "dpo_loss",
                 "seed")


def _count(n, noun: str) -> str:
    return f"{'?' if n is None else n} {noun}{'' if n == 1 else 's'}"


def _training_lines(t: dict, label: str = "") -> list[str]:
    lines = []
    if t.get("data") is not None or t.get("train_rows") is not None:
        rows = f"{_count(t.get('train_rows'), 'training row')}, {_count(t.get('valid_rows'), 'validation row')}"
        lines.append(f"- **Trained on{label}:** {t.get('data') or 'unknown data'}; {rows}; data fingerprint "
                     f"`{t.get('data_fingerprint', '?')}`")
    cfg = [f"{k} {_fmt(t[k])}" for k in TRAINING_KEYS
           if k in t and not (k in ("beta", "dpo_loss") and t.get("method") != "dpo")]
    if cfg:
        lines.append(f"- **Training config{label}:** " + ", ".join(cfg))
    if not lines:
        lines.append(f"- **Trained on{label}:** not recorded (made by another tool?)")
    return lines


def _adapter_section(info: A.AdapterInfo, name: str, names_by_fp: dict) -> list[str]:
    lines = [f"### `{name}`", ""]
    sources = (info.config.get("humanizer") or {}).get("combined_from") or []
    if info.method == "combined":
        what = " + ".join(f"`{s.get('name')}` ({(s.get('method') or '?').upper()})" for s in sources)
        lines.append(f"- **Method:** an exact merge of {what} (ranks concatenated: it gives the same outputs as "
                     "those adapters stacked)")
    elif info.is_delta:
        pname = names_by_fp.get(info.parent.get("fingerprint"), info.parent.get("name"))
        lines.append(f"- **Method:** {(info.method or '?').upper()} delta trained on top of `{pname}` "
                     f"(it holds only the change from `{pname}`; serve it as `{pname}+{name}`)")
    else:
        lines.append(f"- **Method:** {(info.method or 'unknown').upper()}")
    lines.append(f"- **LoRA:** rank {info.rank}, scale {info.scale:g}, {len(info.layers)} layers "
                 f"({A.layer_summary(info)}), {human_bytes(info.size_bytes)}")
    if info.method == "combined":
        for s in sources:
            label = f" (`{s.get('name')}`)"
            lines += _training_lines(s.get("training") or {}, label)
            lines.append(f"- **Final metrics{label}:** " + (A.metrics_summary(s.get("metrics") or {}) or "none recorded"))
    else:
        lines += _training_lines(info.training)
        shown = {k: v for k, v in info.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if shown:
            lines += ["- **Final metrics:**", "", "  | metric | value |", "  | --- | --- |"]
            lines += [f"  | {k} | {_fmt(v)} |" for k, v in shown.items()]
        else:
            lines.append("- **Final metrics:** none recorded")
    lines.append("")
    return lines


def model_card(title: str, manifest: dict, infos: list[A.AdapterInfo], names: list[str], bundle: Path) -> str:
    """The README.md of a bundle."""
    m = manifest["model"]
    stacks = manifest["stacks"]
    full = max(stacks, key=lambda s: s.count("+")) if stacks else names[0]
    front = ["---", "library_name: mlx"]
    if m.get("hf_repo"):
        front.append(f"base_model: {m['hf_repo']}")
    if m.get("license"):
        front.append(f"license: {m['license'].lower()}")
    front += ["tags:", "- mlx", "- lora", "- humanizer-studio", "---", ""]
    adapter_args = " ".join(f"--adapter ./adapters/{n}" for n in names)
    names_by_fp = {i.fingerprint: n for i, n in zip(infos, names)}
    lines = front + [
        f"# {title}",
        "",
        f"A base model and {len(names)} LoRA adapter{'s' if len(names) != 1 else ''} made with Humanizer Studio, "
        "to be served stacked: one copy of the base model in memory, and each request chooses its adapters "
        f"(`base`, {', '.join(f'`{s}`' for s in stacks)}).",
        "",
        "## Contents",
        "",
        "| path | size |",
        "| --- | --- |",
        f"| `model/` | {human_bytes(folder_bytes(bundle / 'model'))} |",
    ]
    lines += [f"| `adapters/{n}/` | {human_bytes(folder_bytes(bundle / 'adapters' / n))} |" for n in names]
    lines += [f"| `{BUNDLE_RECORD}` | machine-readable manifest |", "", "## Base model", ""]
    lines.append(f"- **Name:** `{m['name']}`" + (f" ([{m['hf_repo']}](https://huggingface.co/{m['hf_repo']}))"
                                                  if m.get("hf_repo") else ""))
    lines += [f"- **Architecture:** {m['architecture']}", f"- **Weights:** {m['quantization']}",
              f"- **Source:** {m['source']}", f"- **Fingerprint:** `{m['fingerprint']}` (the adapters refuse any other base)",
              "", "## Adapters", ""]
    for info, name in zip(infos, names):
        lines += _adapter_section(info, name, names_by_fp)
    example = "Rewrite this so it sounds like a person wrote it: The meeting has been rescheduled to Friday."
    lines += [
        "## How to serve it stacked",
        "",
        "With Humanizer Studio installed (`pip install humanizer-studio`), from this folder:",
        "",
        "```sh",
        f"humanizer serve --model ./model {adapter_args} --port 8080",
        "```",
        "",
        "Each request picks its adapters with the body field `adapter` (`\"base\"`, one name, or names joined "
        "by `+`), or by model id: `GET /v1/models` lists `base` and every combination that can be served. "
        f"A delta is only ever served together with its parent (e.g. `{full}`).",
        "",
        "```sh",
        "curl http://127.0.0.1:8080/v1/chat/completions \\",
        "  -H 'Content-Type: application/json' \\",
        f"  -d '{{\"model\": \"{full}\", \"adapter\": \"{full}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"{example}\"}}], \"max_tokens\": 200}}'",
        "```",
        "",
        "```python",
        "from openai import OpenAI",
        "",
        "client = OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key=\"not-needed-on-localhost\")",
        "reply = client.chat.completions.create(",
        f"    model=\"{full}\",",
        f"    messages=[{{\"role\": \"user\", \"content\": \"{example}\"}}],",
        f"    extra_body={{\"adapter\": \"{full}\"}},  # or just the model id above",
        ")",
        "print(reply.choices[0].message.content)",
        "```",
        "",
    ]
    plain = [n for i, n in zip(infos, names) if not i.is_delta]
    lines += ["## Use with mlx-lm", ""]
    if plain:
        lines += ["An adapter that is not a delta loads in stock mlx-lm:", "", "```sh",
                  f"mlx_lm.generate --model ./model --adapter-path ./adapters/{plain[0]} --prompt \"{example}\"",
                  "```", ""]
    deltas = [(i, n) for i, n in zip(infos, names) if i.is_delta]
    if deltas:
        i, n = deltas[0]
        pname = names_by_fp.get(i.parent.get("fingerprint"), i.parent.get("name"))
        lines += [f"A delta such as `{n}` means nothing alone. To use it outside Humanizer Studio, merge it with its "
                  "parent (exactly: the result gives the same outputs as the two stacked) or bake both into the weights:",
                  "", "```sh",
                  f"humanizer lora combine ./adapters/{pname} ./adapters/{n} --output ./{pname}-{n}",
                  f"humanizer lora fuse ./model --adapter ./adapters/{pname} --adapter ./adapters/{n} --output ./fused",
                  "```", ""]
    lic = m.get("license")
    lines += ["## License", ""]
    if lic:
        lines.append(f"The base model is distributed under the {lic} license; the adapters are derived from it and "
                     "come under the same terms. Check the base model's license and the terms of the training data "
                     "before redistributing.")
    else:
        lines.append("The base model's license was not recorded. The adapters are derived from the base model and its "
                     "license applies to them as well; check it (and the terms of the training data) before "
                     "redistributing, and set `license:` in the front matter above.")
    return "\n".join(lines) + "\n"
