"""Media layer of the reenactment worker: video I/O with audio passthrough, invisible watermark, visible
label, C2PA signing and verification. See docs/media.md."""

from shared.media.errors import MediaError

__all__ = ["MediaError"]
