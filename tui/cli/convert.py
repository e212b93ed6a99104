"""CLI verb of the converter:

    humanizer convert MODEL --target-bpw 5.0 --candidate-bits 4,8 [--group-size 64] --output DIR
        [--calibration FILE|DATASET] [--samples N] [--seq-len L] [--resume] [--json]

The flags are made from engine.convert.settings.ConvertSettings."""

from __future__ import annotations

import argparse

from tui.cli.common import add_json, add_settings_arguments, run_long


class HumanView:
    """Passes events to the CLI's printer, but collects the `layer` events and prints the
    allocation as a grid (blocks by module) once every layer has its bits."""

    def __init__(self, printer):
        self.printer = printer
        self.allocated: list[dict] = []

    def __call__(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "layer":
            if ev.get("phase") == "allocated":
                self.allocated.append(ev)
                if ev.get("index") == ev.get("total", 0) - 1:
                    for line in bit_map(self.allocated):
                        self.printer({"t": ev["t"], "type": "log", "message": line})
            return
        if kind == "done" and "achieved_bpw" in ev:
            return  # cmd_convert prints the summary
        self.printer(ev)


GRID_MODULES = ("q", "k", "v", "o", "gate", "up", "down")


def bit_map(layers: list[dict]) -> list[str]:
    """The chosen bits as text: one row per block, one column per module; the layers
    outside the blocks (embedding, head) on a line of their own. 16 = kept in float16."""
    blocks: dict[int, dict[str, str]] = {}
    extra, others = [], set()
    for ev in layers:
        bits = ev.get("chosen_bits")
        cell = "f16" if bits == 16 else str(bits)
        if ev.get("block") is None:
            extra.append(f"{'+'.join(ev.get('modules') or [ev.get('module')])} {cell}")
            continue
        blocks.setdefault(ev["block"], {})[ev.get("module")] = cell
        if ev.get("module") not in GRID_MODULES:
            others.add(ev.get("module"))
    cols = [m for m in GRID_MODULES if any(m in row for row in blocks.values())] + sorted(others)
    lines = ["bits per layer:" + (f" {', '.join(extra)}" if extra else "")]
    if blocks:
        lines.append("  block " + " ".join(f"{c:>4}" for c in cols))
        for b in sorted(blocks):
            lines.append(f"  {b:>5} " + " ".join(f"{blocks[b].get(c, '-'):>4}" for c in cols))
    return lines


DESCRIPTION = (
    "Quantize MODEL with a different bit width per layer: measure on calibration text how much quantizing each "
    "layer (every linear layer, the embedding and the output head) changes the model's output distribution, "
    "then give the bits where they matter most within --target-bpw, counted over the whole model including "
    "the quantization scales and biases. Writes an MLX model folder that stock mlx_lm.load reads, with "
    "humanizer_quant.json (each layer's sensitivities and bits, how the bits were counted, and the held-out "
    "perplexity of the result against the source)."
)

EPILOG = (
    "bits per weight: a layer quantized to b bits with group size g costs b + 32/g (a 16-bit scale and bias "
    "per group); every other tensor costs 16. With --group-size 64: 2-bit 2.5, 3-bit 3.5, 4-bit 4.5, "
    "5-bit 5.5, 6-bit 6.5, 8-bit 8.5.\n"
    "An interrupted convert (Ctrl-C, `humanizer jobs cancel`) keeps its measurements beside --output; run the "
    "same command with --resume to continue it."
)


def register(sub) -> None:
    """Add `convert` to the top-level subparsers `sub`: its flags are made from
    engine.convert.settings.ConvertSettings, the fields the Convert form is made from."""
    from engine.convert.settings import setting_fields

    p = sub.add_parser("convert", help="mixed-precision quantization within a bits-per-weight budget",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_convert)
    p.add_argument("model", help="model spec: smollm2-135m, a model folder, a .gguf, a workspace model, an HF repo id")
    add_settings_arguments(p, setting_fields())
    add_json(p)


def cmd_convert(ws, args, argv) -> int:
    from dataclasses import fields

    from engine.convert import ConvertSettings, convert_with

    # checked before a run is recorded: a bad flag leaves no run behind
    settings = ConvertSettings(**{f.name: getattr(args, f.name) for f in fields(ConvertSettings)}).check()
    result = run_long(ws, "convert", argv, args.json, lambda run: convert_with(args.model, settings, run=run, ws=ws),
                      human_view=HumanView)
    if not args.json:
        print("\n".join(summary_lines(result.summary)))
    return 0


def summary_lines(s: dict) -> list[str]:
    lines = [f"model ready: {s.get('output')}"]
    if "achieved_bpw" in s:
        lines.append(f"  bits per weight: {s['achieved_bpw']:.4f} (target {s.get('target_bpw'):g}; whole model, "
                     "scales and biases included)")
    if "size_bytes" in s:
        lines.append(f"  size on disk:    {s['size_bytes'] / 1e6:.1f} MB")
    hist = s.get("bits_histogram") or {}
    total = sum(hist.values()) or 1
    if hist:
        parts = [f"{k}-bit {100 * v / total:.0f}%" if k != "float16" else f"float16 {100 * v / total:.0f}%"
                 for k, v in sorted(hist.items(), key=lambda kv: (kv[0] == "float16", kv[0]))]
        lines.append(f"  weights:         {', '.join(parts)}")
    if s.get("ppl_source") is not None:
        lines.append(f"  held-out perplexity: {s['ppl_source']:.3f} (source) -> {s['ppl_result']:.3f} (result), "
                     f"{s['ppl_increase_pct']:+.2f}%; KL {s['kl_source_result']:.4f} nats/token "
                     f"on {s['heldout_tokens']} tokens")
    if s.get("measure_seconds") is not None:
        lines.append(f"  measurement + allocation: {s['measure_seconds']:.0f} s")
    if s.get("source_note"):
        lines.append(f"  note: {s['source_note']}")
    return lines
