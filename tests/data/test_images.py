import io

import numpy as np
import pytest
from PIL import Image

from chaiderm.data.images import MAX_PIXELS, UPLOAD_FORMATS, load_image, load_mask
from chaiderm.errors import DataError


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_rgb_jpeg_and_any_size(tmp_path):
    arr = (np.arange(300 * 200 * 3) % 255).astype(np.uint8).reshape(200, 300, 3)
    p = _save(tmp_path / "a.png", Image.fromarray(arr))
    out = load_image(p)
    assert out.shape == (200, 300, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_grayscale_and_16bit(tmp_path):
    g = load_image(_save(tmp_path / "g.png", Image.fromarray(np.full((9, 10), 77, np.uint8), "L")))
    assert g.shape == (9, 10, 3) and (g == 77).all()
    a16 = np.linspace(0, 65535, 80, dtype=np.uint16).reshape(8, 10)
    out = load_image(_save(tmp_path / "h.png", Image.fromarray(a16)))
    assert out.shape == (8, 10, 3) and out.min() == 0 and out.max() == 255
    assert (np.diff(out[..., 0].ravel().astype(int)) >= 0).all()  # order kept


def test_exif_rotation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif)
    assert load_image(p).shape == (20, 10, 3)


@pytest.mark.parametrize(
    "content,needle",
    [(b"", "empty"), (b"this is not an image at all", "not an image"), (None, "corrupt or truncated")],
)
def test_bad_files_name_the_file(tmp_path, content, needle):
    p = tmp_path / "bad.jpg"
    if content is None:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]  # truncated
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_image(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_oversized_image_refused_before_decoding(tmp_path):
    side = int(np.sqrt(MAX_PIXELS)) + 10
    p = _save(tmp_path / "big.png", Image.new("1", (side, side)))
    with pytest.raises(DataError, match="over the"):
        load_image(p)


def test_bytes_input_and_mask(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(buf, "PNG")
    assert load_image(buf.getvalue()).shape == (8, 8, 3)
    m = np.zeros((8, 8), np.uint8)
    m[1:3, 1:3] = 255
    assert load_mask(_save(tmp_path / "m.png", Image.fromarray(m))).sum() == 4


@pytest.mark.parametrize(
    ("size", "code"), [((1, 20_000), "bad_shape"), ((20_001, 100), "too_large"), ((4, 4), "bad_shape")]
)
def test_strips_tiny_and_long_images_refused_before_decoding(size, code):
    buf = io.BytesIO()
    Image.new("1", size).save(buf, "PNG")
    with pytest.raises(DataError) as e:
        load_image(buf.getvalue(), name="thin.png")
    assert e.value.code == code and "thin.png" in str(e.value)


def test_only_listed_formats_are_decoded():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "EPS")
    with pytest.raises(DataError, match="accepted format"):
        load_image(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "TIFF")
    assert load_image(buf.getvalue()).shape == (30, 40, 3)  # a file format the archive reader lists
    with pytest.raises(DataError, match="JPEG, PNG"):
        load_image(buf.getvalue(), formats=UPLOAD_FORMATS)  # not one an upload may use


def test_decoding_shrinks_large_images_and_keeps_orientation():
    a = np.zeros((1200, 1800, 3), np.uint8)
    a[:200, :600] = 255  # a bright block top-left, turned by the EXIF orientation below
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        img.save(buf, fmt, exif=exif.tobytes())
        full, small = load_image(buf.getvalue()), load_image(buf.getvalue(), fit=256)
        assert full.shape == (1800, 1200, 3) and min(small.shape[:2]) >= 256 and small.shape[0] < 900
        r = full.shape[0] / small.shape[0]
        yx = np.argwhere(full[..., 0] > 128).mean(0)
        assert np.allclose(np.argwhere(small[..., 0] > 128).mean(0) * r, yx, atol=12)
