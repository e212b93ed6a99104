"""Sensitivity-aware mixed-precision quantization (`humanizer convert`).

    convert_with(MODEL, ConvertSettings(target_bpw=5.0, output=OUTPUT, candidate_bits="4,8", ...))
    convert(MODEL, OUTPUT, target_bpw=5.0, candidate_bits=(4, 8), group_size=64, ...)   # the same, keywords

1. **Layers.** Every quantizable layer of the model is measured: each linear layer
   of every block, the embedding and the output head. When the head is tied to the
   embedding (one shared matrix), that matrix is one layer in the budget, measured
   for both roles. A layer whose input width is not divisible by the group size gets
   the largest of 64/32 that divides it, or, when none does, stays in float16 (and
   is counted at 16 bits per weight); either way it is reported.

2. **Sensitivity.** For a layer with weights W and a candidate width b, the cost of
   quantizing that layer alone is the increase of the mean per-token
   KL(float model || model with that layer quantized) on calibration tokens. To
   second order around the float model that is

       KL ~= 1/2 * sum_ij F_ij * (W_ij - Q_b(W)_ij)^2 / tokens

   where F is the Fisher information of the model's output distribution (the Hessian
   of the KL at the float weights) and Q_b(W) is W quantized to b bits and
   dequantized, exactly as the output stores it (affine, 16-bit scales and biases).
   We estimate the diagonal of F with one calibration pass: per sequence, labels are
   sampled from the float model's own next-token distribution, and the squared
   gradients of their log-likelihood are accumulated (an unbiased estimate of the
   Fisher diagonal, since the sampled labels' scores have zero mean). This is the
   diagonal-Fisher ("FIT"/SqueezeLLM-style) sensitivity: unlike the plain weight
   error it weighs each weight by how much the output distribution depends on it,
   including everything downstream of the layer, so the numbers of different layers
   are in the same unit (nats of KL per token) and can be traded against each other.
   One forward+backward per sample measures every layer at once; the per-layer work
   is then a quantize/dequantize per candidate width. Everything runs on float32
   weights (the CPU backend's fast BLAS path); quantized kernels are never used while
   measuring. One calibration window in 16 (at most 2) is held back from this pass
   for step 3. The pass is most of a convert's time, so while it runs every layer's
   sensitivity is estimated now and then from the sums so far, with the bits an
   allocation of those estimates gives (`layer` events, phase "estimate": provisional).

   **Rounding** (`rounding="clip"`, the default): still the standard MLX affine format
   (stock `mlx_lm.load` reads it), but at <= 4 bits each group of weights is not simply
   mapped min..max: its range is shrunk about its midpoint by the ratio (1, 0.95 ... 0.75)
   that minimises the squared error weighted by a rank-1 summary of the Fisher diagonal
   (F_ij ~ rows_i * cols_j, K-FAC style; the full diagonal is too big to keep, the
   summary is stored beside the weights as humanizer_rounding.safetensors so a reused
   measurement rounds identically). Clipping a few extreme weights buys a finer step
   for the other 60-odd. The sensitivities of step 2 are measured with this rounding.
   `rounding="minmax"` is plain mx.quantize.

3. **Allocation.** Minimise the sum of the chosen sensitivities subject to the bit
   budget: a multiple-choice knapsack solved by dynamic programming on a fine grid
   (costs rounded up, so the budget always holds), then filled greedily with the
   best sensitivity-per-bit upgrades that still fit exactly.

   The second-order estimate is additive and local; measured on SmolLM2-135M against the
   real KL of quantizing one layer alone, it is right at 4 bits but off (mostly low, up to
   2.4x for the 2-bit embedding) below, and the layers' errors interact at low budgets (at
   3.5 bpw the whole model's real KL was 1.8x the summed estimate for a 2/3/4/6 mix, 1.3x
   for uniform 3-bit), so the plain knapsack traded 3-bit layers for 2+4-bit pairs that
   lose. So the knapsack is run once per correction kappa in KAPPAS (each bit below 4
   multiplies a sensitivity by kappa), and of the distinct allocations the one whose
   quantized model has the smallest real mean per-token KL(float || quantized) on the
   held-back calibration windows is kept (a few forward passes). Every candidate, its
   predicted and real KL are in the metadata.

4. **Bits per weight** are counted over the whole model from the tensors written:
   a quantized layer costs b bits per weight plus a 16-bit scale and a 16-bit bias
   per group (b + 32/group_size); every other tensor (norms, biases, layers kept in
   float) costs 16 bits per value; the denominator is the number of parameters of
   the float model, the shared embedding/head matrix counted once.

5. **Output**: an MLX model folder whose config.json "quantization" holds one
   {"group_size", "bits"} entry per quantized layer (false for a layer kept in
   float), which stock `mlx_lm.load` reads, plus humanizer_quant.json with every
   layer's measured sensitivities, its chosen bits, how the bits were counted, the
   allocation candidates and the held-out perplexity of the result against the source,
   and humanizer_rounding.safetensors (the rank-1 Fisher factors). Written atomically.

6. **Resume**: the calibration pass checkpoints its Fisher sums, and each measured
   layer is saved to a small state.json as it completes, in a work folder beside the
   output (`.<name>.convert-work`); `resume=True` continues from there. The work
   folder is removed when the output is written.

A source that is already quantized (the embedded SmolLM2 arrives 4-bit from its
GGUF) is dequantized to float32 first: its earlier quantization error is baked into
those weights, and every sensitivity is measured against them.

The package, one job a module (the stages pass one ConvertState along):

    settings     ConvertSettings (every setting with its help text) and the checks that need no
                 model; imports no MLX, so the CLI's --help and the Convert form load fast
    calibration  the calibration and held-out text, its tokens and windows
    layers       the quantizable layers, the budget and how bits per weight are counted
    fisher       the calibration pass (Fisher diagonal) and the estimates shown while it runs
    rounding     a weight rounded as the output stores it (the clip search)
    measure      each layer's sensitivities, saved to the work folder as they complete
    allocation   the knapsack and the choice among the kappa-corrected allocations
    output       the written folder, its check with stock mlx-lm and the held-out evaluation
    workdir      the work folder: lock, resume state, Fisher checkpoint, reused measurements
    state        ConvertState, what each stage reads and adds
    pipeline     convert_with() (and convert(), its keyword form) and its stages, model_plan()

Every name other code imports is re-exported here, so `from engine.convert import X` and
`from engine import convert as C` keep working. No module imports MLX at import time.
"""

from engine.convert.allocation import KAPPA_FROM_BITS, KAPPAS, allocate, corrected, plan_allocation, select_allocation
from engine.convert.calibration import (CALIBRATION_FILE, HELDOUT_FILE, MAX_CHECK_SAMPLES, default_calibration,
                                        default_heldout, load_calibration, make_samples, split_check, tokenize_docs)
from engine.convert.fisher import _calibration_pass, _fisher_keys
from engine.convert.layers import (COUNTING, EXAMPLE_FAMILIES, MODULE_NAMES, Budget, QLayer, _total_params, bpw_range,
                                   budget_of, quantizable_layers, shown_ceiling, shown_floor)
from engine.convert.measure import measure_layer
from engine.convert.output import (META_FILE, ROUNDING_FILE, ConvertResult, heldout_eval, quantization_config,
                                   verify_loaded)
from engine.convert.pipeline import convert, convert_with, model_plan
from engine.convert.rounding import CLIP_MAX_BITS, CLIP_RATIOS, fisher_factors, rounded_weight
from engine.convert.settings import (BUDGET_TOLERANCE, DEFAULT_CANDIDATE_BITS, DEFAULT_GROUP_SIZE,
                                     DEFAULT_HELDOUT_TOKENS, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, FLOAT_BITS, GROUP_SIZES,
                                     ROUNDINGS, SUPPORTED_BITS, ConvertSettings, check_settings, layer_bpw, parse_bits,
                                     setting_fields)
from engine.convert.state import ConvertState
from engine.convert.workdir import FISHER_FILE, STATE_FILE, STATE_VERSION, reused_measurements, work_dir_for

__all__ = [
    "BUDGET_TOLERANCE", "CALIBRATION_FILE", "CLIP_MAX_BITS", "CLIP_RATIOS", "COUNTING", "DEFAULT_CANDIDATE_BITS",
    "DEFAULT_GROUP_SIZE", "DEFAULT_HELDOUT_TOKENS", "DEFAULT_SAMPLES", "DEFAULT_SEQ_LEN", "EXAMPLE_FAMILIES",
    "FISHER_FILE", "FLOAT_BITS", "GROUP_SIZES", "HELDOUT_FILE", "KAPPA_FROM_BITS", "KAPPAS", "MAX_CHECK_SAMPLES",
    "META_FILE", "MODULE_NAMES", "ROUNDING_FILE", "ROUNDINGS", "STATE_FILE", "STATE_VERSION", "SUPPORTED_BITS",
    "Budget", "ConvertResult", "ConvertSettings", "ConvertState", "QLayer", "_calibration_pass", "_fisher_keys",
    "_total_params", "allocate", "bpw_range", "budget_of", "check_settings", "convert", "convert_with", "corrected",
    "default_calibration", "default_heldout", "fisher_factors", "heldout_eval", "layer_bpw", "load_calibration",
    "make_samples", "measure_layer", "model_plan", "parse_bits", "plan_allocation", "quantizable_layers",
    "quantization_config", "reused_measurements", "rounded_weight", "select_allocation", "setting_fields",
    "shown_ceiling", "shown_floor", "split_check", "tokenize_docs", "verify_loaded", "work_dir_for",
]
