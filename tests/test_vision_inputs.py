"""Unreadable or unsafe images give an InputError naming the input, never a crash."""
import io
import struct
import zlib

import pytest

from mmsdk.decoder.errors import InputError
from mmsdk.encoders.image_io import open_image
from mmsdk.encoders.image_preprocess import preprocess
from vision_fixtures import noise_image


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    noise_image(256, 256).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: Pillow reads the size without decoding pixels."""
    buf = io.BytesIO()
    noise_image(8, 8).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[16:29])  # the IHDR chunk's 13 data bytes, after signature, length and type
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(InputError, match="corrupt.jpg"):
        preprocess(str(path))
    with pytest.raises(InputError, match="bytes of image data"):
        preprocess(b"GIF89a garbage")


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg_bytes()[:1500])
    with pytest.raises(InputError, match="truncated.jpg"):
        preprocess(path)


def test_zero_byte_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png.*zero-byte"):
        preprocess(str(path))
    with pytest.raises(InputError, match="zero bytes"):
        preprocess(b"")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        open_image(tmp_path / "nope.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_claiming(20000, 20000))
    with pytest.raises(InputError, match="huge.png.* too large"):
        preprocess(str(path))
    # Between our limit and Pillow's own bomb limit: refused by our check, with the size spelled out.
    with pytest.raises(InputError, match="too large: 9000x9000"):
        preprocess(png_header_claiming(9000, 9000))


def test_unsupported_input_type():
    with pytest.raises(InputError, match="file path"):
        preprocess(12345)


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        open_image(b"nope")
