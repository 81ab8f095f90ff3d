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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", help="model family (or a named converter of one, e.g. "
                                       "matcha_decoder); `tfbrain presets` lists them")
    parser.add_argument("--state-dict", required=True, type=pathlib.Path, action="append",
                        help="upstream weights: .npz, .safetensors or .ckpt/.pt; repeat it for "
                             "a model saved in several files (merged; a key in two is an error)")
    parser.add_argument("--upstream-kwargs", type=pathlib.Path,
                        help="JSON of the upstream constructor kwargs (a fixture's *_config.json "
                             "with a 'constructor_kwargs' key also works); default: the "
                             "hyperparameters stored in a Lightning .ckpt")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="preset folder to write")
    parser.add_argument("--task", help="force the task type of the head where its keys are "
                                       "ambiguous (default: inferred; `tfbrain presets` lists "
                                       "task types)")


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
    from tfbrain.models.registry import get_converter
    from tfbrain.presets import save_preset
    from tfbrain.version import __version__

    spec, converter = get_converter(family)
    paths = [pathlib.Path(p) for p in (state_dict_path if isinstance(state_dict_path, (list, tuple))
                                       else [state_dict_path])]
    state_dict, hparams = {}, {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"--state-dict {path}: no such file")
        part, part_hparams = read_state_dict(path)
        clash = sorted(set(state_dict) & set(part))
        if clash:
            raise ValueError(f"--state-dict {path}: keys {clash[:5]} are also in an earlier file")
        state_dict.update(part)
        hparams = hparams or part_hparams
    kwargs = load_upstream_kwargs(upstream_kwargs_path, hparams, paths[0])
    model = converter(state_dict, kwargs, task=task)
    save_preset(model, out_dir, extra_metadata={
        "source": {**({"file": paths[0].name, "sha256": _sha256(paths[0])} if len(paths) == 1 else
                      {"files": [p.name for p in paths], "sha256": [_sha256(p) for p in paths]}),
                   "family": spec.name, "upstream_repo": spec.upstream.repo,
                   "upstream_commit": spec.upstream.commit, "upstream_kwargs": kwargs},
        "conversion_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "converted_by": f"tfbrain {__version__}",
    })
    return model


def run(args: argparse.Namespace) -> int:
    model = convert(args.family, args.state_dict, args.out, args.upstream_kwargs, args.task)
    print(f"wrote {type(model).__name__} preset ({model.count_params():,} parameters) to {args.out}")
    return 0
