"""fastpage: high-throughput LLM inference and serving on a C++/CUDA core."""

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from fastpage import _C  # noqa: F401

__version__ = "0.1.0"
