"""train.distribution: one device, every local device, or one process per machine.

- none:         Keras picks one device (a GPU when the backend sees one).
- mirrored:     every local GPU: tf.distribute.MirroredStrategy on tensorflow,
                keras.distribution.DataParallel on jax; `model.fit` as usual.
- multi_worker: one process per machine, all configured by the standard
                TF_CONFIG variable. On jax: keras.distribution.initialize (jax's
                distributed initialisation, gloo collectives on CPU) and
                DataParallel over every process's devices; `model.fit` as usual,
                each process feeding its own rows of every global batch. On
                tensorflow: MultiWorkerMirroredStrategy. Keras 3's `model.fit`
                fails under that strategy on TensorFlow 2.21
                (keras-team/keras#20585), so `fit_multi_worker` runs the epochs
                itself: a training step under `strategy.run`, gradients summed
                across workers by the Keras optimizer, the usual callbacks.

train.batch_size is the global batch: each step takes batch_size images in all,
split evenly across the replicas. The learning rate is not scaled for you.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os

import keras
import numpy as np

from pipeline.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Distribution:
    setting: str
    strategy: object | None  # the tf.distribute strategy, when tensorflow distributes
    chief: bool  # the one process that writes the model, metrics and dvclive output
    replicas: int
    shard: tuple[int, int] = (0, 1)  # (this process, processes) when each feeds its own rows

    def scope(self):
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def steps(self, batch_size: int, images: int) -> int:
        """Global batches per epoch: under multi_worker only whole ones, split evenly, so
        that every process runs the same number of steps."""
        if self.setting != "multi_worker":
            return math.ceil(images / batch_size)
        if batch_size % self.replicas:
            raise PipelineError(
                f"train.batch_size = {batch_size} does not split evenly over {self.replicas} "
                f"replicas; allowed: a multiple of {self.replicas}"
            )
        if batch_size > images:
            raise PipelineError(
                f"train.batch_size = {batch_size} is more than the {images} training images; "
                "allowed: at most the number of training images"
            )
        return images // batch_size


def is_chief(tf_config: dict) -> bool:
    """TF_CONFIG's rule: the 'chief' task if the cluster has one, else worker 0."""
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and task.get("index") == 0


def process_of(tf_config: dict) -> tuple[list[str], int]:
    """Every task's address, the chief first, and this task's place among them."""
    cluster, task = tf_config["cluster"], tf_config["task"]
    addresses = [*cluster.get("chief", []), *cluster.get("worker", [])]
    offset = 0 if task["type"] == "chief" else len(cluster.get("chief", []))
    return addresses, offset + task["index"]


def start(setting: str) -> Distribution:
    """Set up `setting` on this process's backend; call before any tensor is made."""
    backend = keras.backend.backend()
    if setting == "none":
        return Distribution(setting, None, True, 1)
    if backend not in ("tensorflow", "jax"):
        raise PipelineError(
            f"train.distribution = '{setting}' is not available on the {backend} backend; "
            "use KERAS_BACKEND=tensorflow or jax"
        )
    if setting == "mirrored":
        if backend == "jax":
            keras.distribution.set_distribution(keras.distribution.DataParallel())
            return Distribution(setting, None, True, len(keras.distribution.list_devices()))
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        return Distribution(setting, strategy, True, strategy.num_replicas_in_sync)
    tf_config = _tf_config()
    if backend == "jax":
        import jax

        addresses, index = process_of(tf_config)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only machines
        keras.distribution.initialize(",".join(addresses), len(addresses), index)
        distribution = keras.distribution.DataParallel()
        distribution.auto_shard_dataset = False  # each process feeds its own rows (Batches)
        keras.distribution.set_distribution(distribution)
        replicas = len(keras.distribution.list_devices())
        return Distribution(setting, None, is_chief(tf_config), replicas, (index, len(addresses)))
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Distribution(setting, strategy, is_chief(tf_config), strategy.num_replicas_in_sync)


def _tf_config() -> dict:
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        process_of(tf_config)  # has a cluster and a task that is in it
        return tf_config
    except (KeyError, ValueError, TypeError):
        raise PipelineError(
            "train.distribution = 'multi_worker' needs TF_CONFIG, a JSON cluster and task "
            'such as {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}; see README, More than one machine'
        ) from None


def weights_digest(model: keras.Model) -> str:
    """A short hash of every weight: equal on all workers after a synchronous run."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def fit_multi_worker(
    model: keras.Model,
    distribution: Distribution,
    batches,
    validation,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> None:
    """model.fit's epochs under MultiWorkerMirroredStrategy.

    Every worker draws the same global batches from the seed and takes its own
    replicas' share of each; only whole global batches are used, so every
    worker runs the same number of steps. Validation runs on each worker's copy
    of the (identical) weights, so early stopping stops all workers together.
    """
    import tensorflow as tf

    strategy, replicas, size = distribution.strategy, distribution.replicas, batches.batch_size
    steps = distribution.steps(size, len(batches.labels))
    dataset = strategy.distribute_datasets_from_function(
        lambda context: _replica_batches(batches, steps, replicas, context)
    )
    loss_of = keras.losses.get(model.loss)

    def replica_step(pixels, labels):
        with tf.GradientTape() as tape:
            probabilities = model(pixels, training=True)
            loss = tf.nn.compute_average_loss(
                loss_of(labels, probabilities), global_batch_size=size
            )
            scaled = model.optimizer.scale_loss(loss)  # a no-op unless mixed precision
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, _correct(labels, probabilities)

    @tf.function
    def step(iterator):
        loss, correct = strategy.run(replica_step, args=next(iterator))
        add = tf.distribute.ReduceOp.SUM
        return strategy.reduce(add, loss, axis=None), strategy.reduce(add, correct, axis=None)

    with distribution.scope():
        model.optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    callbacks.on_train_begin()
    iterator = iter(dataset)  # one for the whole run: the batches are endless
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        loss, correct = 0.0, 0.0
        for _ in range(steps):
            step_loss, step_correct = step(iterator)
            loss, correct = loss + float(step_loss), correct + float(step_correct)
        logs = {"loss": loss / steps, "accuracy": correct / (steps * size)}
        if validation is not None:
            callbacks.on_test_begin()
            scores = _local_scores(model, validation, loss_of)
            logs |= {f"val_{name}": value for name, value in scores.items()}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end()


def _replica_batches(batches, steps: int, replicas: int, context):
    """The tf.data pipeline of one worker: its replicas' rows of each global batch."""
    import tensorflow as tf

    local = replicas // context.num_input_pipelines
    mine = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

    def rows():
        for epoch in itertools.count():  # endless: one iterator serves every epoch
            for index in range(steps):  # whole global batches only
                pixels, labels = batches[epoch * len(batches) + index]
                for replica in mine:  # rows replica, replica + R, ...: an even share
                    share = slice(replica, None, replicas)
                    part = (
                        pixels[share]
                        if isinstance(pixels, np.ndarray)
                        else tuple(p[share] for p in pixels)
                    )
                    yield part, labels[share]

    def spec(array):
        return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))

    views = batches.views
    inputs = spec(views[0]) if len(views) == 1 else tuple(map(spec, views))
    return tf.data.Dataset.from_generator(rows, output_signature=(inputs, spec(batches.labels)))


def _correct(labels, probabilities):
    import tensorflow as tf

    if labels.shape[-1] == 1:
        hits = tf.equal(labels[:, 0] > 0.5, probabilities[:, 0] > 0.5)
    else:
        hits = tf.equal(tf.argmax(labels, axis=-1), tf.argmax(probabilities, axis=-1))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def _local_scores(model: keras.Model, validation, loss_of) -> dict:
    """Loss and accuracy of this worker's weights on the whole validation split."""
    total_loss = correct = 0.0
    for index in range(len(validation)):
        pixels, labels = validation[index]
        probabilities = model(pixels, training=False)
        total_loss += float(keras.ops.sum(loss_of(labels, probabilities)))
        correct += float(_correct(labels, probabilities))
    count = len(validation.labels)
    return {"loss": total_loss / count, "accuracy": correct / count}
