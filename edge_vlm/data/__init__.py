"""Training data: readers for LLaVA JSON and ShareGPT (formats), validation with a skip/stop policy (validate),
the supervised dataset and collate of the three stages (dataset; imports torch), and the synthetic world
(scene, questions, synth: `edge-vlm data synth`).

Importing this package imports nothing heavy; `edge_vlm.data.dataset` is the only module that needs torch.
"""

# The most samples of one kind (training pictures, eval questions, SFT or text-only conversations) `edge-vlm data
# synth` writes: 10 million training pictures are about 40 GB of PNGs and hours of drawing at the default size, so a
# typo like 99999999999999 is refused before it starts filling the disk.
MAX_SAMPLES = 10_000_000
