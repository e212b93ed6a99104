"""Settings of `humanizer convert`: the checks that need no model, and one dataclass with the
help text of every setting (like mlx-lm's TrainingArgs), which the CLI flags and the Convert
form can be built from. Imports no MLX, so --help and the form load fast."""

from __future__ import annotations

import contextlib
import math
from dataclasses import MISSING, dataclass, field, fields, replace

from engine.errors import HumanizerError


SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_CANDIDATE_BITS = (4, 8)
DEFAULT_GROUP_SIZE = 64
DEFAULT_SAMPLES = 32
DEFAULT_SEQ_LEN = 256
DEFAULT_HELDOUT_TOKENS = 2048
BUDGET_TOLERANCE = 0.05  # the achieved bpw may exceed the target by at most this (we aim at <= target)
FLOAT_BITS = 16  # the bits of every tensor stored unquantized (the output's float dtype)
ROUNDINGS = ("clip", "minmax")


def parse_bits(value) -> list[int]:
    """'4,8' (or a list) -> [4, 8], sorted and unique; a clear error for anything else."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    else:
        parts = list(value or [])
    bits = []
    for p in parts:
        try:
            if isinstance(p, bool) or not isinstance(p, (int, str)):
                raise ValueError
            b = int(p)
        except ValueError:
            raise HumanizerError(
                f"unknown candidate bits '{p}'",
                f"candidate bits are a comma-separated list of {', '.join(map(str, SUPPORTED_BITS))}",
            ) from None
        if b not in SUPPORTED_BITS:
            raise HumanizerError(
                f"unknown candidate bits {b}: MLX quantizes to {', '.join(map(str, SUPPORTED_BITS))} bits",
                "pick candidate bits from 2, 3, 4, 5, 6 and 8, e.g. --candidate-bits 4,8",
            )
        bits.append(b)
    if not bits:
        raise HumanizerError("no candidate bits given", "e.g. --candidate-bits 4,8")
    return sorted(set(bits))


def layer_bpw(bits: int, group_size: int) -> float:
    """Bits per weight of an affine-quantized layer: the codes plus a 16-bit scale and bias per group."""
    return bits + 2 * FLOAT_BITS / group_size


def check_settings(target_bpw, candidate_bits, group_size, samples=DEFAULT_SAMPLES, seq_len=DEFAULT_SEQ_LEN):
    """The checks that need no model: bits, group size, target against the candidates,
    sample counts. Returns (target, bits, group_size). Raises HumanizerError."""
    bits = parse_bits(candidate_bits)
    with contextlib.suppress(TypeError, ValueError):
        group_size = int(group_size)
    if group_size not in GROUP_SIZES:
        raise HumanizerError(
            f"unknown group size {group_size}",
            f"the group size is one of {', '.join(map(str, GROUP_SIZES))} (default {DEFAULT_GROUP_SIZE})",
        )
    try:
        target = float(target_bpw)
    except (TypeError, ValueError):
        raise HumanizerError(f"the target bits per weight must be a number, not '{target_bpw}'") from None
    if not math.isfinite(target):
        raise HumanizerError(f"the target bits per weight must be a finite number, not {target_bpw}")
    lo, hi = layer_bpw(bits[0], group_size), layer_bpw(bits[-1], group_size)
    if target < lo:
        raise HumanizerError(
            f"target {target:g} bits per weight is below the smallest candidate: {bits[0]}-bit with group size "
            f"{group_size} costs {lo:g} bits per weight (the codes plus a 16-bit scale and bias per group)",
            f"raise --target-bpw to at least {lo:g}, add a smaller candidate (--candidate-bits) or use a larger "
            "--group-size",
        )
    if target > hi:
        raise HumanizerError(
            f"target {target:g} bits per weight is above the largest candidate: {bits[-1]}-bit with group size "
            f"{group_size} costs {hi:g} bits per weight, so every layer at {bits[-1]} bits is all the budget "
            "can buy",
            f"lower --target-bpw to at most {hi:g}, or add a larger candidate (--candidate-bits)",
        )
    for name, v, least in (("samples", samples, 1), ("seq-len", seq_len, 8)):
        if not isinstance(v, int) or v < least:
            raise HumanizerError(f"--{name} must be a whole number of at least {least}, not {v}")
    return target, bits, group_size


def _opt(help: str, default=MISSING, *, choices=None, options=None, metavar: str | None = None, form: bool = True,
         group: str = "quantization"):
    """A settings field: its default and what the CLI and the form need to show it. `choices`
    become argparse choices; `options` are only what the form offers (check() refuses the
    rest, with a hint, so the CLI leaves them to it)."""
    meta = {"help": help, "choices": choices, "options": options, "flag": None, "metavar": metavar, "form": form,
            "group": group}
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class ConvertSettings:
    """Everything `humanizer convert MODEL` takes (MODEL itself is the command's argument): the
    `convert` flags (tui/cli/convert.py) and the Convert form (screens/convert/form.py) are
    made from these fields. `check()` gives the checked form the pipeline runs on: target a
    float, candidate_bits a sorted list, group_size an int."""

    target_bpw: float = _opt("bits per weight to reach, over the whole model (e.g. 5.0)", metavar="BPW")
    candidate_bits: str | list[int] = _opt(f"bit widths a layer may get, from {', '.join(map(str, SUPPORTED_BITS))}",
                                           ",".join(map(str, DEFAULT_CANDIDATE_BITS)), options=SUPPORTED_BITS,
                                           metavar="B,B")
    group_size: int = _opt(f"weights per quantization group: {', '.join(map(str, GROUP_SIZES))}",
                           DEFAULT_GROUP_SIZE, options=GROUP_SIZES, metavar="G")
    output: str = _opt("model folder to write", metavar="DIR")
    calibration: str | None = _opt("calibration text: a text file, a .jsonl/.parquet file or folder with a 'text' "
                                   "field, or a Hugging Face dataset id (default: the calibration set shipped "
                                   "with humanizer)", None, metavar="FILE|DATASET", form=False, group="calibration")
    samples: int = _opt("calibration sequences", DEFAULT_SAMPLES, metavar="N", group="calibration")
    seq_len: int = _opt("tokens per calibration sequence", DEFAULT_SEQ_LEN, metavar="L", group="calibration")
    heldout: str | None = _opt("text for the final perplexity check (default: the held-out text shipped with "
                               "humanizer, which is not calibration text)", None, metavar="FILE", form=False,
                               group="held-out check")
    heldout_tokens: int = _opt("held-out tokens to evaluate", DEFAULT_HELDOUT_TOKENS, metavar="N", form=False,
                               group="held-out check")
    seed: int = _opt("seed of the sampled labels of the calibration pass", 0, metavar="SEED", form=False,
                     group="calibration")
    rounding: str = _opt("clip: per group, the range shrink that minimises the Fisher-weighted error at 4 bits "
                         "or fewer; minmax: plain min/max rounding (both the standard MLX format)", "clip",
                         choices=ROUNDINGS, form=False)
    resume: bool = _opt("continue an interrupted convert into --output", False)
    reuse_measurements: str | None = _opt("the humanizer_quant.json (or folder) of an earlier convert of the same "
                                          "model and calibration: reuse its sensitivities instead of measuring, "
                                          "e.g. for another --target-bpw", None, metavar="FILE", form=False)

    def check(self) -> ConvertSettings:
        """These settings checked (check_settings, then the rounding) and normalised; raises
        HumanizerError."""
        target, bits, group_size = check_settings(self.target_bpw, self.candidate_bits, self.group_size,
                                                  self.samples, self.seq_len)
        if self.rounding not in ROUNDINGS:
            raise HumanizerError(f"unknown rounding '{self.rounding}'", f"rounding is one of {', '.join(ROUNDINGS)}")
        return replace(self, target_bpw=target, candidate_bits=bits, group_size=group_size)

    def recorded(self) -> dict:
        """The settings a finished convert records (humanizer_quant.json "settings") and a
        resume into a finished output compares."""
        return {"target_bpw": self.target_bpw, "candidate_bits": self.candidate_bits, "group_size": self.group_size,
                "samples": self.samples, "seq_len": self.seq_len, "seed": self.seed, "rounding": self.rounding}

    def argv(self) -> list[str]:
        """The `humanizer convert MODEL` flags that reproduce these settings (non-defaults only),
        checked or not: bits as 4,8 and a whole target as 5, the way they are typed."""
        from engine.flags import flags_of

        def typed(v):
            if isinstance(v, (list, tuple)):
                return ",".join(map(str, v))
            return f"{v:g}" if isinstance(v, float) and float(f"{v:g}") == v else v

        return flags_of(replace(self, **{f.name: typed(getattr(self, f.name)) for f in fields(self)}), fields(self))


def setting_fields(form_only: bool = False) -> list:
    """The fields of ConvertSettings (with their metadata), for the CLI and the form."""
    return [f for f in fields(ConvertSettings) if not form_only or f.metadata["form"]]
