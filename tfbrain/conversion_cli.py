"""`tfbrain convert FAMILY --state-dict FILE --out DIR`: upstream weights -> preset folder.

FILE may be a .npz of torch-named arrays, a .safetensors, or (with the `torch` extra)
a PyTorch Lightning .ckpt (backbone under `model.`, head under `output_head.`; its
hyperparameters are used when --upstream-kwargs is not given).
"""

import argparse
import datetime
import hashlib
import json
import pathlib

# family -> (upstream repo, commit the port follows)
UPSTREAM = {
    "swift": ("Transconnectome/SwiFT", "0b07cb156d77a7de33078c8f6fe3ddffa7b5ae9c"),
    "neurostorm": ("CUHK-AIM-Group/NeuroSTORM", "a8dc38f665b104fc7559404def44695c332b47b4"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", choices=sorted(UPSTREAM), help="model family")
    parser.add_argument("--state-dict", required=True, type=pathlib.Path,
                        help="upstream weights: .npz, .safetensors or .ckpt/.pt")
    parser.add_argument("--upstream-kwargs", type=pathlib.Path,
                        help="JSON of the upstream constructor kwargs (a fixture's *_config.json "
                             "with a 'constructor_kwargs' key also works); default: the "
                             "hyperparameters stored in a Lightning .ckpt")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="preset folder to write")
    parser.add_argument("--task", choices=("classification", "regression", "contrastive"),
                        help="force the task of the head (default: inferred from its keys)")


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_upstream_kwargs(path: pathlib.Path | None, hparams: dict, weights: pathlib.Path) -> dict:
    if path is None:
        if not hparams:
            raise ValueError(f"{weights} carries no hyperparameters; pass --upstream-kwargs "
                             "with the upstream constructor kwargs as JSON")
        return hparams
    try:
        kwargs = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--upstream-kwargs {path}: not a readable JSON file ({err})") from err
    return kwargs.get("constructor_kwargs", kwargs)


def convert(family: str, state_dict_path, out_dir, upstream_kwargs_path=None, task=None):
    """Convert and write the preset; returns the Keras model."""
    from tfbrain.checkpoints import read_state_dict
    from tfbrain.models.backbone import save_preset
    from tfbrain.models.neurostorm.neurostorm_conversion import convert_neurostorm
    from tfbrain.models.swift.swift_conversion import convert_swift
    from tfbrain.version import __version__

    state_dict_path = pathlib.Path(state_dict_path)
    state_dict, hparams = read_state_dict(state_dict_path)
    kwargs = load_upstream_kwargs(upstream_kwargs_path, hparams, state_dict_path)
    converters = {"swift": convert_swift, "neurostorm": convert_neurostorm}
    model = converters[family](state_dict, kwargs, task=task)
    repo, commit = UPSTREAM[family]
    save_preset(model, out_dir, extra_metadata={
        "source": {"file": state_dict_path.name, "sha256": _sha256(state_dict_path),
                   "upstream_repo": repo, "upstream_commit": commit,
                   "upstream_kwargs": kwargs},
        "conversion_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "converted_by": f"tfbrain {__version__}",
    })
    return model


def run(args: argparse.Namespace) -> int:
    model = convert(args.family, args.state_dict, args.out, args.upstream_kwargs, args.task)
    print(f"wrote {type(model).__name__} preset ({model.count_params():,} parameters) to {args.out}")
    return 0
