"""CLI verb of the converter:

    humanizer convert MODEL --target-bpw 5.0 --candidate-bits 4,8 [--group-size 64] --output DIR
        [--calibration FILE|DATASET] [--samples N] [--seq-len L] [--resume] [--json]"""

from __future__ import annotations

import argparse

from tui.cli.common import add_json, run_long


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
    """Add `convert` to the top-level subparsers `sub`."""
    from engine.convert import DEFAULT_GROUP_SIZE, DEFAULT_HELDOUT_TOKENS, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, \
        GROUP_SIZES

    p = sub.add_parser("convert", help="mixed-precision quantization within a bits-per-weight budget",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_convert)
    p.add_argument("model", help="model spec: smollm2-135m, a model folder, a .gguf, a workspace model, an HF repo id")
    p.add_argument("--target-bpw", type=float, required=True, metavar="BPW",
                   help="bits per weight to reach, over the whole model (e.g. 5.0)")
    p.add_argument("--candidate-bits", default="4,8", metavar="B,B",
                   help="bit widths a layer may get, from 2, 3, 4, 5, 6, 8 (default 4,8)")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, metavar="G",
                   help=f"weights per quantization group: {', '.join(map(str, GROUP_SIZES))} "
                   f"(default {DEFAULT_GROUP_SIZE})")
    p.add_argument("--output", required=True, metavar="DIR", help="model folder to write")
    p.add_argument("--calibration", metavar="FILE|DATASET",
                   help="calibration text: a text file, a .jsonl/.parquet file or folder with a 'text' field, or "
                   "a Hugging Face dataset id (default: the calibration set shipped with humanizer)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"calibration sequences (default {DEFAULT_SAMPLES})")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, metavar="L",
                   help=f"tokens per calibration sequence (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--heldout", metavar="FILE",
                   help="text for the final perplexity check (default: the held-out text shipped with humanizer, "
                   "which is not calibration text)")
    p.add_argument("--heldout-tokens", type=int, default=DEFAULT_HELDOUT_TOKENS, metavar="N",
                   help=f"held-out tokens to evaluate (default {DEFAULT_HELDOUT_TOKENS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled labels of the calibration pass")
    p.add_argument("--rounding", choices=["clip", "minmax"], default="clip",
                   help="clip (default): per group, the range shrink that minimises the Fisher-weighted "
                   "error at 4 bits or fewer; minmax: plain min/max rounding (both the standard MLX format)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted convert into --output")
    p.add_argument("--reuse-measurements", metavar="FILE",
                   help="the humanizer_quant.json (or folder) of an earlier convert of the same model and "
                   "calibration: reuse its sensitivities instead of measuring, e.g. for another --target-bpw")
    add_json(p)


def cmd_convert(ws, args, argv) -> int:
    from engine.convert import check_settings, convert

    check_settings(args.target_bpw, args.candidate_bits, args.group_size, args.samples, args.seq_len)  # before a run
    result = run_long(
        ws, "convert", argv, args.json,
        lambda run: convert(args.model, args.output, target_bpw=args.target_bpw,
                            candidate_bits=args.candidate_bits, group_size=args.group_size,
                            calibration=args.calibration, samples=args.samples, seq_len=args.seq_len,
                            resume=args.resume, seed=args.seed, heldout=args.heldout,
                            heldout_tokens=args.heldout_tokens, measurements=args.reuse_measurements,
                            rounding=args.rounding, run=run, ws=ws),
        human_view=HumanView,
    )
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
