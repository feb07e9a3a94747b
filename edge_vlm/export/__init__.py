"""Export: checkpoint -> bundle (ONNX vision part, onnxruntime-genai decoder, INT8/INT4 weights, TensorRT settings),
checked against PyTorch by the validation gate. Entry point: edge_vlm.export.pipeline.export_bundle.

Importing this package imports nothing heavy: `edge-vlm info` reads manifests through edge_vlm.export.manifest
without torch or onnxruntime. See export/README.md and export/DESIGN.md.
"""
