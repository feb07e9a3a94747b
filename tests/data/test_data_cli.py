"""`edge-vlm data synth` and `edge-vlm data validate` in a fresh interpreter."""

from __future__ import annotations

import json


def test_synth_writes_a_world(cli, tmp_path):
    out = tmp_path / "world"
    result = cli("data", "synth", "--out", str(out), "--seed", "3", "--train", "10", "--eval", "14",
                 "--image-size", "96", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "14 eval questions" in result.stdout
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["seed"] == 3 and manifest["image_size"] == 96
    assert manifest["counts"]["train_images"] == 10 and manifest["counts"]["eval"] == 14
    assert "data synth" in manifest["command"] and "--seed 3" in manifest["command"]
    for name in ("pretrain.json", "finetune.json", "sft.json", "eval.json"):
        assert json.loads((out / name).read_text())
    with_image = json.loads((out / "eval.json").read_text())[0]["image"]
    assert (out / with_image).is_file()
    assert manifest["extra_questions"] == 0 and manifest["caption_counts"] is False


def test_synth_passes_the_teaching_aids(cli, tmp_path):
    out = tmp_path / "world"
    result = cli("data", "synth", "--out", str(out), "--train", "4", "--eval", "7", "--image-size", "64",
                 "--extra-questions", "2", "--caption-counts", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["extra_questions"] == 2 and manifest["caption_counts"] is True
    assert "--extra-questions 2" in manifest["command"] and "--caption-counts" in manifest["command"]
    assert all("Circles: " in r["conversations"][1]["value"] for r in json.loads((out / "pretrain.json").read_text()))


def test_synth_refuses_a_file_and_a_full_directory(cli, tmp_path):
    a_file = tmp_path / "world.txt"
    a_file.write_text("not a directory")
    result = cli("data", "synth", "--out", str(a_file), "--train", "2", "--eval", "1", "--quiet")
    assert result.returncode == 2
    assert f"--out {a_file} is a file" in result.stderr and "Traceback" not in result.stderr
    assert a_file.read_text() == "not a directory"
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    result = cli("data", "synth", "--out", str(full), "--train", "2", "--eval", "1", "--quiet")
    assert result.returncode == 2 and "--force" in result.stderr


def test_validate_reports_and_sets_the_exit_status(cli, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([
        {"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "lost", "image": "gone.png",
         "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
    ]))
    result = cli("data", "validate", str(path))
    assert result.returncode == 2
    assert "missing_image: 1" in result.stdout and "lost" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "missing_image 1 [lost]" in result.stderr
    result = cli("data", "validate", str(tmp_path / "none.json"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_validate_decodes_every_picture_and_names_each_bad_one(cli, tmp_path):
    from tests.data.pictures import photo, write_damaged

    damaged = write_damaged(tmp_path / "images")
    photo().save(tmp_path / "images" / "fine.png")
    records = [{"id": kind, "image": f"images/{path.name}",
                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
               for kind, path in {**damaged, "fine": tmp_path / "images" / "fine.png"}.items()]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    result = cli("data", "validate", str(path))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "bad_image 5" in result.stderr
    assert "1 kept, 5 with problems" in result.stdout
    for kind, file in damaged.items():
        assert f"    {kind}: " in result.stdout and str(file) in result.stdout
    # --no-decode checks the files only: the empty one is still found, the others need decoding
    quick = cli("data", "validate", str(path), "--no-decode")
    assert quick.returncode == 2 and "bad_image 1 [empty]" in quick.stderr
    assert "pictures not decoded" in quick.stdout
