"""Registry and builder of DETR mask heads (see ``d2_detr.modeling.mask_heads``)."""

from detectron2.utils.registry import Registry

MASK_HEAD_REGISTRY = Registry("DETR_MASK_HEAD")
MASK_HEAD_REGISTRY.__doc__ = """Mask heads of DETR, built by ``build_mask_head(cfg, shapes)``."""


def register_mask_head(name):
    """Class decorator: register a head under the ``MODEL.DETR.MASK_HEAD`` value ``name``."""

    def register(cls):
        MASK_HEAD_REGISTRY._do_register(name, cls)
        return cls

    return register


def build_mask_head(cfg, input_shape):
    """The head ``cfg.MODEL.DETR.MASK_HEAD`` for a backbone with output shapes ``input_shape``."""
    name = cfg.MODEL.DETR.MASK_HEAD
    if name not in MASK_HEAD_REGISTRY:
        names = sorted(k for k, _ in MASK_HEAD_REGISTRY)
        raise ValueError(f"MODEL.DETR.MASK_HEAD {name!r}: choose from {names}")
    return MASK_HEAD_REGISTRY.get(name)(cfg, input_shape)
