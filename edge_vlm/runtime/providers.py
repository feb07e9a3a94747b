"""Which ONNX Runtime execution providers run each part of a bundle, and the session options.

Automatic order: TensorRT > CUDA > CPU for the vision part; CUDA > CPU for the decoder, whose graph is built from
ONNX Runtime contrib ops (GroupQueryAttention, MatMulNBits, SkipLayerNorm) that TensorRT does not implement.
On the vision side "tensorrt" means edge-vlm's own TensorRT engine (edge_vlm.runtime.trt), built on the target from
the bundle's vision.onnx and cached per GPU model and TensorRT version.
"""

from __future__ import annotations

from edge_vlm.errors import EdgeVLMError

TENSORRT = "tensorrt"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_ALIASES = {
    "tensorrt": TENSORRT, "trt": TENSORRT, "tensorrtexecutionprovider": TENSORRT,
    "cuda": CUDA, "gpu": CUDA, "cudaexecutionprovider": CUDA,
    "cpu": CPU, "cpuexecutionprovider": CPU,
}


def normalize(names: list[str] | str) -> list[str]:
    """User spellings ('cuda', 'CUDAExecutionProvider', 'trt', ...) -> canonical names, order kept, duplicates dropped."""
    if isinstance(names, str):
        names = [part for part in names.split(",")]
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        if not key:
            continue
        if key not in _ALIASES:
            raise EdgeVLMError(f"unknown execution provider {name!r}: choose from tensorrt, cuda, cpu")
        if _ALIASES[key] not in out:
            out.append(_ALIASES[key])
    if not out:
        raise EdgeVLMError("the list of execution providers is empty: choose from tensorrt, cuda, cpu (e.g. 'cuda,cpu')")
    return out


def tensorrt_usable() -> bool:
    """True when the TensorRT Python API and cuda-python are importable (edge-vlm's TensorRT vision path)."""
    from edge_vlm.deps import available

    return available("tensorrt") and available("cuda")


def ort_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def choose(requested: list[str] | str | None = None) -> dict[str, list[str]]:
    """Providers per part: {'vision': [...], 'decoder': [...]}; CPU is always the last fallback.

    `requested` None picks automatically; otherwise every name must be usable here, or the error says what to install.
    """
    have = ort_providers()
    if requested is None:
        wanted = [TENSORRT] if tensorrt_usable() else []
        wanted += [CUDA] if CUDA in have else []
    else:
        wanted = normalize(requested)
        for name in wanted:
            if name == TENSORRT and not tensorrt_usable():
                raise EdgeVLMError(
                    "the tensorrt provider needs the TensorRT Python API and cuda-python (pip install tensorrt "
                    "cuda-python, or JetPack's python3-libnvinfer) and an NVIDIA GPU"
                )
            if name == CUDA and CUDA not in have:
                raise EdgeVLMError(
                    f"CUDAExecutionProvider is not available in this onnxruntime (available: {', '.join(have)}): "
                    "install onnxruntime-gpu instead of onnxruntime (pip install 'edge-vlm[gpu]')"
                )
    vision = [name for name in wanted if name != CPU] + [CPU]
    decoder = [name for name in vision if name != TENSORRT]
    if TENSORRT in wanted and CUDA not in decoder and CUDA in have:
        decoder.insert(0, CUDA)  # TensorRT for the vision part implies a GPU for the decoder as well
    return {"vision": vision, "decoder": decoder}


def session_options(threads: int | None = None):
    """ONNX Runtime session options: full graph optimisation, `threads` intra-op threads (None: ORT's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise EdgeVLMError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings about fallback nodes are not the user's business
    return options


def open_session(path, options, providers: list[str], what: str):
    """An InferenceSession of a bundle's ONNX file; a bad or truncated file is a one-line EdgeVLMError naming `what`."""
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for a bad or truncated file
        raise EdgeVLMError(
            f"ONNX Runtime cannot load the {what} {path}: {exc}. The file may be truncated or damaged: re-export the "
            "bundle"
        ) from exc


def device_of(providers: list[str]) -> str:
    """Where tensors live between decoder steps: 'cuda' when the decoder runs on CUDA, else 'cpu'."""
    return "cuda" if providers and providers[0] == CUDA else "cpu"
