"""`tfbrain presets` lists what the registry holds; bad input is one line, exit 2."""

import json

from tfbrain.cli import main
from tfbrain.models.registry import families


def test_presets_lists_every_family_variant_and_task(capsys):
    assert main(["presets", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    listed = {f["name"]: f for f in info["families"]}
    assert set(listed) == set(families())
    swift = {v["name"]: v for v in listed["swift"]["variants"]}
    assert swift["swift_paper"]["parameters"] == 4_314_636  # the paper's count
    assert swift["swift_paper"]["input_shape"] == [96, 96, 96, 20, 1]
    assert {"classification", "regression", "contrastive", "mae"} <= set(info["task_types"])
    preset = next(p for p in info["presets"] if p["name"] == "swift.hcp-sex")
    assert preset["local_path"] is None and "tfbrain convert swift" in preset["how_to_make"]


def test_presets_table(capsys):
    assert main(["presets", "--family", "neurostorm", "--no-count"]) == 0
    out = capsys.readouterr().out
    assert "neurostorm_tiny" in out and "task types" in out and "to make it" in out


def test_bad_input_is_one_line_exit_2(capsys, tmp_path):
    assert main(["convert", "nope", "--state-dict", str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model family or converter 'nope'" in err[0] and "swift" in err[0]
    assert main(["convert", "swift", "--state-dict", str(tmp_path / "missing.npz"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "missing.npz" in capsys.readouterr().err
