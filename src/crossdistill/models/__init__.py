"""Model zoo. Importing this package registers every built-in model."""
from .registry import MODELS, create_model, list_models, register_model

from . import cifar_resnet, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2, resnet  # noqa: F401,E402
from . import cifar_resnet_width  # noqa: F401,E402
from . import dense  # noqa: F401,E402
from . import vit, mobilenetv2_imagenet  # noqa: F401,E402

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
