"""Dataset registration: the concrete-defect datasets (on import) and a register-your-own API."""

from .register_concrete_defects import (  # noqa: F401
    register_all_concrete_defects,
    register_concrete_defects,
)
from .register_panoptic import (  # noqa: F401
    panoptic_metadata,
    register_panoptic_dataset,
    unregister_dataset,
)
