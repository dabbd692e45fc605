"""Every error the library raises, so callers can catch one family and services can map each
class to one HTTP status.

    SplitDNNError
    ├── UnknownNameError        a teacher, split point or student that is not registered
    │   ├── UnknownTaskError        a task (or an empty task name) a bundle does not have (422)
    │   └── UnknownRateError        a split rate a bundle does not have (422)
    ├── ConfigError             a distillation config with a bad key or value
    ├── DataError               a data folder or list file that cannot be read
    ├── ImageError              uploaded bytes that cannot become an input tensor
    │   ├── UnsupportedImageError   not an image at all (415)
    │   ├── CorruptImageError       an image that is truncated or corrupt (400)
    │   └── ImageTooLargeError      over the configured byte or pixel limit (413)
    ├── BundleError             a model bundle that is missing, malformed or tampered with
    │   └── BundleMismatchError     head and tail hold different bundles (409)
    ├── WireError               an envelope that cannot be decoded (400)
    │   ├── WireVersionError        an envelope format version we do not speak
    │   ├── WireSizeError           a declared size that disagrees with the bytes or the model
    │   │   └── WireLimitError          a size or batch over the receiver's limit (413)
    │   ├── WireValueError          NaN or infinity in a payload or a scale (422)
    │   └── WireCompressionError    a zstd payload that is corrupt or inflates past its size
    ├── CheckpointError         a run, checkpoint, probe or default assets that cannot be read
    └── ExportError             an exported model disagrees with torch
"""

from __future__ import annotations


class SplitDNNError(Exception):
    """Base class of every error raised by splitdnn."""


class UnknownNameError(SplitDNNError, KeyError):
    """A registry lookup failed; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(UnknownNameError):
    """A request names a task the bundle does not have; a bad value of a request parameter,
    not a missing resource, so services answer 422."""


class UnknownRateError(UnknownNameError):
    """A request (or an envelope) names a split rate the bundle's ladder does not have; the
    message lists the rates there are. Services answer 422 (400 inside an envelope)."""


class ConfigError(SplitDNNError, ValueError):
    """A configuration file names an unknown key or holds a value of the wrong type."""


class DataError(SplitDNNError, ValueError):
    """A data set folder or list file is missing or malformed."""


class ImageError(SplitDNNError, ValueError):
    """Uploaded bytes could not be turned into an input tensor."""


class UnsupportedImageError(ImageError):
    """The bytes are not an image format we can decode."""


class CorruptImageError(ImageError):
    """The bytes start like an image but are truncated or corrupt."""


class ImageTooLargeError(ImageError):
    """The image exceeds the configured size limit."""


class BundleError(SplitDNNError):
    """A model bundle is missing, malformed, or a file does not match its sha256."""


class BundleMismatchError(BundleError):
    """Two parties of one split inference hold different bundles."""


class WireError(SplitDNNError, ValueError):
    """An envelope could not be decoded; the message says which check failed."""


class WireVersionError(WireError):
    """The envelope declares a format version this library does not speak."""


class WireSizeError(WireError):
    """A declared size is over the limit, or the bytes disagree with the declared shape/size."""


class WireLimitError(WireSizeError):
    """The envelope, its declared raw size or its batch is over the receiver's limit."""


class WireValueError(WireError):
    """The tensor (or a uint8 scale, in the precision it is used in) is NaN or infinite."""


class WireCompressionError(WireError):
    """The compressed payload is corrupt or decompresses beyond its declared raw size."""


class CheckpointError(SplitDNNError):
    """A run directory, checkpoint, probe file or default assets folder is missing, is not
    what it claims to be, or does not fit the model it is loaded into."""


class ExportError(SplitDNNError):
    """An exported ONNX model does not reproduce the torch model within tolerance."""
