"""Multi-worker training: TensorFlow's ``MultiWorkerMirroredStrategy`` (synchronous data-parallel
training, gradients all-reduced every step; https://www.tensorflow.org/guide/distributed_training).

A cluster is described the way every TensorFlow launcher describes it, by ``TF_CONFIG``
(https://www.tensorflow.org/guide/distributed_training#setting_up_the_tf_config_environment_variable):
Kubeflow's TFJob and Ray Train's ``TensorflowTrainer`` set it on each machine; ``catsdogs train
--workers HOST:PORT,… --worker-index I`` writes it from the command line. The chief (task
``chief``, else ``worker`` 0) writes the run folder; every other worker keeps its own files
(config, split, history, resumable backup) in :func:`worker_folder`, next to it, and deletes
them when training finished.

Keras 3's ``Model.fit`` does not run under a real multi-worker strategy as it is
(keras-team/keras#20585, tensorflow/tensorflow#72388); :func:`prepare_model` works around the
two bugs involved, and ``tests/test_distributed.py`` holds a minimal reproducer of each:

1. ``reduce_per_replica`` reduces every step output with ``strategy.reduce("MEAN", v,
   axis=0)``, which fails on the scalar losses and metrics every ``train_step`` returns
   ("Invalid reduction dimension 0 for input with 0 dimensions"). Fix: the step returns each
   value as a ``(1,)`` vector, which reduces to the scalar mean over the workers.
2. A model built under the strategy keeps it, and ``fit`` then calls
   ``_maybe_symbolic_build``, which passes the whole ``(images, labels)`` batch to
   ``strategy.reduce``; ``reduce`` takes one value, not a structure, and fails. Fix: the model
   forgets its strategy (``fit`` runs inside ``strategy.scope()`` instead, so
   ``model.distribute_strategy`` is still the multi-worker one) and builds when traced.

Also: Keras' multi-step loop (``steps_per_execution`` > 1) fails to trace under this strategy
("You must feed a value for placeholder tensor"), so multi-worker training runs one step per
call.

And one TensorFlow bug (3): the strategy's input iterator (``MultiDeviceIterator``) wraps our
dataset in per-device datasets of its own, with tf.data autotuning on. Destroying an iterator
with autotuning waits for its tuning thread's current sleep (which doubles up to a minute)
instead of waking it, and Keras destroys the training iterator at the start of every epoch
and the validation iterator after every validation: both workers sat idle for 2–23 s each
time, a third of the wall time of a 9-epoch run. :func:`make_strategy` turns autotuning off in
those per-device datasets too (:func:`catsdogs.data.pipeline.pipeline_options` does it for
ours); ``tests/iterator_repro.py plain|fixed`` times the wait without and with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.data.ops import multi_device_iterator_ops
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context

from catsdogs.data.pipeline import pipeline_options
from catsdogs.errors import ConfigError, RunError

TF_CONFIG = "TF_CONFIG"
"""The environment variable TensorFlow reads the cluster from."""

HEARTBEAT_TIMEOUT_SECONDS = 30
"""How long a worker may go without a heartbeat to TensorFlow's coordination service before
every worker stops with an error. TensorFlow's default is 10 s, and two workers sharing a busy
2-core machine with other processes missed it now and then during a healthy first epoch; a
worker that really died is still reported within this time."""


@dataclass(frozen=True)
class Cluster:
    """The machines of one multi-worker run and which one this process is.

    Attributes:
        addresses: every task's ``host:port``, in rank order (the chief first).
        rank: this process's place in ``addresses``; 0 is the chief.
        tf_config: the ``TF_CONFIG`` JSON object the strategy is created from.
    """

    addresses: tuple[str, ...]
    rank: int
    tf_config: dict

    @property
    def size(self) -> int:
        """Number of workers (the chief included)."""
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder."""
        return self.rank == 0

    @classmethod
    def from_flags(cls, workers: str, index: int) -> Cluster:
        """The cluster of ``--workers HOST:PORT,HOST:PORT,… --worker-index I``.

        Raises:
            ConfigError: fewer than two addresses, an address without a port, or an index out
                of range.
        """
        addresses = tuple(a.strip() for a in workers.split(",") if a.strip())
        if len(addresses) < 2:
            raise ConfigError(f"--workers {workers!r}: give at least two HOST:PORT addresses, "
                              f"comma-separated")
        for a in addresses:
            host, _, port = a.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--workers: {a!r} is not HOST:PORT")
        if not 0 <= index < len(addresses):
            raise ConfigError(f"--worker-index {index}: must be 0 to {len(addresses) - 1} "
                              f"(one per --workers address)")
        config = {"cluster": {"worker": list(addresses)}, "task": {"type": "worker",
                                                                   "index": index}}
        return cls(addresses, index, config)

    @classmethod
    def from_tf_config(cls, text: str) -> Cluster | None:
        """The cluster of a ``TF_CONFIG`` value, as a launcher sets it: tasks ``chief`` (at
        most one) and ``worker``; None when it names a single task (nothing to distribute).

        Raises:
            ConfigError: not JSON, or without ``cluster``/``task``, or a task type other than
                chief and worker (parameter servers and evaluators are not supported).
        """
        try:
            config = json.loads(text)
            cluster, task = config["cluster"], config["task"]
            kind, index = task["type"], int(task["index"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{TF_CONFIG} is not a cluster description ({exc}): {text[:200]}"
                              ) from None
        unknown = set(cluster) - {"chief", "worker"}
        if unknown or kind not in ("chief", "worker"):
            raise ConfigError(f"{TF_CONFIG}: only chief and worker tasks are supported, got "
                              f"{sorted(unknown | {kind})}")
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        addresses = tuple(chiefs + workers)
        if len(addresses) < 2:
            return None
        rank = index if kind == "chief" else len(chiefs) + index
        if rank >= len(addresses):
            raise ConfigError(f"{TF_CONFIG}: task {kind} {index} is not in the cluster")
        return cls(addresses, rank, config)


def local_workers(n: int) -> str:
    """``--workers`` for ``n`` workers on this machine: ``127.0.0.1:PORT,…`` with ports that
    are free now (tests and ``benchmarks/scaling.py``; another process may take one before the
    workers start, which then fail to bind and exit)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in socks)
    finally:
        for s in socks:
            s.close()


def find_cluster(workers: str | None = None, index: int = 0) -> Cluster | None:
    """The cluster of this process: from ``--workers``/``--worker-index`` when given, else from
    a ``TF_CONFIG`` set by a launcher, else None (one machine).

    Raises:
        ConfigError: bad flags or a bad ``TF_CONFIG`` (see :class:`Cluster`).
    """
    if workers:
        return Cluster.from_flags(workers, index)
    if os.environ.get(TF_CONFIG):
        return Cluster.from_tf_config(os.environ[TF_CONFIG])
    return None


def make_strategy(cluster: Cluster) -> tf.distribute.Strategy:
    """Create the ``MultiWorkerMirroredStrategy`` of ``cluster``. Call it before any other
    TensorFlow operation of the process (TensorFlow configures collectives at start-up).

    TensorFlow's own health check is kept on: when a worker dies, the others' collectives fail
    (``tf.errors.UnavailableError`` and kin) instead of waiting for ever; the coordination
    service declares a worker dead after :data:`HEARTBEAT_TIMEOUT_SECONDS` without a heartbeat
    (:func:`configure_coordination`). The strategy's per-device input datasets get our tf.data
    options (:func:`device_datasets_untuned`).
    """
    device_datasets_untuned()
    os.environ[TF_CONFIG] = json.dumps(cluster.tf_config)
    configure_coordination(cluster)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def configure_coordination(cluster: Cluster) -> None:
    """Configure TensorFlow's coordination service (its workers' heartbeats and failure
    detection) as ``MultiWorkerMirroredStrategy`` does, with the heartbeat timeout of
    :data:`HEARTBEAT_TIMEOUT_SECONDS` instead of TensorFlow's 10 s. The strategy keeps a
    service configured before it is created (``CollectiveAllReduceExtended.
    _initialize_multi_worker`` configures one only when none is); the settings are TensorFlow's
    ``CoordinationServiceConfig`` (``xla/tsl/protobuf/coordination_config.proto``)."""
    spec = tf.train.ClusterSpec(cluster.tf_config["cluster"])
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_SECONDS * 1000)


def heartbeat_timeout() -> float:
    """Seconds this process's coordination service waits for a worker's heartbeat, as the
    strategy was configured (0: TensorFlow's default; :func:`make_strategy` sets
    :data:`HEARTBEAT_TIMEOUT_SECONDS`)."""
    config = context.context().coordination_service
    return config.heartbeat_timeout_in_ms / 1000 if config else 0.0


def device_datasets_untuned() -> None:
    """Give the per-device datasets of TensorFlow's ``MultiDeviceIterator`` (the input iterator
    of every multi-worker strategy) :func:`catsdogs.data.pipeline.pipeline_options`, autotuning
    off, so destroying an iterator does not wait for a tuning thread's sleep (TensorFlow bug 3
    in the module docstring). It wraps TensorFlow's private ``multi_device_iterator_ops.
    _create_device_dataset`` (``tests/test_distributed.py`` fails if that function goes away);
    calling it again changes nothing."""
    create = multi_device_iterator_ops._create_device_dataset
    if getattr(create, "untuned", False):
        return

    def untuned(*args, **kwargs) -> tf.data.Dataset:
        return create(*args, **kwargs).with_options(pipeline_options())

    untuned.untuned = True
    multi_device_iterator_ops._create_device_dataset = untuned


def worker_folder(run: str, rank: int) -> str:
    """Where a worker other than the chief keeps its files: ``RUN.worker-RANK`` beside the run
    folder (rank 0, the chief, uses the run folder itself)."""
    return run if rank == 0 else f"{os.path.normpath(run)}.worker-{rank}"


def remove_worker_folder(folder: str, cluster: Cluster) -> None:
    """Delete a finished worker's own :func:`worker_folder` (never the chief's run folder)."""
    if not cluster.is_chief:
        shutil.rmtree(folder, ignore_errors=True)


def fingerprint(model: keras.Model) -> str:
    """A short SHA-256 of the model's weights (float32 bytes, in order): equal on every worker
    of a multi-worker run, which the workers print at the end so it can be checked."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, np.float32).tobytes())
    return digest.hexdigest()[:16]


def shard(items, cluster: Cluster | None):
    """This worker's share of ``items`` (a list or an array): every ``size``-th item from
    ``rank``, after dropping the last ``len(items) % size`` items so every worker gets as many
    items, hence as many steps (a worker with one step more would wait for ever in the
    all-reduce). Taken before anything is decoded. Without a cluster: ``items`` unchanged."""
    if cluster is None:
        return items
    n = len(items) // cluster.size * cluster.size
    return items[cluster.rank:n:cluster.size]


def prepare_model(model: keras.Model) -> None:
    """Make a compiled model trainable with ``fit`` under a multi-worker strategy (Keras 3 bugs
    1 and 2 in the module docstring): its ``train_step`` and ``test_step`` return ``(1,)``
    vectors, and it forgets the strategy it was built under (call ``fit`` inside
    ``strategy.scope()``)."""
    train_step, test_step = model.train_step, model.test_step

    def as_vectors(logs: dict) -> dict:
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    model.train_step = lambda data: as_vectors(train_step(data))
    model.test_step = lambda data: as_vectors(test_step(data))
    model._distribute_strategy = None


def distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """``dataset`` (this worker's shard, batched at the per-worker batch size) as the strategy's
    input, unchanged: no automatic sharding and no re-batching (``experimental_distribute_
    dataset`` would split each batch across all workers)."""
    return strategy.distribute_datasets_from_function(lambda context: dataset)


def all_reduce(strategy: tf.distribute.Strategy, values: list[np.ndarray], op: str
               ) -> list[np.ndarray]:
    """All-reduce ``values`` across the workers (``op``: ``"SUM"`` or ``"MEAN"``) in one
    collective: flattened into one vector, reduced with ``strategy.reduce``, split back. Every
    worker must call it at the same point, with arrays of the same shapes, else it waits for
    ever (until TensorFlow's health check finds a dead worker).

    Args:
        values: numbers as arrays of any shape; carried as float64, which holds float32 values
            and integers below 2**53 exactly.

    Returns:
        The reduced arrays, float64, in the same order and shapes.
    """
    if not values:
        return []
    arrays = [np.asarray(v, np.float64) for v in values]
    flat = np.concatenate([a.ravel() for a in arrays])
    mine = strategy.experimental_distribute_values_from_function(lambda context: tf.constant(flat))
    total = strategy.reduce(op, mine, axis=None).numpy()
    ends = np.cumsum([a.size for a in arrays])[:-1]
    return [part.reshape(a.shape) for part, a in zip(np.split(total, ends), arrays, strict=True)]


def broadcast(strategy: tf.distribute.Strategy, cluster: Cluster,
              values: list[np.ndarray]) -> list[np.ndarray]:
    """The chief's ``values`` on every worker: an all-reduce SUM to which the others add zeros
    (:func:`all_reduce`)."""
    scale = 1.0 if cluster.is_chief else 0.0
    return all_reduce(strategy, [np.asarray(v, np.float64) * scale for v in values], "SUM")


PLAN_NUMBERS = ("val_seconds", "reserve_seconds", "max_steps", "planned_steps", "total_steps",
                "steps_done", "speed", "spent_seconds", "calibration_seconds")
"""The :class:`catsdogs.budget.BudgetPlan` fields the workers agree on (with its measured
seconds per step at each size)."""


class PlanAgreement:
    """Every worker takes the chief's time-budget plan: measured costs, planned steps and the
    re-plans made while training (each worker measures and re-plans, then the chief's numbers
    replace its own), so all stop at the same step and none waits for ever in the all-reduce.
    Call it at the same points on every worker (a time-budget run: after every step, about
    5 ms on one machine)."""

    def __init__(self, strategy: tf.distribute.Strategy, cluster: Cluster, sizes: list[int]):
        self.strategy, self.cluster, self.sizes = strategy, cluster, [str(s) for s in sizes]

    def __call__(self, plan) -> None:
        """Overwrite ``plan`` (a :class:`catsdogs.budget.BudgetPlan`) with the chief's (one
        small collective)."""
        mine = [plan.step_seconds[s] for s in self.sizes] + [getattr(plan, f)
                                                             for f in PLAN_NUMBERS]
        chief = broadcast(self.strategy, self.cluster, [np.array(mine)])[0]
        plan.step_seconds = dict(zip(self.sizes, map(float, chief), strict=False))
        for name, value in zip(PLAN_NUMBERS, chief[len(self.sizes):], strict=True):
            setattr(plan, name, type(getattr(plan, name))(value))


def _assign(variables, values) -> None:
    for v, value in zip(variables, values, strict=True):
        v.assign(value.astype(np.dtype(v.dtype)))


class FollowChief(keras.callbacks.Callback):
    """Start every worker from the chief's state: after the backups were restored (place it
    after ``BackupAndRestore``), broadcast the chief's weights, optimizer state and epoch.

    Each worker restores its own backup, and a worker killed while the others were saving
    may be one epoch behind them; the chief's state decides, so every worker runs the same
    steps and the all-reduce cannot wait for ever."""

    def __init__(self, strategy: tf.distribute.Strategy, cluster: Cluster, initial_epoch: int):
        super().__init__()
        self.strategy, self.cluster, self.initial_epoch = strategy, cluster, initial_epoch

    def on_train_begin(self, logs=None):
        model = self.model
        model.optimizer.build(model.trainable_variables)
        variables = [*model.weights, *model.optimizer.variables]
        epoch = model._initial_epoch or self.initial_epoch
        values = broadcast(self.strategy, self.cluster,
                           [v.numpy() for v in variables] + [np.array(epoch)])
        _assign(variables, values[:-1])
        model._initial_epoch = int(values[-1])


class AverageStatistics(keras.callbacks.Callback):
    """Average the batch-norm moving statistics over the workers before each validation and
    at the end of each epoch (place it first, before the callbacks that save weights).

    Gradients are all-reduced every step, so the trainable weights are the same on every
    worker; Keras 3 updates the moving mean and variance of ``BatchNormalization`` from each
    worker's own batches only, so they drift apart. Averaging them is what Keras 2 did every
    step (moving statistics aggregated by MEAN); once per epoch costs one small all-reduce and
    leaves every worker with the same weights at every checkpoint. (``BatchNormalization(
    synchronized=True)`` would instead normalise with the global batch statistics, two
    all-reduces per layer per step, and change the recipe.)"""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy

    def _average(self) -> None:
        variables = [v for v in self.model.non_trainable_weights
                     if np.dtype(v.dtype).kind == "f"]
        _assign(variables, all_reduce(self.strategy, [v.numpy() for v in variables], "MEAN"))

    def on_test_begin(self, logs=None):
        self._average()

    def on_epoch_end(self, epoch, logs=None):
        self._average()


Shared = tuple[tuple[int, int], Callable[[np.ndarray], np.ndarray]]
"""A multi-worker scan's ``(share, agree)`` (:func:`catsdogs.data.scan.inspect_all`)."""


def scan_share(strategy: tf.distribute.Strategy, cluster: Cluster) -> Shared:
    """This worker's share of the scan, ``(rank, size)``, and the all-reduce SUM by which the
    workers agree on the unreadable files."""
    return (cluster.rank, cluster.size), lambda flags: all_reduce(strategy, [flags], "SUM")[0]


PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError)
"""What a collective raises when another worker died or cannot be reached (TensorFlow's health
check aborts the collectives with one of these)."""


def worker_lost(cluster: Cluster, error: Exception) -> RunError:
    """The error a worker raises when the cluster broke mid-run (another worker died or cannot
    be reached): what happened and how to resume."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines
               if any(w in line.lower() for w in ("unavailable", "connection", "deadline",
                                                  "socket", "unreachable", "peer"))]
    first = (telling or lines or [type(error).__name__])[0]
    return RunError(f"multi-worker training stopped: a worker of {', '.join(cluster.addresses)} "
                    f"failed or cannot be reached ({type(error).__name__}: {first[:200]}). "
                    f"The last completed epoch is saved in each worker's backup; relaunch "
                    f"every worker with the same command plus --resume")
