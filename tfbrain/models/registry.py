"""The model registry: every family registers here once, and the rest of tfbrain (trainer,
evaluation, attribution, export, CLI) finds it by name without naming it.

A family's `__init__.py` calls `register_family(FamilySpec(...))` with:
  name            "swift"
  backbone_class  the `Backbone` subclass
  variants        {variant name: constructor kwargs}; `default_variant` names one
  input_kind      "fmri_window" ((B, D, H, W, T, C) windows from `tfrecords_tools.windows`) or
                  "feature_streams" (a dict of per-TR stimulus features, flow encoder)
  converter       callable(state_dict, upstream_kwargs, task=None) -> Keras model, or None
  upstream        UpstreamInfo(repo, commit)
  presets         {preset name: {"description", "how_to_make"}} (names resolved by
                  `tfbrain.presets`; nothing is downloaded)

This module imports no TensorFlow; `tfbrain.models` imports the families, which register.
"""

import dataclasses
import importlib
from typing import Any, Callable

INPUT_KINDS = ("fmri_window", "feature_streams")
# what a training config with neither `[model] family` nor `variant` builds (the first
# wave's only model; kept so that those configs keep working)
LEGACY_DEFAULT_VARIANT = "swift_small"
DEFAULT_TASK_TYPE = "classification"  # `[task] type` when a config leaves it out


@dataclasses.dataclass(frozen=True)
class UpstreamInfo:
    """Where the ported code comes from: repository and the commit the port follows."""

    repo: str
    commit: str
    paper: str = ""


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    name: str
    backbone_class: type
    variants: dict
    default_variant: str
    input_kind: str
    upstream: UpstreamInfo
    converter: Callable[..., Any] | None = None
    presets: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    # a variant small enough for unit tests on 2 CPU cores (the registry contract tests
    # build, train, export and serve it)
    tiny_variant: str | None = None
    # the task type a bare `tfbrain train --set model.family=...` and the contract tests use
    default_task: str = "classification"
    # further converters by name, for families whose upstream code has several modules
    # (`tfbrain convert NAME` looks up family names first, then these)
    converters: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"FamilySpec {self.name!r}: `input_kind` must be one of "
                             f"{INPUT_KINDS}. Received: input_kind={self.input_kind!r}")
        for field in ("default_variant", "tiny_variant"):
            value = getattr(self, field)
            if value is not None and value not in self.variants:
                raise ValueError(f"FamilySpec {self.name!r}: {field} {value!r} is not among "
                                 f"{sorted(self.variants)}")


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Register a family (idempotent for the same spec; a second, different one is an error)."""
    known = _FAMILIES.get(spec.name)
    if known is not None and known.backbone_class is not spec.backbone_class:
        raise ValueError(f"family {spec.name!r} is already registered with "
                         f"{known.backbone_class.__name__}")
    for other in _FAMILIES.values():
        clash = set(other.variants) & set(spec.variants)
        if other.name != spec.name and clash:
            raise ValueError(f"variant names {sorted(clash)} of {spec.name!r} are already "
                             f"used by {other.name!r}")
    _FAMILIES[spec.name] = spec
    from tfbrain.presets import register_presets  # file format + names only; no model

    register_presets(spec.presets)
    return spec


def unregister_family(name: str) -> FamilySpec | None:
    """Remove a family (tests use this to check that the contract tests notice)."""
    return _FAMILIES.pop(name, None)


def _import_families() -> None:
    importlib.import_module("tfbrain.models")


def families() -> dict[str, FamilySpec]:
    """Every registered family by name."""
    _import_families()
    return dict(_FAMILIES)


def get_family(name: str) -> FamilySpec:
    """The family called `name`, or an error listing the known ones."""
    _import_families()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def resolve_variant(family_or_variant: str) -> tuple[FamilySpec, str]:
    """A family name (its default variant) or a variant name -> (family, variant)."""
    _import_families()
    if family_or_variant in _FAMILIES:
        spec = _FAMILIES[family_or_variant]
        return spec, spec.default_variant
    for spec in _FAMILIES.values():
        if family_or_variant in spec.variants:
            return spec, family_or_variant
    known = sorted(v for s in _FAMILIES.values() for v in s.variants)
    raise ValueError(f"unknown model {family_or_variant!r}; known families: {sorted(_FAMILIES)}, "
                     f"known variants: {known}")


def family_of_backbone_class(backbone_class) -> FamilySpec:
    """The registered family whose backbone class `backbone_class` is (or derives from)."""
    _import_families()
    for spec in _FAMILIES.values():
        if isinstance(backbone_class, type) and issubclass(backbone_class, spec.backbone_class):
            return spec
    name = getattr(backbone_class, "__name__", backbone_class)
    raise ValueError(f"{name} belongs to no registered family")


def family_of_backbone(backbone) -> FamilySpec:
    """The registered family whose backbone class `backbone` is an instance of."""
    return family_of_backbone_class(type(backbone))


def get_converter(name: str):
    """(family, converter) for `tfbrain convert NAME`: a family's own converter, or a named
    extra one (e.g. the flow encoder's "matcha_decoder")."""
    _import_families()
    if name in _FAMILIES and _FAMILIES[name].converter is not None:
        return _FAMILIES[name], _FAMILIES[name].converter
    for spec in _FAMILIES.values():
        if name in spec.converters:
            return spec, spec.converters[name]
    known = sorted([n for n, s in _FAMILIES.items() if s.converter is not None]
                   + [c for s in _FAMILIES.values() for c in s.converters])
    raise ValueError(f"unknown model family or converter {name!r}; known: {known}")


def create_backbone(family_or_variant: str, variant: str | None = None, **overrides):
    """Build an untrained backbone: `create_backbone("swift")`, `create_backbone("swift_tiny")`,
    or `create_backbone("neurostorm", "neurostorm_paper", hidden_dim=24)`."""
    if variant is not None:
        spec = get_family(family_or_variant)
        if variant not in spec.variants:
            raise ValueError(f"unknown {spec.name} variant {variant!r}; known: "
                             f"{sorted(spec.variants)}")
    else:
        spec, variant = resolve_variant(family_or_variant)
    return spec.backbone_class(**{**spec.variants[variant], **overrides})


class FamilyEntryPoint:
    """Base of the per-family entry points (`SwiFT`, `NeuroSTORM`, ...): set `family`.

    `Family.from_pretrained(preset)` loads a converted preset (a name looked up under
    $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `Family.backbone(variant=None, **overrides)` builds an untrained variant (default: the
    family's default variant).
    """

    family: str = ""

    @classmethod
    def from_pretrained(cls, preset, load_weights=True, **config_overrides):
        from tfbrain.models.loading import load_preset

        return load_preset(preset, load_weights=load_weights, **config_overrides)

    @classmethod
    def backbone(cls, variant=None, **overrides):
        spec = get_family(cls.family)
        return create_backbone(cls.family, variant or spec.default_variant, **overrides)


# === Tasks ===
# Task classes register under the `[task] type` name that training configs use
# ("classification", "regression", "contrastive", "mae", ...).
_TASKS: dict[str, type] = {}


def register_task(task_type: str):
    """Class decorator: make a Task class available as `[task] type = task_type`."""

    def decorate(cls):
        _TASKS[task_type] = cls
        cls.task_type = task_type
        return cls

    return decorate


def get_task_class(task_type: str) -> type:
    _import_families()
    if task_type not in _TASKS:
        raise ValueError(f"unknown task type {task_type!r}; known: {sorted(_TASKS)}")
    return _TASKS[task_type]


def task_types() -> dict[str, type]:
    _import_families()
    return dict(_TASKS)
