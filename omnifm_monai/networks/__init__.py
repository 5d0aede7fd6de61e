from .blocks import *  # noqa: F401,F403
from .blocks import __all__ as _blocks
from .nets import *  # noqa: F401,F403
from .nets import __all__ as _nets

__all__ = [*_blocks, *_nets]
