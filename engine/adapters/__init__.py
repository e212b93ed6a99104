"""Adapters: LoRA adapter folders, checking and stacking them, the LoRA layers, and the manager's steps.

An adapter is a folder with

    adapters.safetensors   the LoRA weights, mlx-lm names: model.layers.N.<key>.lora_a (in, r)
                           and .lora_b (r, out)
    adapter_config.json    mlx-lm's format: fine_tune_type "lora", num_layers,
                           lora_parameters {rank, scale, dropout, keys}; plus ours under
                           "humanizer": method, base {name, fingerprint}, parent (for a
                           delta: {name, path, fingerprint} of the adapter it was trained
                           on top of), training config, final metrics

so a single SFT adapter loads in stock `mlx_lm.load(model, adapter_path=...)`. A delta
(a DPO adapter trained on top of a mounted SFT adapter) holds only its own change and
is refused unless its parent is mounted with it. Its tensor names carry the prefix
`DELTA_PREFIX`, so stock mlx-lm refuses it too (on its own it would load without error
and give wrong outputs), naming that prefix in its error; `humanizer lora combine
SFT DPO` makes the single adapter stock mlx-lm can load.

The config must describe the weights (rank, num_layers, keys: check_config, and against
the model in check_fits), or the adapter is refused with the field named. A delta stacks
only on the parent its config records: the same weights and the same identity (name or
folder; is_recorded_parent), never on a copy under another name. A real stack is an
adapter on its chain of parents, applying no weights twice (real_stacks, deepest_stack).

Fingerprints: a base model's is a SHA-256 over its safetensors tensors' names, dtypes,
shapes and a strided sample of their bytes (read from the file, cheap and stable); an
adapter's is the SHA-256 of its adapters.safetensors.

Where each job lives (the LoRA layers need MLX; the rest loads without it, so this package's
names import fast and the UI can list adapters without loading MLX):

    folder.py    the files, fingerprints, save/read, check_config
    checks.py    check_fits (adapter vs model), a delta's recorded parent
    stacks.py    real stacks, stack_order, mountable_together
    catalog.py   resolve_adapter (a path or a workspace name), list_adapters, summaries
    layers.py    StackedLoRALinear, apply/mount/fold adapters on a model, load_model (MLX)
    combine.py   an exact merge of two adapters into one
    fuse.py      bake adapters into the base weights, measured on probe prompts
    bundle.py    export a bundle folder (model, adapters, card, record)
    card.py      the bundle's README.md model card
    common.py    what combine, fuse and export share: their inputs, safe outputs
    push.py      upload a bundle to the Hugging Face Hub (errors: engine.hub)
"""

from engine.adapters.catalog import (
    SUMMARY_METRICS,
    describe_method,
    fit_status,
    layer_summary,
    list_adapters,
    metrics_summary,
    resolve_adapter,
)
from engine.adapters.checks import (
    check_fits,
    check_parent,
    check_parent_active,
    find_parent,
    is_recorded_parent,
)
from engine.adapters.folder import (
    ADAPTER_FILE,
    AdapterInfo,
    CONFIG_FILE,
    DELTA_PREFIX,
    FORMAT_VERSION,
    WEIGHT_FILES,
    adapter_config,
    adapter_weights_of,
    check_config,
    file_fingerprint,
    info_of,
    layer_blocks,
    load_weights,
    model_fingerprint,
    model_linear_dims,
    read_adapter,
    safetensors_header,
    save_adapter,
    tensor_name,
    write_adapter_files,
)
from engine.adapters.stacks import (
    deepest_stack,
    mountable_together,
    real_stacks,
    repeated_weights,
    stack_of,
    stack_order,
    weight_fingerprints,
)
from engine.errors import AdapterConfigError, NeedsParent

__all__ = [
    "ADAPTER_FILE",
    "AdapterConfigError",
    "AdapterInfo",
    "CONFIG_FILE",
    "DELTA_PREFIX",
    "FORMAT_VERSION",
    "NeedsParent",
    "SUMMARY_METRICS",
    "WEIGHT_FILES",
    "adapter_config",
    "adapter_weights_of",
    "check_config",
    "check_fits",
    "check_parent",
    "check_parent_active",
    "deepest_stack",
    "describe_method",
    "file_fingerprint",
    "find_parent",
    "fit_status",
    "info_of",
    "is_recorded_parent",
    "layer_blocks",
    "layer_summary",
    "list_adapters",
    "load_weights",
    "metrics_summary",
    "model_fingerprint",
    "model_linear_dims",
    "mountable_together",
    "read_adapter",
    "real_stacks",
    "repeated_weights",
    "resolve_adapter",
    "safetensors_header",
    "save_adapter",
    "stack_of",
    "stack_order",
    "tensor_name",
    "weight_fingerprints",
    "write_adapter_files",
]
