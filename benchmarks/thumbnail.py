"""The thumbnail workload: a real library's work on a mid-sized request.

``thumbnail`` is the handler (``benchmarks.thumbnail:thumbnail``, found from the repository's
root as every server here finds a handler): a JPEG in, its thumbnail within 128x128 out,
encoded as JPEG, all with Pillow. ``photo`` writes the request: a JPEG of about 200 KB,
made with Pillow from a seeded generator, so the same on every run with the same Pillow.

    python benchmarks/thumbnail.py [PATH]      # write the photo (default: in benchmarks/build/)
"""

import io
import os
import random
import sys

from PIL import Image

BOX = (128, 128)
PHOTO_SIZE = (1024, 768)
PHOTO_BYTES = 200_000
PHOTO_QUALITY = 85


def thumbnail(payload):
    """An image's thumbnail within 128x128 (aspect kept), as JPEG. Converted to RGB first,
    as a thumbnailer taking any image must before it writes a JPEG: the image is decoded in
    full, a few MiB of memory per request (the case an allocator's moving thresholds hurt)."""
    image = Image.open(io.BytesIO(payload)).convert("RGB")
    image.thumbnail(BOX)
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def _encode(smooth, noise, weight):
    out = io.BytesIO()
    Image.blend(smooth, noise, weight).save(out, "JPEG", quality=PHOTO_QUALITY)
    return out.getvalue()


def make_photo(target=PHOTO_BYTES):
    """A 1024x768 JPEG of about ``target`` bytes: three gradients, one per channel, blended
    with seeded noise; the noise's weight, found by bisection, sets the size."""
    w, h = PHOTO_SIZE
    smooth = Image.merge("RGB", (Image.linear_gradient("L").resize(PHOTO_SIZE),
                                 Image.linear_gradient("L").rotate(90).resize(PHOTO_SIZE),
                                 Image.radial_gradient("L").resize(PHOTO_SIZE)))
    noise = Image.frombytes("RGB", PHOTO_SIZE, random.Random(20).randbytes(w * h * 3))
    low, high = 0.0, 1.0
    best = _encode(smooth, noise, high)
    for _ in range(20):
        weight = (low + high) / 2
        data = _encode(smooth, noise, weight)
        if abs(len(data) - target) < abs(len(best) - target):
            best = data
        if abs(len(data) - target) <= target // 100:
            break
        low, high = (weight, high) if len(data) < target else (low, weight)
    return best


def photo(path):
    """The request's path: ``path``, written first if it is not there yet."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = "%s.%d" % (path, os.getpid())
        with open(temporary, "wb") as f:
            f.write(make_photo())
        os.replace(temporary, path)
    return path


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    print(photo(sys.argv[1] if len(sys.argv) > 1
                else os.path.join(here, "build", "photo-200KB.jpg")))
