"""Wire formats: everything that turns bytes from a peer into values, and back.

`framing` is the length-prefixed frame with a size cap checked before allocating; `messages`
is the msgpack envelope (`v` version, `t` type) with typed field access; `tensors` is the tensor
codec (dtype, shape, raw little-endian bytes; never pickle). Every decoder raises
`p2pinfer.errors.WireError` (or a subclass) and nothing else. No networking lives here: framing
works on any object with `async read(n)` / `async write(data)`.
"""

from p2pinfer.errors import FrameTooLarge as FrameTooLarge
from p2pinfer.errors import UnsupportedVersion as UnsupportedVersion
from p2pinfer.errors import WireError as WireError

from .framing import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from .framing import EndOfStream as EndOfStream
from .framing import read_frame as read_frame
from .framing import write_frame as write_frame
from .messages import WIRE_VERSION as WIRE_VERSION
from .messages import Message as Message
from .messages import decode_message as decode_message
from .messages import encode_message as encode_message
from .messages import error_message as error_message
from .tensors import ACTIVATION_DTYPES as ACTIVATION_DTYPES
from .tensors import DTYPES as DTYPES
from .tensors import tensor_from_wire as tensor_from_wire
from .tensors import tensor_to_wire as tensor_to_wire
