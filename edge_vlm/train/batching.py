"""The data side of the loop: the stage's dataset, and a sample order that makes global batches world-size independent.

Why not a DistributedSampler / accelerate's prepared DataLoader: the loop needs (1) the same global batches whatever
the number of processes, so a 2-process run reproduces a 1-process run at the same global batch, and (2) a data
position that is just (epoch, step), so a resumed run continues with exactly the samples it would have seen. Both
follow from one seeded permutation per epoch, cut into global batches, each cut into per-process micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import ImageConfig
from edge_vlm.tokenizer import TextTokenizer
from edge_vlm.train.config import TrainConfig


def build_dataset(config: TrainConfig, tokenizer: TextTokenizer, num_image_tokens: int, image_size: int,
                  context_length: int, quiet: bool = False):
    """Read, validate (report printed; skip or stop per config) and wrap the stage's data (edge_vlm.data)."""
    from edge_vlm.data.dataset import SupervisedDataset
    from edge_vlm.data.formats import read_llava_json, read_sharegpt
    from edge_vlm.data.validate import validate

    path = Path(config.data_path)
    samples = read_sharegpt(path) if config.fmt == "sharegpt" else read_llava_json(path)
    if not samples:  # one line: a validation report of zero samples would say nothing more
        raise EdgeVLMError(f"{path} holds no sample: nothing to train on (data_path)")
    image_root = Path(config.image_root) if config.image_root else path.parent
    kept, _ = validate(samples, stage=config.stage, image_root=image_root, tokenizer=tokenizer,
                       num_image_tokens=num_image_tokens, context_length=context_length,
                       on_error=config.on_bad_sample, source=str(path), log=(lambda _: None) if quiet else None)
    if not kept:
        raise EdgeVLMError(f"no usable sample in {path} for stage {config.stage!r} (see the report above)")
    image_config = ImageConfig(image_size=image_size, aspect=config.aspect)
    return SupervisedDataset(kept, tokenizer, config.stage, image_root=image_root, image_config=image_config,
                             num_image_tokens=num_image_tokens, context_length=context_length,
                             on_bad_sample=config.on_bad_sample)


@dataclass
class MicroBatch:
    indices: list[int]
    dummy: bool  # a stand-in for an empty slot of a short last batch: its labels are masked, it only keeps DDP in step


class BatchPlan:
    """Global batches of `global_batch` samples from a seeded permutation per epoch.

    Global batch b of an epoch is order[b*G:(b+1)*G]. It is cut into world_size x grad_accum slots in order
    (micro-step j, process r -> slot j*world_size + r); a full batch gives every slot per_device samples.
    """

    def __init__(self, num_samples: int, global_batch: int, per_device: int, world_size: int, seed: int,
                 drop_last: bool = False, lengths: list[int] | None = None):
        if num_samples <= 0:
            raise EdgeVLMError("the dataset is empty")
        if drop_last and num_samples < global_batch:
            raise EdgeVLMError(f"drop_last with {num_samples} samples < global_batch_size {global_batch}: "
                               "no step would run")
        self.num_samples, self.global_batch, self.per_device = num_samples, global_batch, per_device
        self.world_size, self.seed, self.drop_last = world_size, seed, drop_last
        self.grad_accum = global_batch // (per_device * world_size)
        if lengths is not None and len(lengths) != num_samples:
            raise EdgeVLMError(f"{len(lengths)} lengths for {num_samples} samples")
        self.lengths = lengths  # given: global batches of similar lengths (group_by_length)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch)
        return full if (self.drop_last or rest == 0) else full + 1

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.lengths is None:
            return torch.randperm(self.num_samples, generator=generator)
        return self._length_grouped_order(generator)

    def _length_grouped_order(self, generator: torch.Generator) -> torch.Tensor:
        """LLaVA's group_by_(modality_)length: transformers' grouping (a random permutation, cut into mega-batches of
        50 global batches, each sorted by length), after which the full global batches are shuffled again, so that
        long and short steps alternate at random instead of running from long to short within each mega-batch. The
        last, incomplete batch stays last (drop_last and the step count mean the same as without grouping)."""
        from transformers.trainer_pt_utils import get_length_grouped_indices

        grouped = torch.tensor(get_length_grouped_indices(self.lengths, self.global_batch, generator=generator))
        full = self.num_samples // self.global_batch
        batches = grouped[:full * self.global_batch].view(full, self.global_batch)
        shuffled = batches[torch.randperm(full, generator=generator)].flatten()
        return torch.cat([shuffled, grouped[full * self.global_batch:]])

    def global_batch_indices(self, order: torch.Tensor, step: int) -> list[int]:
        return order[step * self.global_batch:(step + 1) * self.global_batch].tolist()

    def micro_batches(self, order: torch.Tensor, step: int, rank: int) -> list[MicroBatch]:
        """This process's grad_accum micro-batches of global batch `step`."""
        batch = self.global_batch_indices(order, step)
        slots = self.world_size * self.grad_accum
        if len(batch) == self.global_batch:
            chunks = [batch[s * self.per_device:(s + 1) * self.per_device] for s in range(slots)]
        else:  # a short last batch: spread it evenly so that no process idles longer than needed
            chunks = [part.tolist() for part in np.array_split(np.asarray(batch), slots)]
        mine = [chunks[j * self.world_size + rank] for j in range(self.grad_accum)]
        return [MicroBatch(c, False) if c else MicroBatch([batch[0]], True) for c in mine]
