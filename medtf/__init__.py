"""medtf: TensorFlow/Keras toolkit for deep learning on medical images at HPC scale."""

__version__ = "0.1.0"

# Before anything imports TensorFlow: oneDNN kernels on every x86-64 CPU (TensorFlow's default enables them only
# on AVX-512/AMX machines; ~10x on Conv3D elsewhere) and threads sized to the CPUs this job may use. Only variables
# the user has not set; see medtf/runtime.py.
from medtf import runtime as _runtime

_runtime.configure()
