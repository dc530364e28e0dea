"""Vision families: one module per family; importing this package registers them all."""
from . import cfsr  # noqa: F401
from . import rrformer  # noqa: F401
from . import cct  # noqa: F401
from . import dereflect  # noqa: F401
from . import sret  # noqa: F401
from . import hat  # noqa: F401
from . import craft  # noqa: F401
from . import mambair  # noqa: F401
from . import vim  # noqa: F401
