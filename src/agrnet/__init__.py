"""AGRNet: adaptive graph representation learning and reasoning for face and human parsing."""

from agrnet.build import ABLATIONS, MODEL_ZOO, ModelConfig, ablation, build_agrnet
from agrnet.losses import AGRNetLoss, LossWeights
from agrnet.modeling.agrnet import AGRNet, AGRNetOutput

__all__ = [
    "ABLATIONS",
    "AGRNet",
    "AGRNetLoss",
    "AGRNetOutput",
    "LossWeights",
    "MODEL_ZOO",
    "ModelConfig",
    "ablation",
    "build_agrnet",
]
__version__ = "0.1.0"
