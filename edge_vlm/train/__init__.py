"""The training recipe: stages (sft, pretrain, finetune) as presets of one accelerate loop, LoRA / QLoRA, resumable
pickle-free checkpoints, metrics and plots. `edge_vlm.train.config` is torch-free; the loop imports torch."""
