"""Videos (optional): frames sampled at ``fps``, each frame one row of codes, as CogVideo does.

Reading needs PyAV (``pip install av``). Without it, every video is listed in the manifest as
``skipped`` with that reason and the images of the run go on; a later run with PyAV installed
tokenizes them (skipped inputs are not committed). A video's frames are decoded in one pass and
committed together, so a video is done or not done as a whole.

Frame ``k`` is the first decoded frame whose timestamp is at or after ``k / fps`` seconds.
"""

from __future__ import annotations

import math

from .inputs import Item

NO_READER = "no video reader installed: pip install av (PyAV) to tokenize videos"


def have_reader() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def video_item(path: str, source: str, fps: float) -> Item:
    """An item for a video: its expected frame count at ``fps`` (read from the container's header)."""
    if not have_reader():
        return Item(source, "unsupported", path, reason=NO_READER)
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            if duration is None and container.duration:
                duration = container.duration / 1e6  # microseconds
    except Exception as err:  # noqa: BLE001 - PyAV raises many error types for broken files
        return Item(source, "failed", path, reason=f"unreadable video: {type(err).__name__}: {err}")
    frames = max(1, math.ceil((duration or 1.0) * fps))
    return Item(source, "video", path, weight=frames)


def read_frames(path: str, fps: float):
    """Yield ``(frame_index, seconds, PIL image)`` for frames sampled at ``fps``."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        next_index = 0
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            seconds = float(frame.pts * stream.time_base)
            if seconds + 1e-6 >= next_index / fps:
                yield next_index, seconds, frame.to_image()
                next_index = math.floor(seconds * fps + 1e-6) + 1
