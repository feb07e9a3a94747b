"""Readers on small files in the distributed layouts: the exact prompts of docs/evaluation.md, images found, ids kept."""

from __future__ import annotations

import pytest
from PIL import Image

from edge_vlm.errors import EdgeVLMError
from edge_vlm.eval.benchmarks import BENCHMARKS, get_benchmark
from tests.eval import layouts
from tests.eval.layouts import MC, SUFFIX

UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def test_every_benchmark_of_the_brief_is_registered():
    assert set(BENCHMARKS) == {"sqa", "pope", "mme", "vqav2", "gqa", "textvqa", "vizwiz", "mmbench", "mmvet", "synth"}


def test_sqa_prompts_and_image_subset(tmp_path):
    ds = get_benchmark("sqa").load(layouts.sqa(tmp_path))
    by_id = {item.question_id: item for item in ds.items}
    assert by_id["11"].prompt == f"Context: N/A\nWhich animal is a mammal?\nA. dog\nB. trout\n{MC}"
    # model_vqa_science records "<image>\n" in front for image questions (eval_science_qa.py's IMG test)
    assert by_id["11"].record_prompt == f"<image>\n{by_id['11'].prompt}"
    assert by_id["11"].image.path == tmp_path / "images/test/11/image.png"
    assert by_id["12"].image is None and by_id["12"].record_prompt == by_id["12"].prompt
    assert get_benchmark("sqa").aspect == "square"  # LP skips the padding for ScienceQA


def test_pope_adds_the_suffix_and_keeps_splits(tmp_path):
    ds = get_benchmark("pope").load(layouts.pope(tmp_path))
    assert [item.question_id for item in ds.items] == [1, 2, 3, 4, 5, 6]
    assert ds.items[0].prompt == f"Is there a dog in the image?\n{SUFFIX}"
    assert ds.items[0].image.path == tmp_path / "val2014/COCO_val2014_000000000001.jpg"
    assert ds.items[0].image.key == ds.items[1].image.key != ds.items[2].image.key
    assert [item.meta["record"]["category"] for item in ds.items] == ["adversarial"] * 4 + ["random"] * 2


def test_benchmark_folder_found_under_llava_eval_root(tmp_path):
    layouts.pope(tmp_path / "pope")
    layouts.mme(tmp_path / "MME")
    assert get_benchmark("pope").load(tmp_path).root == tmp_path / "pope"
    assert get_benchmark("mme").load(tmp_path).root == tmp_path / "MME"


def test_mme_suffix_kept_once_and_images_in_both_release_layouts(tmp_path):
    ds = get_benchmark("mme").load(layouts.mme(tmp_path))
    assert ds.items[0].prompt == f"Is there a train in this image?\n{SUFFIX}"  # not doubled
    assert ds.items[2].image.path == tmp_path / "MME_Benchmark_release_version/artwork/images/10002.jpg"
    assert ds.items[2].meta["category"] == "artwork" and ds.items[2].meta["txt"] == "10002.txt"


def test_vqav2_textvqa_gqa_vizwiz_mmvet_prompts(tmp_path):
    vqa = get_benchmark("vqav2").load(layouts.vqav2(tmp_path / "vqav2"))
    assert vqa.question_file.name == "llava_vqav2_mscoco_test-dev2015.jsonl"
    assert [i.question_id for i in vqa.items] == [262144000, 262144001]
    assert vqa.items[0].image.path.parent.name == "test2015"

    text = get_benchmark("textvqa").load(layouts.textvqa(tmp_path / "textvqa"))
    assert text.items[0].prompt == f"what brand is the camera?\nReference OCR token: dakota, digital\n{SUFFIX}"
    assert text.items[1].prompt == f"what is written on the top?\nReference OCR token: dakota, digital\n{SUFFIX}"
    assert text.items[0].key != text.items[1].key  # same id (the image id), different questions

    gqa = get_benchmark("gqa").load(layouts.gqa(tmp_path / "gqa"))
    assert gqa.items[0].image.path == tmp_path / "gqa/data/images/n161313.jpg"

    viz = get_benchmark("vizwiz").load(layouts.vizwiz(tmp_path / "vizwiz"))
    assert viz.items[0].prompt == f"What is this?\n{UNANSWERABLE}\n{SUFFIX}"
    viz_val = get_benchmark("vizwiz").load(tmp_path / "vizwiz", question_file="val.json")
    assert viz_val.items[0].question_id == "VizWiz_val_00000000.jpg"
    assert viz_val.items[0].image.path == tmp_path / "vizwiz/val/VizWiz_val_00000000.jpg"

    vet = get_benchmark("mmvet").load(layouts.mmvet(tmp_path / "mm-vet"))
    assert vet.items[0].prompt == "What is x in the equation?"  # natural QA: no suffix
    assert get_benchmark("mmvet").max_new_tokens == 1024


def test_mmbench_options_hint_and_pandas_missing_values(tmp_path):
    ds = get_benchmark("mmbench").load(layouts.mmbench(tmp_path))
    first, second = ds.items
    assert first.question_id == 241  # pandas reads the index as a number
    assert first.prompt == f"Look at the shapes.\nWhich is the largest?\nA. circle\nB. square\nC. star\n{MC}"
    assert first.record_prompt == "Look at the shapes.\nWhich is the largest?\nA. circle\nB. square\nC. star"
    # hint 'nan' is no hint; an option reading 'None' is missing for pandas, so the options stop before it
    assert second.prompt == f"What is shown?\nA. a cat\nB. a dog\n{MC}"
    opened = first.image.open()
    assert isinstance(opened, Image.Image) and opened.getpixel((0, 0)) == (200, 0, 0)


def test_synth_reads_eval_json(tmp_path):
    ds = get_benchmark("synth").load(layouts.synth(tmp_path))
    assert [i.question_id for i in ds.items] == ["eval-0", "eval-1", "eval-2"]
    assert ds.items[0].prompt == f"What color is the square?\n{SUFFIX}"  # <image> tag removed, nothing added
    assert ds.items[0].meta["answer"] == "red" and ds.items[0].meta["question_type"] == "color"
    assert ds.items[0].image.path == tmp_path / "images/eval_00000.png"


def test_clear_errors_for_bad_input(tmp_path):
    with pytest.raises(EdgeVLMError, match="llava_pope_test.jsonl"):
        get_benchmark("pope").load(tmp_path)  # empty folder
    with pytest.raises(EdgeVLMError, match="not a directory"):
        get_benchmark("pope").load(tmp_path / "missing")
    with pytest.raises(EdgeVLMError, match="unknown benchmark"):
        get_benchmark("coco")
    root = layouts.pope(tmp_path / "pope")
    (root / "val2014/COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(EdgeVLMError, match="--image-folder"):
        get_benchmark("pope").load(root)
    bad = tmp_path / "bad"
    layouts.synth(bad)
    (bad / "eval.json").write_text("[{")
    with pytest.raises(EdgeVLMError, match="not valid JSON"):
        get_benchmark("synth").load(bad)
    broken = layouts.gqa(tmp_path / "gqa")
    with open(broken / "llava_gqa_testdev_balanced.jsonl", "a") as handle:
        handle.write("{oops\n")
    with pytest.raises(EdgeVLMError, match=r"llava_gqa_testdev_balanced.jsonl:4"):
        get_benchmark("gqa").load(broken)
