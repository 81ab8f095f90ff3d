"""Resolve preset names to local folders and load them. Nothing is downloaded.

A preset handle is either a folder path or a registered name such as "swift.hcp-sex".
Named presets are looked up, in order, under:
  1. $TFBRAIN_PRESETS (a folder; several separated by os.pathsep),
  2. ~/.cache/tfbrain/presets,
as `<root>/<name>/`. Each family registers its names with `register_presets`, giving
for each the instructions to produce it (usually a `tfbrain convert` command line).
"""

import json
import os
import pathlib

import keras

from tfbrain.models.backbone import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE

DEFAULT_CACHE = pathlib.Path("~/.cache/tfbrain/presets").expanduser()
_REGISTRY: dict[str, dict] = {}


def register_presets(presets: dict[str, dict]) -> None:
    """Register named presets: {name: {"description": ..., "how_to_make": ...}}."""
    _REGISTRY.update(presets)


def list_presets() -> dict[str, dict]:
    _import_families()
    return dict(_REGISTRY)


def preset_roots() -> list[pathlib.Path]:
    roots = [pathlib.Path(p).expanduser() for p in
             os.environ.get("TFBRAIN_PRESETS", "").split(os.pathsep) if p]
    return roots + [DEFAULT_CACHE]


def _import_families():
    # Families register their preset names on import.
    import tfbrain.models  # noqa: F401


def resolve_preset(preset) -> pathlib.Path:
    """Return the folder of a preset path or name, or raise with how to make it."""
    path = pathlib.Path(str(preset)).expanduser()
    if path.is_dir():
        _check_folder(path)
        return path
    _import_families()
    for root in preset_roots():
        candidate = root / str(preset)
        if candidate.is_dir():
            _check_folder(candidate)
            return candidate
    searched = ", ".join(str(r) for r in preset_roots())
    if str(preset) in _REGISTRY:
        info = _REGISTRY[str(preset)]
        raise FileNotFoundError(
            f"Preset {preset!r} ({info.get('description', '')}) is not on this machine; "
            f"searched {searched} (set TFBRAIN_PRESETS to add a folder). tfbrain never downloads "
            f"weights. To make it: {info['how_to_make']}")
    known = ", ".join(sorted(_REGISTRY)) or "none"
    raise FileNotFoundError(
        f"Preset {preset!r} is neither a folder nor a known preset name. Known names: {known}. "
        f"Searched {searched}.")


def _check_folder(path: pathlib.Path) -> None:
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"Preset folder {path} is missing {', '.join(missing)}.")


def load_preset_metadata(preset) -> dict:
    path = resolve_preset(preset) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_preset(preset, load_weights: bool = True, **config_overrides) -> keras.Model:
    """Build the model described by a preset's config.json and load its weights."""
    folder = resolve_preset(preset)
    _import_families()
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {err}") from err
    cls = keras.saving.get_registered_object(config.get("class_name", ""))
    if cls is None:
        raise ValueError(f"{folder / CONFIG_FILE}: unknown class_name {config.get('class_name')!r}")
    model = cls.from_config({**config["config"], **config_overrides})
    if load_weights:
        model.load_weights(str(folder / WEIGHTS_FILE))
    return model
