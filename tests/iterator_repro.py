"""Minimal reproducer: destroying a ``tf.distribute`` input iterator waits for tf.data's
autotuning thread (TensorFlow bug 3 in :mod:`catsdogs.distributed`).

    python tests/iterator_repro.py MODE [SECONDS_PER_BATCH]

One process, a ``MultiWorkerMirroredStrategy`` of one worker (no ``TF_CONFIG``), a dataset
with autotuning off (:func:`catsdogs.data.pipeline.pipeline_options`), iterated for 4 epochs
the way Keras does: a new iterator every epoch, the old one destroyed. The strategy's
``MultiDeviceIterator`` wraps the dataset in per-device datasets with autotuning on, and
destroying one waits for its tuning thread's sleep, which doubles up to a minute. With
Keras 3.15 / TensorFlow 2.21 on a 2-core CPU (batches 0.2 s apart):

- MODE ``plain`` (TensorFlow as it is): ``del`` takes 0–8 s per epoch;
- MODE ``fixed`` (:func:`catsdogs.distributed.device_datasets_untuned` first): 0.00 s.

Prints, per epoch, the seconds ``del iterator`` took, then ``AUTOTUNE <value>``: whether the
per-device datasets autotune (``None`` is TensorFlow's default, on; ``False`` is off).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from catsdogs.data.pipeline import pipeline_options  # noqa: E402
from catsdogs.distributed import device_datasets_untuned  # noqa: E402

mode = sys.argv[1]
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
if mode == "fixed":
    device_datasets_untuned()
strategy = tf.distribute.MultiWorkerMirroredStrategy()
dataset = tf.data.Dataset.range(64).batch(4).with_options(pipeline_options())
distributed = strategy.distribute_datasets_from_function(lambda context: dataset)
autotune = []
for epoch in range(4):
    iterator = iter(distributed)
    autotune += [d._dataset.options().autotune.enabled  # the per-device datasets
                 for w in iterator._iterators for d in w._iterator._device_iterators]
    for _ in iterator:
        time.sleep(pause)
    start = time.perf_counter()
    del iterator
    print(f"epoch {epoch}: del {time.perf_counter() - start:.2f} s", flush=True)
print(f"AUTOTUNE {set(autotune)}", flush=True)
