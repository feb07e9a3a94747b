"""Execution-provider choice and session options."""

from __future__ import annotations

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.runtime import providers as eps


def test_aliases_normalise_in_order():
    assert eps.normalize("CUDA, cpu,cuda") == [eps.CUDA, eps.CPU]
    assert eps.normalize(["trt", "CPUExecutionProvider"]) == [eps.TENSORRT, eps.CPU]
    with pytest.raises(EdgeVLMError, match="unknown execution provider 'npu'"):
        eps.normalize("npu")
    with pytest.raises(EdgeVLMError, match="empty"):
        eps.normalize(" , ")


def test_automatic_choice_follows_what_is_installed(monkeypatch):
    monkeypatch.setattr(eps, "ort_providers", lambda: [eps.CUDA, eps.CPU])
    monkeypatch.setattr(eps, "tensorrt_usable", lambda: True)
    assert eps.choose() == {"vision": [eps.TENSORRT, eps.CUDA, eps.CPU], "decoder": [eps.CUDA, eps.CPU]}
    monkeypatch.setattr(eps, "tensorrt_usable", lambda: False)
    assert eps.choose() == {"vision": [eps.CUDA, eps.CPU], "decoder": [eps.CUDA, eps.CPU]}
    monkeypatch.setattr(eps, "ort_providers", lambda: [eps.CPU])
    assert eps.choose() == {"vision": [eps.CPU], "decoder": [eps.CPU]}
    assert eps.choose("cpu") == {"vision": [eps.CPU], "decoder": [eps.CPU]}


def test_requesting_what_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setattr(eps, "ort_providers", lambda: [eps.CPU])
    monkeypatch.setattr(eps, "tensorrt_usable", lambda: False)
    with pytest.raises(EdgeVLMError, match="onnxruntime-gpu"):
        eps.choose(["cuda"])
    with pytest.raises(EdgeVLMError, match="tensorrt"):
        eps.choose(["tensorrt", "cpu"])


def test_on_this_machine_cpu_is_always_there():
    import onnxruntime

    assert eps.choose()["decoder"][-1] == "CPUExecutionProvider"
    assert set(eps.choose()["decoder"]) <= set(onnxruntime.get_available_providers())


def test_session_options_threads():
    options = eps.session_options(threads=3)
    assert options.intra_op_num_threads == 3
    with pytest.raises(EdgeVLMError, match="threads"):
        eps.session_options(threads=0)
