"""Batches of a prepared split for Keras, read from its shard files as they are needed,
so a data set larger than memory trains and evaluates too."""

import math

import keras
import numpy as np

from pipeline import store

# A batch predicted at once holds its inputs as float32 and, inside the model, activations
# tens of times larger (42 times at 224x224 RGB after sequential's first convolution): as
# many images as keep a batch's float inputs within this, and at most 256, plenty for small
# images. At 224x224 RGB 27 images, whose activations stay within a few hundred MiB.
INFERENCE_INPUT_BYTES = 16 << 20
INFERENCE_BATCH = 256


def inference_batch_size(split: store.Split, inputs: int) -> int:
    """Images per batch when a model predicts the first `inputs` views of `split`."""
    per_image = sum(4 * math.prod(view.shape[1:]) for view in split.views[:inputs])
    return max(1, min(INFERENCE_BATCH, INFERENCE_INPUT_BYTES // per_image))


class Batches(keras.utils.PyDataset):
    """Batches of one split: one pass in order, or, with a seed, training batches for ever.

    With a seed, index i is batch i % len(self) of epoch i // len(self), each epoch
    in its own order drawn from the seed, and there is no last batch: model.fit, given
    steps_per_epoch=len(batches), then keeps one iterator for the whole run. For a
    finite PyDataset Keras sets up a new one every epoch, which put a 9-step epoch
    10-40% over a constant batch (bench/README.md, bench/train.py).

    With `shard` = (i, n), this process's rows i, i + n, ... of each global batch,
    and only whole global batches, so that n processes take the same steps.
    """

    def __init__(
        self,
        split: store.Split,
        inputs: int,
        batch_size: int,
        seed: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        super().__init__()
        self.views, self.labels = split.views[:inputs], split.labels
        self.batch_size, self.seed, self.shard = batch_size, seed, shard
        self._epoch_order = (0, self._order(0))  # one tuple: a consistent pair in any thread

    def _order(self, epoch: int) -> np.ndarray:
        count = len(self.labels)
        if self.seed is None:
            return np.arange(count)
        return np.random.default_rng([self.seed, epoch]).permutation(count)

    def __len__(self) -> int:  # batches in one epoch
        if self.shard[1] > 1:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_batches(self) -> int | None:
        return None if self.seed is not None else len(self)  # None: endless, for Keras

    def __getitem__(self, index: int):
        epoch, index = divmod(index, len(self))
        known, order = self._epoch_order
        if epoch != known:
            order = self._order(epoch)
            self._epoch_order = (epoch, order)
        # Sorted, so a batch reads its shards front to back; order within a batch
        # does not change the gradient.
        chosen = np.sort(order[index * self.batch_size : (index + 1) * self.batch_size])
        chosen = chosen[self.shard[0] :: self.shard[1]]
        pixels = [view[chosen] for view in self.views]
        return (pixels[0] if len(pixels) == 1 else tuple(pixels)), self.labels[chosen]
