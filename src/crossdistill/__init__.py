"""crossdistill: knowledge distillation for PyTorch — sides → projector → loss."""
from .distiller import Distiller
from .errors import CrossDistillError
from .methods import DataSetup, Method, build_method, register_method
from .models import create_model, list_models
from .projectors import Projector
from .taps import FeatureTap
from .tasks import create_task

__version__ = "0.1.0"
__all__ = ["CrossDistillError", "DataSetup", "Distiller", "FeatureTap", "Method", "Projector", "build_method",
           "create_model", "create_task", "list_models", "register_method"]
