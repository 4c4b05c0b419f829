"""contractive: contractive autoencoders and their relatives for PyTorch.

Public names::

    jacobian_frobenius_sq   per-sample ‖J_f(x)‖²_F of any supported encoder, differentiable
    Autoencoder, ModelConfig, TrainConfig
    fit, evaluate, train_run, load_run, load_dataset, ContractiveError
"""

__version__ = "0.1.0"

from .checkpoint import load_run
from .config import ModelConfig, TrainConfig
from .data import Dataset, load_dataset
from .errors import ContractiveError
from .models import Autoencoder
from .penalty import encode_with_penalty, jacobian_frobenius_sq
from .runs import encode, train_run
from .training import evaluate, fit

__all__ = [
    "Autoencoder",
    "ContractiveError",
    "Dataset",
    "ModelConfig",
    "TrainConfig",
    "__version__",
    "encode",
    "encode_with_penalty",
    "evaluate",
    "fit",
    "jacobian_frobenius_sq",
    "load_dataset",
    "load_run",
    "train_run",
]
