"""The bundle on disk: `manifest.json` plus the files it lists, read and checked without torch.

A bundle is the deployable artifact (design.md): the vision ONNX, the decoder ONNX (onnxruntime-genai's graph, which
takes `inputs_embeds`), the token-embedding table, the tokenizer and the preprocessing settings. The manifest names
every file with its size and sha256, so a copy that lost or damaged a file is refused with the file's name instead of
crashing inside ONNX Runtime. The format is described in export/DESIGN.md.

Opening a bundle checks, in order: the manifest (format, schema version, every section the runtime reads, known
precisions, the image tokens, every path inside the bundle folder), the files (present, their size, by default their
sha256), and the manifest against the files themselves (the precisions against the graphs and the embedding table,
the context length against the decoder's rotary tables, the image tokens against the vision graph's output). Each
failure is one EdgeVLMError that names the file.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from edge_vlm.errors import EdgeVLMError
from edge_vlm.image_tokens import TokenSelection
from edge_vlm.image_tokens import from_manifest as selection_from_manifest
from edge_vlm.imaging import ImageConfig

MANIFEST_FILE = "manifest.json"
FORMAT = "edge-vlm-bundle"
SCHEMA_VERSION = 1

# roles of the files a bundle must have; the manifest maps each role to a relative path
REQUIRED_ROLES = ("vision", "decoder", "embeddings", "tokenizer")
VERIFY_MODES = ("hash", "size", "none")
# what each part of a bundle can be (the decoder's are the precisions export offers)
PRECISIONS = {"vision": ("fp32", "fp16"), "decoder": ("fp32", "fp16", "int8", "int4"),
              "embeddings": ("float32", "float16")}
# the model facts the runtime reads from the manifest: sizes are >= 1, token ids >= 0
MODEL_SIZES = ("hidden_size", "num_layers", "head_size", "vocab_size", "context_length", "num_image_tokens")
MODEL_TOKEN_IDS = ("image_token_id", "eos_token_id")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DAMAGED = "the bundle is damaged, export it again"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (bundles hold multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def is_bundle_dir(path: str | Path) -> bool:
    """A folder edge-vlm wrote as a bundle (its manifest.json has our format): the only kind of folder with files in
    it that `export --force` replaces."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):  # no manifest, unreadable, not JSON, not UTF-8
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def load_manifest(directory: str | Path) -> dict:
    """The parsed manifest of a bundle directory after checking its format and schema version only (what `info`
    needs to describe a damaged bundle); `read_manifest` checks its contents too."""
    path = Path(directory)
    if not path.exists():
        raise EdgeVLMError(f"bundle not found: {path}")
    if not path.is_dir():
        raise EdgeVLMError(f"a bundle is a directory, but {path} is a file")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        hint = " (it looks like a checkpoint: use --model, or export it with `edge-vlm export`)" if (
            path / "config.json").is_file() else ""
        raise EdgeVLMError(f"no {MANIFEST_FILE} in {path}: not a bundle directory{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a repeated key
        raise EdgeVLMError(f"{manifest_path} is not valid JSON ({exc}): {_DAMAGED}") from exc
    except OSError as exc:
        raise EdgeVLMError(f"cannot read {manifest_path}: {exc.strerror or exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgeVLMError(f"{manifest_path} is not an edge-vlm bundle manifest (format {manifest.get('format')!r})"
                           if isinstance(manifest, dict) else f"{manifest_path} is not an edge-vlm bundle manifest "
                           f"(a JSON {type(manifest).__name__}, not an object)")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgeVLMError(
            f"{path} has bundle schema version {version!r}, but this edge-vlm reads version {SCHEMA_VERSION}: "
            "re-export the bundle with this version (`edge-vlm export`) or install the edge-vlm that wrote it"
        )
    return manifest


def _refuse_duplicate_keys(pairs: list) -> dict:
    """A key given twice in one object: json keeps the last silently, so which value the writer meant is unknown."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key {repeated[0]!r} is given twice in one object")
    return dict(pairs)


def read_manifest(directory: str | Path) -> dict:
    """The parsed manifest of a bundle directory, after checking its format, schema version and contents."""
    manifest = load_manifest(directory)
    check_manifest(directory, manifest)
    return manifest


def check_manifest(directory: str | Path, manifest: dict) -> None:
    """The manifest's own checks (no file is opened but to resolve symbolic links): every section the runtime reads,
    whole numbers where it needs them, known precisions, and every path inside the bundle folder."""
    root = Path(directory)
    manifest_path = root / MANIFEST_FILE
    for key in ("files", "roles", "model", "precision"):
        if not isinstance(manifest.get(key), dict):
            raise EdgeVLMError(f"{manifest_path} has no {key!r} section: {_DAMAGED}")
    files = manifest["files"]
    for name, entry in files.items():
        _check_inside(root, name, f"the file {name!r}")
        if not (isinstance(entry, dict) and _whole(entry.get("bytes"), 0) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"])):
            raise EdgeVLMError(f"{manifest_path}: the entry of {name} needs 'bytes' (a whole number) and 'sha256' "
                               f"(64 hex digits): {_DAMAGED}")
    roles = manifest["roles"]
    missing_roles = [role for role in REQUIRED_ROLES if role not in roles]
    if missing_roles:
        raise EdgeVLMError(f"{manifest_path} lists no file for {', '.join(missing_roles)}: export the bundle again")
    for role, name in roles.items():
        _check_inside(root, name, f"the {role} file")
        if name not in files:  # a file outside `files` would escape the size and hash checks
            raise EdgeVLMError(f"{manifest_path}: the {role} file {name} is not among its files: {_DAMAGED}")
    # the runtime reads tokenizer.json beside the tokenizer file (TextTokenizer.from_dir)
    tokenizer_json = posixpath.join(posixpath.dirname(roles["tokenizer"]), "tokenizer.json")
    if tokenizer_json not in files:
        raise EdgeVLMError(f"{manifest_path}: {tokenizer_json}, which the runtime reads the tokenizer from, is not "
                           f"among its files: {_DAMAGED}")
    for part, allowed in PRECISIONS.items():
        value = manifest["precision"].get(part)
        if value not in allowed:
            raise EdgeVLMError(f"{manifest_path}: {part} precision {value!r} is not one of {', '.join(allowed)}: "
                               f"{_DAMAGED}")
    model = manifest["model"]
    for key in MODEL_SIZES + MODEL_TOKEN_IDS:
        if not _whole(model.get(key), 1 if key in MODEL_SIZES else 0):
            least = 1 if key in MODEL_SIZES else 0
            raise EdgeVLMError(f"{manifest_path}: model.{key} is {model.get(key)!r}, not a whole number >= {least}: "
                               f"{_DAMAGED}")
    for key in MODEL_TOKEN_IDS:
        if model[key] >= model["vocab_size"]:
            raise EdgeVLMError(f"{manifest_path}: model.{key} {model[key]} is outside the vocabulary of "
                               f"{model['vocab_size']}: {_DAMAGED}")
    from edge_vlm.prompting import TEMPLATES

    if model.get("template", "phi-2_v0") not in TEMPLATES:
        raise EdgeVLMError(f"{manifest_path}: model.template {model.get('template')!r} is not one of "
                           f"{sorted(TEMPLATES)}: {_DAMAGED}")
    try:
        ImageConfig.from_dict(manifest.get("image", {}))
    except EdgeVLMError as exc:
        raise EdgeVLMError(f"{manifest_path}: {exc}: {_DAMAGED}") from None
    image_tokens(manifest_path, manifest)
    _check_tensorrt(manifest_path, manifest.get("tensorrt"))


def image_tokens(manifest_path: Path, manifest: dict) -> tuple[int, int, TokenSelection | None]:
    """(image tokens K the decoder receives, the vision tower's patch tokens N, the selection or None) after checking
    the manifest's `vision` section against model.num_image_tokens (K). A bundle without the section (written
    before image-token selection existed) gives its decoder every patch token."""
    k = manifest["model"]["num_image_tokens"]
    section = manifest.get("vision")
    if section is None:
        return k, k, None
    if not isinstance(section, dict):
        raise EdgeVLMError(f"{manifest_path}: the 'vision' section is not an object: {_DAMAGED}")
    n, recorded = section.get("patch_tokens"), section.get("image_tokens")
    if not (_whole(n, 1) and _whole(recorded, 1) and recorded <= n):
        raise EdgeVLMError(f"{manifest_path}: vision.patch_tokens {n!r} and vision.image_tokens {recorded!r} must be "
                           f"whole numbers >= 1, image tokens no more than patch tokens: {_DAMAGED}")
    if recorded != k:
        raise EdgeVLMError(f"{manifest_path}: vision.image_tokens {recorded} differs from model.num_image_tokens {k}: "
                           f"{_DAMAGED}")
    selection = selection_from_manifest(section.get("token_selection"), n, str(manifest_path))
    chosen = n if selection is None else selection.image_tokens
    if chosen != k:
        raise EdgeVLMError(f"{manifest_path}: vision.token_selection gives {chosen} image tokens of {n}, but "
                           f"vision.image_tokens is {k}: {_DAMAGED}")
    return k, n, selection


def _check_tensorrt(manifest_path: Path, section) -> None:
    """The TensorRT settings name the engine file the runtime builds and writes (edge_vlm.runtime.trt.engine_key):
    only the values an export writes, so no text from the manifest becomes part of a path."""
    if not section:
        return
    vision = section.get("vision") if isinstance(section, dict) else None
    if not isinstance(vision, dict):
        raise EdgeVLMError(f"{manifest_path}: the 'tensorrt' section has no 'vision' settings: {_DAMAGED}")
    digest = vision.get("onnx_sha256")
    if (vision.get("precision", "fp16") not in ("fp16", "int8") or not _whole(vision.get("max_batch", 4), 1)
            or not (digest is None or (isinstance(digest, str) and _SHA256.fullmatch(digest)))):
        raise EdgeVLMError(f"{manifest_path}: tensorrt.vision needs precision fp16 or int8, max_batch a whole number "
                           f">= 1 and onnx_sha256 64 hex digits: {_DAMAGED}")


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_inside(root: Path, name, what: str) -> None:
    """`name` is a relative path that stays inside the bundle folder, symbolic links followed: a manifest must not
    make the runtime (or `info`) read /etc/hostname or another folder's files."""
    manifest_path = root / MANIFEST_FILE
    if not isinstance(name, str) or not name:
        raise EdgeVLMError(f"{manifest_path}: {what} has no path ({name!r}): {_DAMAGED}")
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or flavour.drive or flavour.root or ".." in flavour.parts:
            raise EdgeVLMError(f"{manifest_path}: {what} is {name!r}, outside the bundle: a bundle's paths are "
                               "relative and stay inside its folder")
    real_root = root.resolve()
    if not (root / name).resolve().is_relative_to(real_root):
        raise EdgeVLMError(f"{manifest_path}: {what} {name} is a symbolic link to {(root / name).resolve()}, "
                           "outside the bundle: copy the file itself into the bundle")


def verify_files(directory: str | Path, manifest: dict, mode: str = "hash", finite: bool = False) -> None:
    """Check that every file the manifest lists is present with its recorded size (and sha256 when mode 'hash').

    A short file is reported as truncated (an interrupted copy), a changed one as a hash mismatch. With `finite` (mode
    'hash' only), the same read also checks that every floating-point weight is finite: the graphs' float
    initializers, inline and in their external-data files, and the embedding table. A bundle whose weights are NaN
    although its manifest was re-hashed to match is refused too, naming the file and the tensor. The graphs are read
    first (they say where their weights lie in the other files); no file is held in memory whole.
    """
    if mode not in VERIFY_MODES:
        raise EdgeVLMError(f"verify mode {mode!r} is not one of {VERIFY_MODES}")
    if mode == "none":
        return
    root = Path(directory)
    files = manifest["files"]
    for name, entry in files.items():
        _check_size(root, name, int(entry["bytes"]))
    if mode != "hash":
        return
    roles = manifest.get("roles", {})
    graphs = {roles[role]: role for role in ("vision", "decoder") if finite and roles.get(role) in files}
    spans: dict[str, list[_Span]] = {}
    if finite and roles.get("embeddings") in files:
        spans[roles["embeddings"]] = _npy_spans(root / roles["embeddings"])
    for name in [*graphs, *(name for name in files if name not in graphs)]:
        _read_file(root / name, files[name]["sha256"], spans.get(name, []))
        if name in graphs:
            graph = _read_graph(root / name, f"{graphs[name]} model")
            for data_file, found in _weight_spans(root, name, graph).items():
                spans.setdefault(data_file, []).extend(found)


def _check_size(root: Path, name: str, expected: int) -> None:
    path = root / name
    if not path.is_file():
        raise EdgeVLMError(f"bundle {root} is missing {name}: copy the whole bundle directory or export it again")
    size = path.stat().st_size
    if size != expected:
        kind = "truncated" if size < expected else "larger than recorded"
        raise EdgeVLMError(
            f"{path} is {kind} ({size} bytes, manifest says {expected}): the copy is incomplete or damaged; "
            "copy it again or re-export the bundle"
        )


# ------------------------------------------------------------------------------------- weight values (info's check)
_CHUNK = 1 << 22  # bytes per read: a multiple of every float size, so a chunk of a tensor holds whole values
_FLOAT_TYPES = {1: "<f4", 10: "<f2", 11: "<f8", 16: "bfloat16"}  # onnx.TensorProto.DataType -> stored format


@dataclass(frozen=True)
class _Span:
    """Where one float tensor's bytes lie in a file."""

    offset: int
    nbytes: int
    dtype: str  # a little-endian numpy format, or "bfloat16" (numpy has none)
    what: str  # "the weight NAME of GRAPH", for the error


def _read_file(path: Path, expected_sha256: str, spans: list[_Span]) -> None:
    """One pass over the file: its sha256, and whether the values in `spans` are finite. A hash mismatch is reported
    first (the file is not what was exported), then a damaged weight (it was exported or re-hashed that way)."""
    digest, damaged = hashlib.sha256(), []
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            position, overlapping = 0, []
            for span in sorted(spans, key=lambda s: s.offset):
                if span.offset < 0 or span.offset + span.nbytes > size:
                    raise EdgeVLMError(f"{path}: {span.what} lies at bytes {span.offset} to "
                                       f"{span.offset + span.nbytes}, beyond the file's {size} bytes: {_DAMAGED}")
                if span.offset < position:  # shares bytes with the tensor before: checked after the hash pass
                    overlapping.append(span)
                    continue
                _read(handle, span.offset - position, digest)
                _read(handle, span.nbytes, digest, span, damaged)
                position = span.offset + span.nbytes
            _read(handle, size - position, digest)
            for span in overlapping:
                handle.seek(span.offset)
                _read(handle, span.nbytes, None, span, damaged)
    except OSError as exc:
        raise EdgeVLMError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if digest.hexdigest() != expected_sha256:
        raise EdgeVLMError(
            f"{path} does not match its sha256 in {MANIFEST_FILE}: the file was modified or damaged; "
            "copy it again or re-export the bundle"
        )
    if damaged:
        raise EdgeVLMError(f"{path}: {damaged[0].what} holds NaN or infinity: the weights are damaged; export the "
                           "bundle again")


def _read(handle, count: int, digest, span: _Span | None = None, damaged: list | None = None) -> None:
    """Read `count` bytes in chunks into `digest`; with `span`, note it in `damaged` if a value is not finite."""
    while count > 0:
        chunk = handle.read(min(_CHUNK, count))
        if not chunk:
            raise EdgeVLMError(f"{handle.name} became shorter while it was read: it is being changed")
        count -= len(chunk)
        if digest is not None:
            digest.update(chunk)
        if span is not None and not damaged and not _finite(chunk, span.dtype):
            damaged.append(span)


def _finite(data: bytes, dtype: str) -> bool:
    import numpy as np

    if dtype == "bfloat16":  # all exponent bits set: infinity or NaN
        bits = np.frombuffer(data, "<u2", count=len(data) // 2)
        return not bool(((bits & 0x7F80) == 0x7F80).any())
    kind = np.dtype(dtype)
    return bool(np.isfinite(np.frombuffer(data, kind, count=len(data) // kind.itemsize)).all())


def _tensors(graph, weights_only: bool = False):
    """The tensors of a graph and of its subgraphs: the initializers (the weights) and, unless `weights_only`, the
    tensors held in node attributes (constants, which may carry -inf on purpose, e.g. for a mask)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if not weights_only:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
            yield from (t for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]
                        for t in _tensors(sub, weights_only))


def external_data(root: Path, graph_name: str, graph) -> dict[str, list[tuple]]:
    """{file (bundle-relative): [(tensor, offset, byte length or None), ...]} for every tensor of the graph whose bytes
    are in another file (ONNX external data: a path relative to the graph's folder, an offset and a length)."""
    found: dict[str, list[tuple]] = {}
    for tensor in _tensors(graph.graph):
        if tensor.data_location != _EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        name = posixpath.normpath(posixpath.join(posixpath.dirname(graph_name), location)) if location else ""
        if name not in found:  # one check per file: a decoder names its data file in hundreds of tensors
            _check_inside(root, name, f"the external data of {tensor.name} in {graph_name}")
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise EdgeVLMError(f"{root / graph_name}: the external data of {tensor.name} has offset "
                               f"{entries.get('offset')!r} and length {entries.get('length')!r}, not whole numbers: "
                               f"{_DAMAGED}") from None
        found.setdefault(name, []).append((tensor, offset, length))
    return found


def _check_external_listed(root: Path, manifest: dict, graph_name: str, graph) -> None:
    """Every file a graph reads its weights from is among the manifest's files: one left out would be loaded by ONNX
    Runtime without its size or sha256 ever being checked."""
    for name in external_data(root, graph_name, graph):
        if name not in manifest["files"]:
            raise EdgeVLMError(f"{root / MANIFEST_FILE}: {name}, which {graph_name} reads its weights from, is not "
                               f"among its files, so it is never checked: {_DAMAGED}")


def _weight_spans(root: Path, graph_name: str, graph) -> dict[str, list[_Span]]:
    """The float weights of a graph: those stored in the graph file are checked here, and the others are returned as
    {external-data file: spans} for the pass that reads that file."""
    import numpy as np

    path = root / graph_name
    weights = [t for t in _tensors(graph.graph, weights_only=True) if t.data_type in _FLOAT_TYPES]
    for tensor in weights:
        if tensor.data_location == _EXTERNAL:
            continue
        dtype = _FLOAT_TYPES[tensor.data_type]
        if tensor.raw_data:
            data = tensor.raw_data
        elif tensor.data_type in (10, 16):  # float16 / bfloat16 values kept as their 16 bits in int32_data
            data = np.asarray(tensor.int32_data, "<u2").tobytes()
        else:
            data = np.asarray(tensor.double_data if tensor.data_type == 11 else tensor.float_data, dtype).tobytes()
        if not _finite(data, dtype):
            raise EdgeVLMError(f"{path}: the weight {tensor.name} holds NaN or infinity: the weights are damaged; "
                               "export the bundle again")
    spans: dict[str, list[_Span]] = {}
    floats = {id(t) for t in weights}
    for name, entries in external_data(root, graph_name, graph).items():
        for tensor, offset, length in entries:
            if id(tensor) not in floats:
                continue
            dtype = _FLOAT_TYPES[tensor.data_type]
            size = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            nbytes = length if length is not None else size * int(np.prod(tensor.dims, dtype=np.int64))
            spans.setdefault(name, []).append(_Span(offset, nbytes, dtype, f"the weight {tensor.name} of {graph_name}"))
    return spans


def _npy_spans(path: Path) -> list[_Span]:
    """The embedding table's values; none when its header cannot be read (the hash or check_contents says why)."""
    import numpy as np

    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return []
    if table.dtype.kind != "f" or not isinstance(table, np.memmap):
        return []
    return [_Span(int(table.offset), int(table.nbytes), table.dtype.str, "the embedding table")]


def check_contents(directory: str | Path, manifest: dict) -> None:
    """The manifest against the files it describes: the decoder graph's precision (its MatMulNBits weight bits and
    float type) and rotary-table length (the longest context it can run), the vision graph's float type, and the
    embedding table's dtype. Reads the graphs without their external weights (kilobytes to a few megabytes)."""
    root = Path(directory)
    manifest_path = root / MANIFEST_FILE
    precision, model = manifest["precision"], manifest["model"]
    decoder_path = root / manifest["roles"]["decoder"]
    decoder = _read_graph(decoder_path, "decoder")
    _check_external_listed(root, manifest, manifest["roles"]["decoder"], decoder)
    found = _decoder_precision(decoder)
    if found != precision["decoder"]:
        raise EdgeVLMError(f"{manifest_path} says the decoder is {precision['decoder']}, but {decoder_path} is an "
                           f"{found} graph: the manifest does not match the bundle; export it again")
    positions = _rotary_positions(decoder)
    if positions is not None and model["context_length"] > positions:
        raise EdgeVLMError(f"{manifest_path}: model.context_length {model['context_length']} is more than the decoder "
                           f"{decoder_path} can run (its rotary tables hold {positions} positions): {_DAMAGED}")
    layers = sum(1 for value in decoder.graph.input if re.fullmatch(r"past_key_values\.\d+\.key", value.name))
    if layers and layers != model["num_layers"]:
        raise EdgeVLMError(f"{manifest_path}: model.num_layers {model['num_layers']} differs from the {layers} layers "
                           f"of {decoder_path}: {_DAMAGED}")
    vision_path = root / manifest["roles"]["vision"]
    vision = _read_graph(vision_path, "vision model")
    _check_external_listed(root, manifest, manifest["roles"]["vision"], vision)
    found = "fp16" if any(t.data_type == _FLOAT16 for t in vision.graph.initializer) else "fp32"
    if found != precision["vision"]:
        raise EdgeVLMError(f"{manifest_path} says the vision part is {precision['vision']}, but {vision_path} is an "
                           f"{found} graph: the manifest does not match the bundle; export it again")
    _check_vision_output(manifest_path, vision_path, vision, model)
    dtype, shape = _npy_header(root / manifest["roles"]["embeddings"])
    if shape != (model["vocab_size"], model["hidden_size"]):
        raise EdgeVLMError(f"{manifest_path}: the embedding table {root / manifest['roles']['embeddings']} is "
                           f"{' x '.join(map(str, shape))}, not vocab_size x hidden_size = {model['vocab_size']} x "
                           f"{model['hidden_size']}: {_DAMAGED}")
    if dtype != precision["embeddings"]:
        raise EdgeVLMError(f"{manifest_path} says the embeddings are {precision['embeddings']}, but "
                           f"{root / manifest['roles']['embeddings']} holds {dtype}: {_DAMAGED}")


def _check_vision_output(manifest_path: Path, vision_path: Path, graph, model: dict) -> None:
    """The vision graph's output is [batch, image tokens, hidden size] as the manifest says: the runtime splices
    exactly model.num_image_tokens features into the prompt, so a manifest that lies about K (or a vision.onnx from
    another export) is refused here, naming both, instead of failing at the first image."""
    outputs = graph.graph.output
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in outputs[0].type.tensor_type.shape.dim] if outputs else []
    expected = [model["num_image_tokens"], model["hidden_size"]]
    if len(dims) != 3 or list(dims[1:]) != expected:
        shown = "x".join(str(d) for d in dims) or "unknown"
        raise EdgeVLMError(f"{manifest_path} says each image gives {expected[0]} image tokens of {expected[1]}, but "
                           f"{vision_path} outputs {shown}: the manifest does not match the bundle; export it again")


# ---------------------------------------------------------------------------------------------- reading ONNX graphs
# ONNX files are protobuf messages. The few fields read here are decoded with protobuf (which onnxruntime depends
# on) and a message subset declared with onnx.proto's field numbers: the `onnx` package is an export-side install,
# and importing it costs most of a second (ml_dtypes) on every `ask --bundle`. Fields not declared are skipped.
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.DataType
_EXTERNAL = 1  # onnx.TensorProto.DataLocation: the tensor's bytes are in another file
_ONNX_SUBSET = {  # message: {field: (number, type, repeated)}; a type in capitals is another message here
    "Model": {"graph": (7, "Graph", False)},
    "Graph": {"node": (1, "Node", True), "initializer": (5, "Tensor", True), "input": (11, "ValueInfo", True),
              "output": (12, "ValueInfo", True)},
    "Node": {"input": (1, "string", True), "op_type": (4, "string", False), "attribute": (5, "Attribute", True)},
    "Attribute": {"name": (1, "string", False), "i": (3, "int64", False), "t": (5, "Tensor", False),
                  "g": (6, "Graph", False), "tensors": (10, "Tensor", True), "graphs": (11, "Graph", True)},
    "Tensor": {"dims": (1, "int64", True), "data_type": (2, "int32", False), "float_data": (4, "float", True),
               "int32_data": (5, "int32", True), "name": (8, "string", False), "raw_data": (9, "bytes", False),
               "double_data": (10, "double", True), "external_data": (13, "Entry", True),
               "data_location": (14, "int32", False)},
    "Entry": {"key": (1, "string", False), "value": (2, "string", False)},
    "ValueInfo": {"name": (1, "string", False), "type": (2, "Type", False)},
    "Type": {"tensor_type": (1, "TensorType", False)},
    "TensorType": {"elem_type": (1, "int32", False), "shape": (2, "Shape", False)},
    "Shape": {"dim": (1, "Dimension", True)},
    "Dimension": {"dim_value": (1, "int64", False), "dim_param": (2, "string", False)},
}
_MODEL_CLASS = None


def _model_class():
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        field = descriptor_pb2.FieldDescriptorProto
        scalar = {"string": field.TYPE_STRING, "int64": field.TYPE_INT64, "int32": field.TYPE_INT32,
                  "float": field.TYPE_FLOAT, "double": field.TYPE_DOUBLE, "bytes": field.TYPE_BYTES}
        package = "edge_vlm_onnx_subset"
        file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
        for name, fields in _ONNX_SUBSET.items():
            message = file.message_type.add(name=name)
            for field_name, (number, kind, repeated) in fields.items():
                entry = message.field.add(name=field_name, number=number, type=scalar.get(kind, field.TYPE_MESSAGE),
                                          label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
                if kind not in scalar:
                    entry.type_name = f".{package}.{kind}"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        descriptor = pool.FindMessageTypeByName(f"{package}.Model")
        get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.21; older: the factory
        _MODEL_CLASS = get_class(descriptor) if get_class else message_factory.MessageFactory(pool).GetPrototype(
            descriptor)
    return _MODEL_CLASS


def _read_graph(path: Path, what: str):
    """The model's graph structure (nodes, initializer names / types / dims, inputs), external data not read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EdgeVLMError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    model_class = _model_class()
    try:
        model = model_class.FromString(data)
    except Exception as exc:  # protobuf's DecodeError, whose module differs between its implementations
        raise EdgeVLMError(f"cannot load the {what} {path}: it is not an ONNX graph ({exc}). The file may be "
                           "truncated or damaged: re-export the bundle") from exc
    if not model.graph.node:
        raise EdgeVLMError(f"cannot load the {what} {path}: it holds no ONNX graph. The file may be truncated or "
                           "damaged: re-export the bundle")
    return model


def _decoder_precision(model) -> str:
    """int4 / int8 when the graph's MatMulNBits nodes hold 4-bit (an 8-bit lm_head beside them is allowed) or only
    8-bit weights; otherwise fp16 / fp32 after the type of its inputs_embeds."""
    bits = {next((attribute.i for attribute in node.attribute if attribute.name == "bits"), 4)  # 4: the op's default
            for node in model.graph.node if node.op_type == "MatMulNBits"}
    if 4 in bits:
        return "int4"
    if 8 in bits:
        return "int8"
    types = {value.name: value.type.tensor_type.elem_type for value in model.graph.input}
    return "fp16" if types.get("inputs_embeds") == _FLOAT16 else "fp32"


def _rotary_positions(model) -> int | None:
    """Rows of the decoder's rotary cos table (GroupQueryAttention's cos_cache input): the positions it can encode.
    None when the graph has no such table (then the runtime meets the limit, if any, itself)."""
    names = {node.input[7] for node in model.graph.node if node.op_type == "GroupQueryAttention"
             and len(node.input) > 7 and node.input[7]}
    rows = [tensor.dims[0] for tensor in model.graph.initializer if tensor.name in names and tensor.dims]
    return min(rows) if rows else None


def _npy_header(path: Path) -> tuple[str, tuple[int, ...]]:
    import numpy as np

    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: the rows stay on disk
        return table.dtype.name, tuple(table.shape)
    except OSError as exc:
        raise EdgeVLMError(f"cannot read the embedding table {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise EdgeVLMError(f"cannot read the embedding table {path}: {exc}; re-export the bundle") from exc


@dataclass
class Bundle:
    """A checked bundle directory and what the runtime needs from its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | Path, verify: str = "hash") -> Bundle:
        """Read and check the manifest, check the files (`verify`: 'hash' (default), 'size' or 'none') and the
        manifest against them (always: it reads only the graphs' structure and the embedding table's header)."""
        path = Path(directory)
        manifest = read_manifest(path)
        verify_files(path, manifest, verify)
        check_contents(path, manifest)
        return cls(path, manifest)

    def file(self, role: str) -> Path:
        """The path of the file with this role (vision, decoder, embeddings, tokenizer, ...)."""
        try:
            return self.path / self.manifest["roles"][role]
        except KeyError as exc:
            raise EdgeVLMError(f"bundle {self.path} has no {role} file") from exc

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig.from_dict(self.manifest.get("image", {}))

    @property
    def precision(self) -> dict:
        return self.manifest.get("precision", {})

    @property
    def tensorrt(self) -> dict:
        return self.manifest.get("tensorrt") or {}

    @property
    def image_tokens(self) -> tuple[int, int, TokenSelection | None]:
        """(image tokens K per image, the vision tower's patch tokens N, the token selection or None when K = N)."""
        return image_tokens(self.path / MANIFEST_FILE, self.manifest)
