"""Preset folders: the file format and name resolution. Nothing is downloaded, and no model
is imported here (building a model from a preset is `tfbrain.models.loading.load_preset`).

A preset handle is either a folder path or a registered name such as "swift.hcp-sex".
Named presets are looked up, in order, under:
  1. $TFBRAIN_PRESETS (a folder; several separated by os.pathsep),
  2. ~/.cache/tfbrain/presets,
as `<root>/<name>/`. Each family registers its names (through the model registry) with
the instructions to produce each (usually a `tfbrain convert` command line).
"""

import datetime
import json
import os
import pathlib

import keras

from tfbrain.atomic import atomic_folder
from tfbrain.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"

DEFAULT_CACHE = pathlib.Path("~/.cache/tfbrain/presets").expanduser()
_REGISTRY: dict[str, dict] = {}


def register_presets(presets: dict[str, dict]) -> None:
    """Register named presets: {name: {"description": ..., "how_to_make": ...}}."""
    _REGISTRY.update(presets)


def registered_presets() -> dict[str, dict]:
    """Names registered so far (the families register theirs when `tfbrain.models` is
    imported; `tfbrain.list_presets()` imports them first)."""
    return dict(_REGISTRY)


def preset_roots() -> list[pathlib.Path]:
    roots = [pathlib.Path(p).expanduser() for p in
             os.environ.get("TFBRAIN_PRESETS", "").split(os.pathsep) if p]
    return roots + [DEFAULT_CACHE]


def resolve_preset(preset) -> pathlib.Path:
    """Return the folder of a preset path or name, or raise with how to make it."""
    path = pathlib.Path(str(preset)).expanduser()
    if path.is_dir():
        _check_folder(path)
        return path
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
    known = ", ".join(sorted(_REGISTRY)) or "none registered"
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


def read_preset_config(preset) -> tuple[pathlib.Path, dict]:
    """(folder, parsed config.json) of a preset path or name."""
    folder = resolve_preset(preset)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(f"{folder / CONFIG_FILE}: expected an object with 'class_name' and "
                         "'config'")
    return folder, config


def instantiate_preset(folder: pathlib.Path, config: dict, load_weights: bool = True,
                       **config_overrides) -> keras.Model:
    """Build the registered class `config` names and load the folder's weights. The class
    must already be registered with Keras (import its module first)."""
    cls = keras.saving.get_registered_object(config.get("class_name", ""))
    if cls is None:
        raise ValueError(f"{folder / CONFIG_FILE}: unknown class_name {config.get('class_name')!r}")
    model = cls.from_config({**config["config"], **config_overrides})
    if load_weights:
        model.load_weights(str(folder / WEIGHTS_FILE))
    return model


def save_preset(model: keras.Model, preset_dir, extra_metadata: dict | None = None) -> pathlib.Path:
    """Save any registered Keras model as a preset folder (written aside, then renamed)."""
    preset_dir = pathlib.Path(preset_dir)
    config = {"class_name": keras.saving.get_registered_name(type(model)),
              "config": model.get_config()}
    with atomic_folder(preset_dir) as tmp_dir:
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        model.save_weights(str(tmp_dir / WEIGHTS_FILE))
        inputs = {}
        for t in model.inputs:
            inputs[t.name.split(":")[0]] = {"shape": [None] + list(t.shape[1:]), "dtype": str(t.dtype)}
        metadata = {
            "tfbrain_version": __version__,
            "keras_version": keras.__version__,
            "parameter_count": int(model.count_params()),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "class_name": config["class_name"],
            "inputs": inputs,
        }
        if hasattr(model, "task_metadata"):
            metadata["task"] = model.task_metadata()
        metadata.update(extra_metadata or {})
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    return preset_dir


def resolve_run_folder(path) -> tuple[pathlib.Path, str | None]:
    """A model folder from what a user passes as `--model`: a preset folder as is, or a
    training run folder -> its `best/`, else its `final/` (with a note saying why)."""
    path = pathlib.Path(str(path)).expanduser()
    # a run folder has a config.json too (the training config): look for best/ and final/
    # before taking a folder with a config.json for a preset
    is_run = (path / "best" / CONFIG_FILE).exists() or (path / "final" / CONFIG_FILE).exists()
    if (path / CONFIG_FILE).exists() and not is_run or not path.is_dir():
        return path, None
    if (path / "best" / CONFIG_FILE).exists():
        return path / "best", None
    if (path / "final" / CONFIG_FILE).exists():
        return path / "final", (f"{path} has no best/ (no validation split, or no finite "
                                "validation metric); using final/, the model after the last step")
    raise FileNotFoundError(f"{path} is neither a preset folder nor a training run folder with "
                            "best/ or final/ (is the run finished?)")
