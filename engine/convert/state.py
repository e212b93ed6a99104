"""The one object a convert's stages pass along (pipeline.py): what convert() resolved before
the work folder was locked, then what each stage adds, in stage order. Imports no MLX."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.convert.layers import Budget, QLayer
from engine.convert.settings import ConvertSettings
from engine.events import Run


@dataclass
class ConvertState:
    settings: ConvertSettings  # checked (ConvertSettings.check): target a float, candidate_bits a list
    model_spec: Any
    model_dir: Path
    config: dict  # the source's config.json
    output: Path
    work: Path  # workdir.work_dir_for(output), locked while the stages run
    docs: list[str]  # calibration documents, and where they came from
    calib_source: str
    held_docs: list[str]  # held-out documents for the final perplexity check
    held_source: str
    run: Run
    t_start: float
    checkpoint_every: float | None = 300.0  # seconds between the calibration pass's Fisher checkpoints

    # load: the float32 model and its quantizable layers
    model: Any = None
    tokenizer: Any = None
    source_note: str | None = None  # set when the source was quantized already
    out_dtype_name: str = "float16"
    out_dtype: Any = None
    layers: list[QLayer] = field(default_factory=list)
    tied: QLayer | None = None  # the embedding matrix that is also the output head
    total_params: int = 0
    budget: Budget | None = None

    # tokens: calibration windows (calib_all = calib + check) and held-out chunks
    calib_all: list[list[int]] = field(default_factory=list)
    calib: list[list[int]] = field(default_factory=list)  # what the Fisher pass reads
    check: list[list[int]] = field(default_factory=list)  # held back to compare allocations
    n_tokens: int = 0
    held: list[list[int]] = field(default_factory=list)
    calib_fp: str = ""
    key: dict = field(default_factory=dict)  # what a resume or a reuse of measurements must match

    # measure: the work folder's state.json, sensitivities, the Fisher sums and rounding factors
    saved: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)  # path -> {"sensitivity": {bits: KL}, ...} (JSON keys)
    t_measure: float = 0.0
    params: dict | None = None  # path -> float32 weight
    todo: list[QLayer] = field(default_factory=list)  # layers this run measures
    fisher: dict | None = None
    stats_seconds: float = 0.0
    factors: dict | None = None  # rank-1 Fisher factors for the clip rounding (None: minmax)
    choices: dict = field(default_factory=dict)  # (path, bits) -> clip choice measured in this run

    # allocate
    chosen: dict = field(default_factory=dict)  # path -> bits (None: kept in float)
    selection: list[dict] = field(default_factory=list)  # the candidate allocations, one per distinct kappa
    kept: int = 0
    layer_bits: int = 0
    planned_bpw: float = 0.0
    predicted_kl: float = 0.0
    check_kl: float | None = None
    measure_seconds: float = 0.0

    @property
    def target(self) -> float:
        return self.settings.target_bpw

    @property
    def bits(self) -> list[int]:
        return self.settings.candidate_bits
