"""Minimal reproducer: Keras 3 ``Model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``.

Run two copies, one per worker, on free ports P0 and P1:

    python tests/multiworker_repro.py 0 P0,P1 MODE & python tests/multiworker_repro.py 1 P0,P1 MODE

With Keras 3.15 / TensorFlow 2.21:

- MODE ``plain``, the TensorFlow guide's recipe as it is (model built and compiled under the
  strategy's scope, then ``fit``), fails in ``Model._maybe_symbolic_build``, which passes the
  whole ``(x, y)`` batch to ``strategy.reduce`` ("Attempt to convert a value (PerReplica…").
- MODE ``nobuild`` gets past that (the model forgets its strategy; ``fit`` runs in the scope)
  and fails when ``fit`` reduces the scalar loss over the replicas with ``axis=0``: "Invalid
  reduction dimension 0 for input with 0 dimensions" (keras-team/keras#20585,
  tensorflow/tensorflow#72388).
- MODE ``fixed`` applies :func:`catsdogs.distributed.prepare_model` and trains.

Prints ``OK <loss> <sha256 of the weights>`` on success; exits 1 with the error otherwise.
"""

import hashlib
import json
import os
import sys

index, ports, mode = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
    "task": {"type": "worker", "index": index}})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.compile("sgd", "binary_crossentropy")
x = np.random.default_rng(index).random((32, 4), np.float32)
y = (x[:, :1] > 0.5).astype(np.float32)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
if mode == "nobuild":
    model._distribute_strategy = None
if mode == "fixed":
    from catsdogs.distributed import distribute, prepare_model  # noqa: E402

    prepare_model(model)
    data = distribute(strategy, data)
try:
    with strategy.scope():
        history = model.fit(data, epochs=2, verbose=0)
except Exception as exc:  # noqa: BLE001 - the reproducer reports whatever fit raises
    print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
    sys.exit(1)
weights = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
print(f"OK {history.history['loss'][-1]:.6f} {hashlib.sha256(weights).hexdigest()}", flush=True)
