"""Training configuration: plain dataclasses, read from TOML, every field checked.

A config file has the sections below; any field left out takes its default, and
an unknown section or field is an error (a typo must not silently train the wrong
thing). `docs/training.md` lists every field; `TrainConfig.from_toml(path)` reads one.
"""

import dataclasses
import math
import pathlib
import sys
import types
import typing
from typing import Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, released as `tomli` (declared for 3.10 in setup.cfg)
    import tomli as tomllib

from tfbrain.models.registry import DEFAULT_TASK_TYPE  # imports no TensorFlow


@dataclasses.dataclass
class DataConfig:
    dataset_dir: str = ""            # folder written by `tfbrain prepare`
    window: int = 20                 # frames per window (T)
    stride: int = 20                 # frames between training window starts
    eval_stride: int = 20            # frames between evaluation window starts
    batch_size: int = 4              # global batch (split across replicas)
    eval_batch_size: int = 4
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    splits_file: str = ""            # optional splits JSON instead of the dataset's splits.json
    time_split: list = dataclasses.field(default_factory=list)  # [train, val, test] fractions of
    #                                  every run in time, instead of splitting by subject
    shuffle_buffer: int = 16
    dtype: str = "float32"           # windows handed to the model: float32 | float16 (half the bytes
    #                                  on the host and over PCIe; the model casts on the accelerator)
    label_groups: dict = dataclasses.field(default_factory=dict)  # {"new": ["old", ...]}
    # augmentation of training windows (tfrecords_tools.augment; same for all frames of a
    # window), each applied with probability augment_probability; 0 turns one off
    noise_std: float = 0.0           # Gaussian noise, std drawn up to this
    max_shift: int = 0               # random spatial shift, voxels
    smoothing_sigma: float = 0.0     # Gaussian smoothing, sigma drawn up to this (voxels)
    augment_probability: float = 0.5


@dataclasses.dataclass
class ModelConfig:
    preset: str = ""                 # fine-tune from this preset (name or folder); else build
    family: str = ""                 # model family (`tfbrain presets` lists them); default: the
    #                                  variant's family
    variant: str = ""                # named variant (default: the family's default variant;
    #                                  with neither set, the registry's legacy default)
    backbone: dict = dataclasses.field(default_factory=dict)  # backbone constructor overrides
    head: str = "v1"                 # "v1" | "v2" (classification/regression)
    dropout_rate: float = 0.0        # on pooled features
    freeze_backbone: bool = False    # linear probe


@dataclasses.dataclass
class TaskConfig:
    type: str = DEFAULT_TASK_TYPE    # a registered task: classification | regression |
    #                                  contrastive | mae | ... (`tfbrain presets` lists them)
    temperature: float = 0.1         # NT-Xent
    embedding_dim: int = 128         # contrastive projection width
    balance_classes: bool = False    # weight training windows by 1 / class frequency
    options: dict = dataclasses.field(default_factory=dict)  # further task constructor
    #                                  arguments, e.g. {mask_ratio = 0.5} for mae


@dataclasses.dataclass
class OptimConfig:
    learning_rate: float = 5e-5      # peak learning rate
    weight_decay: float = 0.01       # AdamW
    epochs: int = 10
    steps_per_epoch: int = 0         # 0: one pass over the training windows
    warmup_fraction: float = 0.05    # linear warm-up from min_learning_rate, share of all steps
    restart_cycle: float = 0.0       # cosine cycle as a share of all steps (0: one cycle)
    restart_gamma: float = 0.5       # peak multiplier at each restart
    min_learning_rate: float = 1e-9
    clip_norm: float = 0.0           # global-norm gradient clipping (0: off; upstream 0.5)
    mixed_precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: Optional[bool] = None  # must be set: true (XLA) or false


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "runs/tfbrain"
    seed: int = 1
    monitor: str = ""                # default: val_subject_auroc | val_subject_mse | val_loss
    checkpoint_every_steps: int = 50  # resumable state (weights + optimizer + position)
    strategy: str = "default"        # default | mirrored | multi_worker
    stop_after_steps: int = 0        # testing aid: stop as if killed after this many steps


@dataclasses.dataclass
class TensorBoardConfig:
    enabled: bool = True
    weight_histograms: bool = True
    gradient_histograms: bool = True
    images: bool = True              # mid-slices of an input window
    embeddings: bool = True          # projector: subject embeddings at the end
    profile_steps: str = ""          # e.g. "5,8" to profile steps 5-8


@dataclasses.dataclass
class TrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    tensorboard: TensorBoardConfig = dataclasses.field(default_factory=TensorBoardConfig)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "TrainConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; known: {sorted(sections)}")
        built = {}
        for field in dataclasses.fields(cls):
            section_cls = field.default_factory
            values = raw.get(field.name, {})
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{field.name}] must be a table")
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise ValueError(f"{source}: unknown field(s) {bad} in [{field.name}]; "
                                 f"known: {sorted(known)}")
            for name, value in values.items():
                _check_type(source, field.name, name, known[name].type, value)
            built[field.name] = section_cls(**values)
        config = cls(**built)
        config.validate(source)
        return config

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        path = pathlib.Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"{path}: cannot read the TOML config ({err})") from err
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> None:
        def fail(message):
            raise ValueError(f"{source}: {message}")

        from tfbrain.models.registry import task_types

        known_tasks = task_types()
        if self.task.type not in known_tasks:
            fail(f"[task] type {self.task.type!r} is unknown; known: {sorted(known_tasks)}")
        if self.model.family or self.model.variant:
            from tfbrain.models.registry import get_family, resolve_variant

            try:
                if self.model.family:
                    spec = get_family(self.model.family)
                    if self.model.variant and self.model.variant not in spec.variants:
                        raise ValueError(f"unknown {spec.name} variant {self.model.variant!r}; "
                                         f"known: {sorted(spec.variants)}")
                else:
                    resolve_variant(self.model.variant)
            except ValueError as err:
                fail(f"[model] {err}")
        if self.optim.jit_compile is None:
            fail("[optim] jit_compile must be set explicitly to true or false (Keras' 'auto' "
                 "means off on CPU and on on GPU, so runs would differ between machines)")
        if self.optim.mixed_precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
            fail(f"[optim] mixed_precision must be float32, mixed_float16 or mixed_bfloat16; "
                 f"got {self.optim.mixed_precision!r}")
        if self.run.strategy not in ("default", "mirrored", "multi_worker"):
            fail(f"[run] strategy must be default, mirrored or multi_worker; got {self.run.strategy!r}")
        if not self.data.dataset_dir:
            fail("[data] dataset_dir is required")
        for name in ("window", "stride", "eval_stride", "batch_size", "eval_batch_size"):
            if getattr(self.data, name) < 1:
                fail(f"[data] {name} must be >= 1; got {getattr(self.data, name)}")
        if self.data.time_split:
            fractions = self.data.time_split
            if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) > 1 + 1e-9:
                fail(f"[data] time_split must be 3 non-negative fractions summing to <= 1; got {fractions}")
        if self.optim.epochs < 1:
            fail(f"[optim] epochs must be >= 1; got {self.optim.epochs}")
        optim = self.optim
        if not (math.isfinite(optim.learning_rate) and optim.learning_rate >= 0):  # 0: weights stay
            fail(f"[optim] learning_rate must be a finite number >= 0; got {optim.learning_rate}")
        for name in ("weight_decay", "min_learning_rate", "clip_norm", "restart_cycle"):
            value = getattr(optim, name)
            if not (math.isfinite(value) and value >= 0):
                fail(f"[optim] {name} must be a finite number >= 0; got {value}")
        if optim.min_learning_rate > optim.learning_rate:
            fail(f"[optim] min_learning_rate ({optim.min_learning_rate}) must not exceed learning_rate "
                 f"({optim.learning_rate})")
        if not (math.isfinite(optim.restart_gamma) and optim.restart_gamma > 0):
            fail(f"[optim] restart_gamma must be a finite number > 0; got {optim.restart_gamma}")
        if optim.steps_per_epoch < 0:
            fail(f"[optim] steps_per_epoch must be >= 0; got {optim.steps_per_epoch}")
        if not 0 <= self.model.dropout_rate < 1:
            fail(f"[model] dropout_rate must be in [0, 1); got {self.model.dropout_rate}")
        if not (math.isfinite(self.task.temperature) and self.task.temperature > 0):
            fail(f"[task] temperature must be a finite number > 0; got {self.task.temperature}")
        for name in ("noise_std", "smoothing_sigma", "max_shift", "shuffle_buffer"):
            value = getattr(self.data, name)
            if not (math.isfinite(value) and value >= 0):
                fail(f"[data] {name} must be a finite number >= 0; got {value}")
        if self.data.dtype not in ("float32", "float16"):
            fail(f"[data] dtype must be float32 or float16; got {self.data.dtype!r}")
        if not 0 <= self.data.augment_probability <= 1:
            fail(f"[data] augment_probability must be in [0, 1]; got {self.data.augment_probability}")
        if self.run.checkpoint_every_steps < 0 or self.run.stop_after_steps < 0:
            fail("[run] checkpoint_every_steps and stop_after_steps must be >= 0")
        if self.model.preset and self.model.backbone:
            fail(f"[model] backbone overrides {sorted(self.model.backbone)} apply only when building "
                 "from family/variant, not to a preset; remove them or [model] preset")
        if not 0 <= self.optim.warmup_fraction < 1:
            fail(f"[optim] warmup_fraction must be in [0, 1); got {self.optim.warmup_fraction}")

    def monitor(self) -> tuple[str, str]:
        """(metric name, "max"|"min") that picks the best checkpoint: `[run] monitor`, else
        the task's own choice."""
        if self.run.monitor:
            mode = "min" if any(k in self.run.monitor for k in ("loss", "mse", "mae")) else "max"
            return self.run.monitor, mode
        from tfbrain.models.registry import get_task_class

        return get_task_class(self.task.type).monitor

    def model_family_and_variant(self) -> tuple[str, str]:
        """(family, variant) to build when there is no preset; the old SwiFT-only form
        (`variant` alone, or nothing) keeps working."""
        from tfbrain.models.registry import LEGACY_DEFAULT_VARIANT, get_family, resolve_variant

        if self.model.family:
            spec = get_family(self.model.family)
            return spec.name, self.model.variant or spec.default_variant
        spec, variant = resolve_variant(self.model.variant or LEGACY_DEFAULT_VARIANT)
        return spec.name, variant


def _type_name(expected) -> str:
    return {bool: "a boolean (true/false, unquoted)", int: "an integer", float: "a number",
            str: "a string", dict: "a table", list: "an array"}.get(expected, str(expected))


def _check_type(source: str, section: str, name: str, expected, value) -> None:
    """TOML values must have the field's type: a quoted "false" is not a boolean, a
    string is not a number (bool is no int here, though Python says so)."""
    optional = typing.get_origin(expected) in (typing.Union, types.UnionType)
    if optional:
        args = [a for a in typing.get_args(expected) if a is not type(None)]
        if value is None:
            return
        expected = args[0] if len(args) == 1 else expected
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected in (str, dict, list):
        ok = isinstance(value, expected)
    else:
        return
    if not ok:
        raise ValueError(f"{source}: [{section}] {name} must be {_type_name(expected)}; "
                         f"got {value!r} ({type(value).__name__})")


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides=()) -> dict:
    """`section.field=value` overrides (TOML values; `a.b.c=v` sets nested tables)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set expects section.field=value; got {item!r}")
        *path, field = key.split(".")
        table = raw
        for part in path:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a table")
        table[field] = _parse_value(value)
    return raw


def load_config(path, overrides=()) -> "TrainConfig":
    """A TrainConfig from a TOML file plus `section.field=value` overrides."""
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read the TOML config ({err})") from err
    return TrainConfig.from_dict(apply_overrides(raw, overrides), source=str(path))
