"""gaspar2: put a CPU-bound or blocking Python handler on every core behind one TCP port."""

__version__ = "0.1.0"

from . import client
from .consumer import Consumer
from .producer import Producer
from .workers.command import Command

__all__ = ["Command", "Consumer", "Producer", "__version__", "client"]
