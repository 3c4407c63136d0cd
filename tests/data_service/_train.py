"""Run in a subprocess: `medtf.training.engine.train` on a config (argv[1], JSON) into argv[2]; argv[3] logical CPUs
(2 for a MirroredStrategy fit: they must be configured before TensorFlow initialises)."""

import json
import sys

import tensorflow as tf

if int(sys.argv[3]) > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(sys.argv[3]))

from medtf.training.engine import train  # noqa: E402

result = train(json.loads(sys.argv[1]), sys.argv[2])
print("RESULT " + json.dumps({"replicas": result["strategy"].num_replicas_in_sync, "loss": result["history"]["loss"]}))
