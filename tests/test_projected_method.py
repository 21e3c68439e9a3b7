"""The projected-method base holds the options FitNet, CC, AB and FSP share (the projector's direction
and its readings) and builds their projectors."""
import pytest

from crossdistill.config import options_model
from crossdistill.errors import ConfigError
from crossdistill.methods import METHODS, build_method
from crossdistill.methods.projected import ProjectedMethod
from crossdistill.projectors import ProjectorOptions


@pytest.mark.parametrize("name", ["fitnet", "cc", "ab", "fsp"])
def test_shared_options_come_from_the_base(name):
    cls = METHODS.get(name)
    assert issubclass(cls, ProjectedMethod) and "projector_options" not in cls.__init__.__wrapped__.__code__.co_varnames
    assert {"projector", "projector_options"} <= set(options_model(cls).model_fields)
    term = build_method(name, projector="inverted", projector_options={"orthogonal": True})
    assert term.projector_direction == "inverted" and term.projector_options == ProjectorOptions(orthogonal=True)
    assert build_method(name).projector_direction == "standard"


def test_each_method_says_which_directions_it_allows():
    assert build_method("fitnet", projector="identity").projector_direction == "identity"
    assert build_method("cc", projector="identity").projector_direction == "identity"
    for name in ("ab", "fsp"):
        with pytest.raises(ConfigError, match=f"method '{name}': bad value for 'projector' \\('identity'\\): valid choices: standard, inverted"):
            build_method(name, projector="identity")
    with pytest.raises(ConfigError, match="bad value for 'projector'"):
        build_method("fitnet", projector="sideways")
