"""Array type used in jaxtyping annotations: jax arrays, tracers and NumPy arrays."""

import jax
import numpy as np

ArrayT = jax.Array | np.ndarray
