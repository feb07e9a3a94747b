"""Training data: readers for LLaVA JSON and ShareGPT (formats), validation with a skip/stop policy (validate),
the supervised dataset and collate of the three stages (dataset; imports torch), and the synthetic world
(scene, questions, synth: `edge-vlm data synth`).

Importing this package imports nothing heavy; `edge_vlm.data.dataset` is the only module that needs torch.
"""
