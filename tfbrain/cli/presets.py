"""`tfbrain presets`: what can be built, trained and converted here.

Lists every registered family (input kind, upstream, converter), its variants with
parameter counts and input shapes, the task types `[task] type` accepts, and the named
presets with whether each is on this machine and how to make it. Parameter counts are
computed by building each variant (a few seconds for the full-size ones); `--no-count`
skips that.
"""

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family")
    parser.add_argument("--no-count", action="store_true",
                        help="do not build variants to count their parameters")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def describe(family: str | None = None, count: bool = True) -> dict:
    from tfbrain.models.registry import families, get_family, task_types
    from tfbrain.presets import resolve_preset

    specs = [get_family(family)] if family else list(families().values())
    out = {"families": [], "task_types": sorted(task_types()), "presets": []}
    for spec in specs:
        variants = []
        for name, kwargs in spec.variants.items():
            row = {"name": name, "default": name == spec.default_variant,
                   "input_shape": list(kwargs.get("volume_shape", ()))}
            if count:
                backbone = spec.backbone_class(**kwargs)
                row["parameters"] = int(backbone.count_params())
                row["input_shape"] = [list(t.shape[1:]) for t in backbone.inputs]
                if len(row["input_shape"]) == 1:
                    row["input_shape"] = row["input_shape"][0]
            variants.append(row)
        out["families"].append({
            "name": spec.name, "description": spec.description, "input_kind": spec.input_kind,
            "upstream": f"{spec.upstream.repo}@{spec.upstream.commit[:7]}",
            "converter": spec.converter is not None, "default_task": spec.default_task,
            "variants": variants})
        for name, info in spec.presets.items():
            try:
                where = str(resolve_preset(name))
            except FileNotFoundError:
                where = None
            out["presets"].append({"name": name, "family": spec.name,
                                   "description": info.get("description", ""),
                                   "local_path": where, "how_to_make": info.get("how_to_make", "")})
    return out


def run(args: argparse.Namespace) -> int:
    info = describe(args.family, count=not args.no_count)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max([len(v["name"]) for f in info["families"] for v in f["variants"]] + [8]) + 2
    for family in info["families"]:
        print(f"{family['name']}: {family['description']}")
        print(f"  input kind {family['input_kind']}, upstream {family['upstream']}, "
              f"converter {'yes' if family['converter'] else 'no'}, default task "
              f"{family['default_task']}")
        for v in family["variants"]:
            params = f"{v['parameters']:>13,} params  " if "parameters" in v else ""
            shape = v["input_shape"]
            shape = (f"input {tuple(shape) if not shape or not isinstance(shape[0], list) else shape}"
                     if shape else f"input from the dataset ({family['input_kind']})")
            mark = "  (default)" if v["default"] else ""
            print(f"    {v['name']:<{width}}{params}{shape}{mark}")
    print(f"\ntask types ([task] type): {', '.join(info['task_types'])}")
    if info["presets"]:
        print("\nnamed presets:")
        for p in info["presets"]:
            state = f"present at {p['local_path']}" if p["local_path"] else "not on this machine"
            print(f"  {p['name']}: {state}; {p['description']}")
            if not p["local_path"]:
                print(f"      to make it: {p['how_to_make']}")
    return 0
