"""The model zoo: one registry, one public constructor.

Every model takes float32 images of shape (image_size, image_size, 3) with values in [0, 1]
and does any further preprocessing (e.g. scaling to [-1, 1] for a pretrained backbone) inside
itself, so the input pipeline never has to guess. Outputs are class probabilities in float32,
also under mixed precision.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from convlab.errors import ConvlabError


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is and the input it expects."""

    name: str
    builder: Callable
    default_size: int  # the size it was designed or pretrained for
    description: str
    pretrained: bool = False  # has ImageNet weights (downloaded or shipped)
    # Trains faster in mixed_bfloat16 than float32 on CPUs with native bfloat16 (measured:
    # benchmarks/profile_step.py): `--precision auto` then picks bfloat16 there.
    cpu_bfloat16: bool = False


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, default_size: int, description: str, pretrained: bool = False,
                   cpu_bfloat16: bool = False):
    """Decorator registering `builder(num_classes, image_size, **options) -> keras.Model`."""

    def wrap(builder):
        _REGISTRY[name] = ModelInfo(name, builder, default_size, description, pretrained,
                                    cpu_bfloat16)
        return builder

    return wrap


def _load_families() -> None:
    """Import every module of this package once: each family registers its models when
    imported, so a new family is one new file here."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    _load_families()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def model_names() -> list[str]:
    """The registered models' names, sorted, read from the families' `@register_model("NAME"`
    lines without importing them (no Keras, no TensorFlow): a name can be checked before
    anything heavy loads. tests/test_structure.py holds this equal to `list_models()`."""
    import ast
    from pathlib import Path

    names = []
    for source in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_model"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.append(node.args[0].value)
    return sorted(names)


def check_model_or_recipe(name: str) -> None:
    """Raise a one-line error, with the nearest names, when `name` is neither a model nor a
    recipe. Cheap: no TensorFlow (the CLI checks its arguments before loading it)."""
    import difflib

    from convlab.config import RECIPES

    known = [*model_names(), *RECIPES]
    if name in known:
        return
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    raise ConvlabError(f"unknown model or recipe {name!r}; "
                       + (f"did you mean {' or '.join(map(repr, near))}? " if near else "")
                       + "see `convlab models` and `convlab recipes`")


def get_model_info(name: str) -> ModelInfo:
    _load_families()
    if name not in _REGISTRY:
        raise ConvlabError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} "
            "(see `convlab models`)"
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, image_size: int | None = None, **options):
    """Build a registered model.

    Args:
        name: registry name, e.g. "squeezenet" (see `list_models()`).
        num_classes: size of the softmax output.
        image_size: square input size in pixels; defaults to the model's own.
        **options: family-specific options (e.g. `weights`, `dropout`, `layout`).

    Returns:
        An uncompiled `keras.Model` taking [0, 1] float images and returning probabilities.

    Raises:
        ConvlabError: unknown name or a bad option value.
    """
    info = get_model_info(name)
    if num_classes < 2:
        raise ConvlabError(f"num_classes must be at least 2, received: {num_classes}")
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        have = ", ".join(accepted) or "none"
        raise ConvlabError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; its "
                           f"options: {have} (e.g. --unfreeze is for pretrained models only)")
    return info.builder(num_classes, image_size or info.default_size, **options)


def model_options(name: str) -> dict:
    """The options `create_model(name, ...)` accepts, with their defaults."""
    params = inspect.signature(get_model_info(name).builder).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def rebuilt(model, edit: Callable[[dict], None]):
    """A copy of `model` with its weights, rebuilt from its serialized config after
    `edit(node)` has changed, in place, every dict of that config (nested backbones
    included). Every layer keeps the rest of its settings (trainable or not, batch norm
    frozen or not), so the weights carry over in order."""
    import keras

    config = keras.saving.serialize_keras_object(model)

    def walk(node) -> None:
        if isinstance(node, dict):
            edit(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def with_free_size(model):
    """The same network, weights and all, with free spatial input dimensions, so it runs on
    images of any size: its convolutions and global average pooling do not depend on the
    size, only the (fixed) shapes of its input layers do. Used to evaluate, predict and
    export a model at a larger size than it was trained at (FixRes)."""

    def free(node: dict) -> None:
        if node.get("class_name") == "InputLayer":
            shape = node["config"]["batch_shape"]
            node["config"]["batch_shape"] = [shape[0], None, None, shape[-1]]
        build = node.get("build_config")
        if isinstance(build, dict) and len(build.get("input_shape") or ()) == 4:
            shape = build["input_shape"]
            build["input_shape"] = [shape[0], None, None, shape[3]]

    return rebuilt(model, free)
