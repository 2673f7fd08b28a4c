"""Array type used in jaxtyping annotations: jax arrays, tracers and NumPy arrays."""

import jax
import numpy as np

ArrayT = jax.Array | np.ndarray
# A Python number, or a traced/concrete scalar array (e.g. a scale inside jit).
Scalar = float | int | jax.Array
# A size or index: a Python int or a NumPy integer scalar (e.g. np.int64 from a shape sum).
IntLike = int | np.integer
