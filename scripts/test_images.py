"""The deterministic test images of the vision checks, built the same way by
crates/raffm/tests/dinov2_real.rs: a smooth pattern in the range of normalised pixels,
different per image and channel."""
import numpy


def pixels(batch: int, height: int, width: int) -> numpy.ndarray:
    b, c, y, x = numpy.meshgrid(numpy.arange(batch), numpy.arange(3), numpy.arange(height),
                                numpy.arange(width), indexing="ij")
    return (1.5 * numpy.sin(0.05 * (x + 1) * (c + 1) + 0.07 * y + 0.3 * b)).astype(numpy.float32)
