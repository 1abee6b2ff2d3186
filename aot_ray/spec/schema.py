"""The typed sweep schema: frozen keyword-only dataclasses that a sweep YAML is loaded into.

Numeric constraints live in field metadata (`gt`, `ge`, `lt`, `le`) so the loader can check every value,
including values that come from grid axes, and name the exact YAML path of a bad one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from . import orders
from .primes import count_primes_below

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[str, ...] = ("forward", "backward")


def _num(default: Any, **limits: float) -> Any:
    return field(default=default, metadata=limits)


# ---------------------------------------------------------------- data


@dataclass(frozen=True, kw_only=True)
class PrimesData:
    """Lines `p * q = n`: primes p < q below 10**digits, zero-padded; n written least-significant digit first."""

    kind: Literal["primes"] = "primes"
    digits: int = _num(3, gt=0, le=6)
    n_samples: int = _num(10000, gt=1)
    val_fraction: float = _num(0.1, gt=0, le=0.5)
    seed: int = _num(0, ge=0)
    # how windows are cut (WINDOWS): one line per example, as the authors trained, or a stream of lines
    windows: Literal["line", "stream"] = "line"

    def line_tokens(self) -> int:
        # "ppp * qqq = nnnnnn\n": two factors, a 2*digits product, two 3-char separators, a newline
        return self.digits * 4 + 7

    def capacity(self) -> int:
        """How many distinct lines the settings allow: pairs p < q of primes below 10**digits."""
        n = count_primes_below(10**self.digits)
        return n * (n - 1) // 2


@dataclass(frozen=True, kw_only=True)
class LinearData:
    """Lines `x : y` over F2 with y = A x, A = I plus `k` off-diagonal ones (invertible), optional bit flips on y."""

    kind: Literal["linear"] = "linear"
    bits: int = _num(16, gt=0, le=63)
    k: int = _num(4, ge=0)
    noise: float = _num(0.0, ge=0, le=0.5)
    n_samples: int = _num(10000, gt=1)
    val_fraction: float = _num(0.1, gt=0, le=0.5)
    seed: int = _num(0, ge=0)
    windows: Literal["line", "stream"] = "line"  # see PrimesData.windows

    def line_tokens(self) -> int:
        return self.bits * 2 + 4  # "x : y\n"

    def capacity(self) -> int:
        """How many distinct lines the settings allow: one per x."""
        return 2**self.bits


@dataclass(frozen=True, kw_only=True)
class TokenizerSpec:
    """A corpus's tokenizer, made with `tokenizers`; id 0 is <|endoftext|>, used as BOS and EOS. `bpe`: byte-level
    BPE trained per corpus (as GPT-2); `bytes`: the UTF-8 bytes, 256 ids plus <|endoftext|> (vocab_size must hold
    257); `chars`: one id per character, the `vocab_size - 2` most frequent characters of the training sample, the
    others one reserved unknown id (the authors' character-level DNA runs)."""

    kind: Literal["bpe", "bytes", "chars"] = "bpe"
    vocab_size: int = _num(50257, gt=0)
    sample_bytes: int = _num(100_000_000, gt=0)  # training-split text the BPE is trained on
    min_frequency: int = _num(2, gt=0)
    reverse_chars: bool = False  # the paper's control: train on, and tokenize, character-reversed documents


@dataclass(frozen=True, kw_only=True)
class TextData:
    """Local files, globs or URLs (fsspec) of plain text; .gz/.bz2/.xz are decompressed while streaming.
    `{lang}` in a path is filled from the sweep's `language` axis."""

    kind: Literal["text"] = "text"
    paths: tuple[str, ...]
    doc_sep: Literal["line", "blank_line"] = "blank_line"
    max_bytes: Optional[int] = _num(None, gt=0)
    max_documents: Optional[int] = _num(None, gt=0)
    val_fraction: float = _num(0.05, gt=0, le=0.5)
    seed: int = _num(0, ge=0)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    languages: tuple[str, ...] = ()  # the language codes this source accepts (empty: any)


@dataclass(frozen=True, kw_only=True)
class HFData:
    """Any dataset `datasets.load_dataset` can load: a hub name, a local folder, or a builder such as json or
    parquet with `data_files`. `{lang}` in path, name or data_files is filled from the `language` axis."""

    kind: Literal["hf"] = "hf"
    path: str
    name: Optional[str] = None
    data_files: tuple[str, ...] = ()
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    revision: Optional[str] = None
    max_bytes: Optional[int] = _num(None, gt=0)
    max_documents: Optional[int] = _num(None, gt=0)
    val_fraction: float = _num(0.05, gt=0, le=0.5)
    seed: int = _num(0, ge=0)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    languages: tuple[str, ...] = ()


DatasetSpec = Union[PrimesData, LinearData, TextData, HFData]
DATASET_KINDS: dict[str, type] = {"primes": PrimesData, "linear": LinearData, "text": TextData, "hf": HFData}
SYNTHETIC_KINDS = ("primes", "linear")
# WINDOWS: a synthetic set's `windows`. `line` is the authors' design (one phrase per example: the window is exactly
# one line with its newline, BOS before it, the stride one line, so no window spans two lines); its context length
# is the line's. `stream` cuts windows of any context_length over the lines end to end, at every stride.


def by_line(data: Any) -> bool:
    """Whether a dataset's windows are its lines, one example each (WINDOWS)."""
    return getattr(data, "kind", None) in SYNTHETIC_KINDS and getattr(data, "windows", "stream") == "line"


def split_sizes(data: DatasetSpec) -> tuple[int, int]:
    """(train, validation) line counts of a synthetic dataset; validation gets at least one line."""
    n_val = max(1, round(data.n_samples * data.val_fraction))
    return data.n_samples - n_val, n_val


# ---------------------------------------------------------------- model / optim / train


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A named preset (the architecture comes with it: GPT-2 decoder, LSTM or GRU), optionally overridden field by
    field; `n_head` applies to GPT presets only.

    `position` is a GPT model's position encoding (also a grid axis, `position` or `model.position`): `learned`
    absolute positions (GPT-2, the paper's models), `rope` (rotary, on every head dimension) or `none` (causal
    attention alone tells positions apart). `rope` and `none` are `transformers`' GPT-NeoX decoder with GPT-2's
    sequential residual, GELU, widths and initialization, so the three differ in the position encoding only.
    LSTM and GRU read positions through their recurrence and take the default."""

    preset: str = "tiny"
    n_layer: Optional[int] = _num(None, gt=0)
    n_head: Optional[int] = _num(None, gt=0)
    n_embd: Optional[int] = _num(None, gt=0)
    tie_embeddings: bool = False
    dropout: float = _num(0.0, ge=0, le=0.9)
    position: Literal["learned", "rope", "none"] = "learned"


@dataclass(frozen=True, kw_only=True)
class OptimSpec:
    """AdamW with a `transformers` warmup schedule; `cosine_restarts` decays the peak by `restart_decay` per cycle."""

    lr: float = _num(1e-3, gt=0)
    weight_decay: float = _num(0.1, ge=0)
    beta1: float = _num(0.9, ge=0, lt=1)
    beta2: float = _num(0.95, ge=0, lt=1)
    eps: float = _num(1e-8, gt=0)
    schedule: Literal["cosine", "cosine_restarts", "linear", "constant"] = "cosine"
    warmup_steps: int = _num(50, ge=0)
    min_lr_ratio: float = _num(0.0, ge=0, le=1)
    restarts: int = _num(1, gt=0)
    restart_decay: float = _num(1.0, gt=0, le=1)
    grad_clip: float = _num(1.0, ge=0)


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Step budget, batching, evaluation and checkpoint cadence; `stride` defaults to the context length.

    One optimizer step sees `batch_size x grad_accum` windows (the global batch). By default it runs as
    `grad_accum` forward/backward passes of `batch_size` windows; `micro_batch` runs it in passes of that many
    windows per worker instead (`auto`: the largest that fits the trial's GPU share), the same windows in the same
    steps, so it changes memory and speed, not the result or the trial id. `compile` runs the model through
    `torch.compile` (`auto`: GPT models on CUDA; LSTM/GRU keep cuDNN)."""

    steps: int = _num(500, gt=0)
    batch_size: int = _num(32, gt=0)
    grad_accum: int = _num(1, gt=0)
    micro_batch: Optional[Union[int, Literal["auto"]]] = _num(None, gt=0)
    compile: Union[bool, Literal["auto"]] = "auto"
    stride: Optional[int] = _num(None, gt=0)
    eval_every: int = _num(100, gt=0)
    eval_windows: int = _num(512, gt=0)
    eval_batch_size: int = _num(64, gt=0)
    log_every: int = _num(10, gt=0)
    checkpoint_every: int = _num(100, ge=0)
    keep_checkpoints: int = _num(2, gt=0)
    debug_nan_at_step: Optional[int] = _num(None, gt=0)  # fault injection for testing a pipeline
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: aot_ray.precision
    threads: Optional[int] = _num(None, gt=0)


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    """What one trial asks Ray for; fractional `gpu` packs several small models on one GPU, and `custom`
    resources (declared by node types, e.g. {"a100": 1}) pin trials to the nodes that have them.

    `workers` > 1 runs the trial data parallel (Ray Train's TorchTrainer inside the Tune trial, DDP over NCCL on
    GPUs, gloo on CPUs); `cpu`, `gpu` and `custom` are then what each worker asks for, and `train.batch_size`
    stays the global batch, so the worker count does not change the result. `sharding: fsdp` shards parameters,
    gradients and optimizer state over the workers (PyTorch's FSDP2 `fully_shard`, one unit per layer), for a
    model that does not fit one GPU; its checkpoints are sharded (`torch.distributed.checkpoint`) and resume at
    any worker count. Neither choice changes a trial's identity: the same steps, within fp32 rounding."""

    cpu: float = _num(1.0, gt=0)
    gpu: float = _num(0.0, ge=0)
    workers: int = _num(1, ge=1)
    sharding: Literal["ddp", "fsdp"] = "ddp"
    custom: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Defaults:
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)


@dataclass(frozen=True, kw_only=True)
class SignStopSpec:
    """Stop a forward/backward pair once the sequential sign test (spending `alpha` over evaluations) has
    established the sign of its gap at `looks` consecutive evaluations, the last at or after `after` x
    train.steps (early gaps can flip while the models learn). The report then compares the pair at that step."""

    alpha: float = _num(0.05, gt=0, le=0.5)
    after: float = _num(0.25, ge=0, le=1)
    looks: int = _num(2, ge=1)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """How the sweep is driven; command-line flags override these."""

    max_concurrent_trials: Optional[int] = _num(None, gt=0)
    max_failures: int = _num(0, ge=0)
    storage: Optional[str] = None
    tracking_uri: Optional[str] = None
    shared_storage: bool = False  # a local storage path that every node mounts (NFS): allowed on several nodes
    gpu_tflops: float = _num(250.0, gt=0)  # assumed sustained bf16 TFLOP/s per GPU, for plan's GPU-hour estimate
    # GPU memory per GPU, for the memory check and micro_batch: auto where the cluster cannot be asked (plan, a
    # cluster whose GPU nodes are not up yet); `gpu_memory_gb_by_resource` sizes the GPUs of the nodes that carry
    # a custom resource (e.g. {a100: 40}), for trials that ask for it
    gpu_memory_gb: Optional[float] = _num(None, gt=0)
    gpu_memory_gb_by_resource: dict[str, float] = field(default_factory=dict)
    stop_on_sign: Optional[SignStopSpec] = None  # `{}` for the defaults; `aot-ray run --stop-on-sign` too
    sign_interval_s: float = _num(30.0, ge=0)  # how often a running sweep refreshes the sequential sign test
    progress_every_s: float = _num(60.0, gt=0)  # how often the driver prints (and logs) the sweep's progress
    # Ctrl-C, SIGTERM (a Slurm time limit, a preemption) or `ray job stop`: how long the running trials are given to
    # checkpoint at their current step before Tune stops them (cluster/slurm.sbatch's signal lead allows for it)
    stop_grace_s: float = _num(60.0, gt=0, le=3600)
    # a running trial whose step has not moved for this long (and for 5 times the longest wait between its
    # earlier moves) gets one warning line: a frozen, swapped-out or hung worker; 0: off
    stall_warning_s: float = _num(600.0, ge=0)
    # MLflow's system metrics on every trial run (CPU, memory; GPU utilisation, memory, power with aot-ray[gpu]),
    # sampled and logged every this many seconds; 0: off
    system_metrics_s: float = _num(30.0, ge=0)
    # how long the driver goes on while its tracking store refuses every write before it stops the sweep (its
    # lease on the sweep expires 90 s after its last renewal, and its trials get 25 s of that to checkpoint and
    # stop, so at most 65)
    tracking_patience_s: float = _num(60.0, gt=0, le=65)


# ---------------------------------------------------------------- sweep / grid / trial


@dataclass(frozen=True, kw_only=True)
class Grid:
    """Axes that multiply. `overrides` holds dotted axes such as `optim.lr` or `data.k`, in YAML order."""

    dataset: tuple[str, ...]
    model: tuple[str, ...]
    # empty: each trial's context is its dataset's line (the only choice for a synthetic set windowed by line)
    context_length: tuple[int, ...] = ()
    # the order axis (YAML: `direction` or `order`): forward, backward, any order of spec.orders, or a custom one
    direction: tuple[str, ...] = DIRECTIONS
    seed: tuple[int, ...] = (0,)
    order_seed: tuple[int, ...] = (0,)  # the draws of a random order (uniform_random, random_chunk); others: one
    language: tuple[str, ...] = ()
    overrides: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True, kw_only=True)
class LrSearchSpec:
    """An optional first phase: per model preset, Optuna (through Ray Tune's OptunaSearch) searches the learning
    rate on the grid's first dataset, language, context length and seed, `trials` short runs of `steps` steps
    with lr log-uniform in [low, high]; the objective is the mean final validation loss over `directions`. The best
    lr then replaces optim.lr for every trial of that preset, in both directions, so the comparison stays fair."""

    trials: int = _num(8, ge=2)
    low: float = _num(1e-4, gt=0)
    high: float = _num(1e-2, gt=0)
    steps: Optional[int] = _num(None, gt=0)
    directions: tuple[Direction, ...] = ("forward",)
    seed: int = _num(0, ge=0)


@dataclass(frozen=True, kw_only=True)
class OrdersSpec:
    """Settings of the token orders (`spec.orders`): random_chunk's chunk, and custom orders by name, each a
    permutation of 0..T-1 (a list, or the path of a file of whitespace-separated positions)."""

    chunk: int = _num(8, gt=0)
    custom: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    name: str
    description: str = ""
    data: dict[str, DatasetSpec]
    defaults: Defaults = field(default_factory=Defaults)
    grid: Grid
    run: RunSpec = field(default_factory=RunSpec)
    # preset -> section -> field -> value: settings that follow the model size (GPU share, batch size, lr)
    per_model: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lr_search: Optional[LrSearchSpec] = None
    orders: OrdersSpec = field(default_factory=OrdersSpec)
    # add a control cell per dataset (and language), on the grid's first model and context, every seed: for
    # synthetic data a linear language with A = I (no arrow by construction: the noise floor), for text the same
    # corpus with the reversed-characters tokenizer
    null_controls: bool = False


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """One training run: a cell of the grid in one direction. Everything a trainer needs, nothing about Ray."""

    sweep: str
    trial_id: str
    pair_key: str
    cell_key: str
    direction: str
    dataset: str
    data: DatasetSpec
    model: ModelSpec
    optim: OptimSpec
    train: TrainSpec
    context_length: int
    seed: int
    resources: ResourcesSpec
    language: Optional[str] = None
    axes: tuple[tuple[str, Any], ...] = ()
    order_seed: int = 0  # a random order's draw (spec.orders); 0 for the others
    order_chunk: int = 8  # random_chunk's chunk
    custom_order: tuple[int, ...] = ()  # a custom order's permutation; () for a named one

    @property
    def joint(self) -> bool:
        """One model trained on both directions (`orders.JOINT`)."""
        return self.direction == orders.JOINT

    def permutation(self) -> Any:
        """The positions of a window in the order this trial feeds them (numpy), None for forward (no gather) and
        for the joint model (whose windows alternate forward and backward)."""
        if self.direction == "forward" or self.joint:
            return None
        return orders.permutation(self.direction, self.context_length, self.order_seed, self.order_chunk,
                                  self.custom_order or None)

    def per_worker_batch(self, workers: int | None = None) -> int:
        """Windows each data-parallel worker takes per optimizer step: the global batch over the workers (the
        one rule: the loader's check, the micro-batch resolution, the memory check's refusal)."""
        return self.train.batch_size * self.train.grad_accum // (workers or self.resources.workers)

    @property
    def stride(self) -> int:
        return self.train.stride or self.context_length

    @property
    def windows(self) -> str:
        """How the trial's windows are cut: `line` (one example per window, BOS first: a synthetic set as the
        authors trained it) or `stream` (windows over the concatenated lines or documents, at any offset)."""
        return "line" if by_line(self.data) else "stream"

