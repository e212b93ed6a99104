"""Sensitivity-aware mixed-precision quantization (`humanizer convert`); the method is in
pipeline.py's docstring. Every name other code imports is re-exported here."""

from engine.convert.pipeline import (  # noqa: F401
    BUDGET_TOLERANCE, CALIBRATION_FILE, CLIP_MAX_BITS, CLIP_RATIOS, COUNTING, DEFAULT_CANDIDATE_BITS,
    DEFAULT_GROUP_SIZE, DEFAULT_HELDOUT_TOKENS, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, EXAMPLE_FAMILIES, FISHER_FILE,
    FLOAT_BITS, GROUP_SIZES, HELDOUT_FILE, KAPPA_FROM_BITS, KAPPAS, MAX_CHECK_SAMPLES, META_FILE, MODULE_NAMES,
    ROUNDING_FILE, ROUNDINGS, STATE_FILE, STATE_VERSION, SUPPORTED_BITS, Budget, ConvertResult, QLayer,
    _calibration_pass, _fisher_keys, _total_params, allocate, bpw_range, budget_of, check_settings, convert,
    corrected, default_calibration, default_heldout, fisher_factors, heldout_eval, layer_bpw, load_calibration,
    make_samples, measure_layer, model_plan, parse_bits, plan_allocation, quantizable_layers, quantization_config,
    rounded_weight, reused_measurements, select_allocation, shown_ceiling, shown_floor, split_check, tokenize_docs,
    verify_loaded, work_dir_for,
)
