"""InsightFace .bin verification sets: both element kinds, Python 3 and hand-written Python 2
pickles, and refusal of pickles that reach for anything else."""

from __future__ import annotations

import argparse
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from partial_fc.data import cli
from partial_fc.data.formats.insightface_bin import read_insightface_bin
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.formats.safe_unpickle import UnsafePickleError
from tests.data.helpers import image, jpeg


def _jpegs(n: int) -> list[bytes]:
    return [jpeg(k) for k in range(n)]


ISSAME = [True, False, True]


@pytest.mark.parametrize("protocol", [2, 4])
def test_jpeg_bytes_elements(tmp_path: Path, protocol: int) -> None:
    bins = _jpegs(6)
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, ISSAME), protocol=protocol))
    pairs = read_insightface_bin(path)
    assert pairs.name == "lfw" and pairs.num_pairs == 3
    assert pairs.images == bins  # kept byte for byte
    assert pairs.issame.tolist() == ISSAME


def test_uint8_array_elements_decoded_and_encoded(tmp_path: Path) -> None:
    raw = [image(k) for k in range(4)]  # decoded HWC images
    encoded = [np.frombuffer(b, dtype=np.uint8) for b in _jpegs(2)]  # 1-D arrays of JPEG bytes
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps((raw[:2] + [raw[2].transpose(2, 0, 1).copy(), raw[3]], [False, True]), protocol=2))
    pairs = read_insightface_bin(path)
    assert isinstance(pairs.images, np.ndarray) and pairs.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(pairs.images[2], raw[2])  # CHW element transposed back
    np.testing.assert_array_equal(pairs.images[0], raw[0])

    path2 = tmp_path / "agedb_30.bin"
    path2.write_bytes(pickle.dumps((encoded, [True]), protocol=4))
    assert read_insightface_bin(path2).images == _jpegs(2)


def _py2_str(data: bytes) -> bytes:
    # SHORT_BINSTRING / BINSTRING: how Python 2 pickles a str (our JPEG bytes)
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _py2_ndarray(a: np.ndarray) -> bytes:
    """An ndarray as numpy under Python 2 pickled it (protocol 2, str for every string)."""
    h, w, c = a.shape
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R" + (
        b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    state = b"(K\x01" + b"K" + bytes([h]) + b"K" + bytes([w]) + b"K" + bytes([c]) + b"\x87" + dtype
    state += b"\x89" + _py2_str(a.tobytes()) + b"tb"
    return b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R" + state


def test_python2_pickle(tmp_path: Path) -> None:
    jpegs = _jpegs(2)
    arrays = [image(10), image(11)]
    body = b"\x80\x02]q\x00(" + _py2_str(jpegs[0]) + _py2_str(jpegs[1])
    body += _py2_ndarray(arrays[0]) + _py2_ndarray(arrays[1]) + b"e"
    # issame: a __builtin__.bool(1) (Python 2 module name) and a plain False
    body += b"](c__builtin__\nbool\nK\x01\x85R\x89e\x86."
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    pairs = read_insightface_bin(path)
    assert pairs.issame.tolist() == [True, False]
    # mixed kinds: everything is stored decoded, JPEGs decoded with the project's decoder
    assert isinstance(pairs.images, np.ndarray)
    np.testing.assert_array_equal(pairs.images[2], arrays[0])
    np.testing.assert_array_equal(pairs.images[3], arrays[1])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Exploit(marker)], []), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|nt|os)\.system"):
        read_insightface_bin(path)
    assert not marker.exists()
    # The same with a hand-written Python 2 GLOBAL, and an innocuous-looking builtin.
    path.write_bytes(b"\x80\x02cos\nsystem\nU\x04trueb\x85R.")
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        read_insightface_bin(path)
    path.write_bytes(b"\x80\x02c__builtin__\neval\nU\x041+1b\x85R.")
    with pytest.raises(UnsafePickleError, match=r"__builtin__\.eval"):
        read_insightface_bin(path)


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    path = tmp_path / "codec.bin"
    # _codecs.encode('x', 'zlib') is allowed by name but not with another codec
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(UnsafePickleError, match="latin1"):
        read_insightface_bin(path)


def test_cli_convert_bin_writes_pair_file(tmp_path: Path) -> None:
    bins = _jpegs(4)
    src = tmp_path / "lfw.bin"
    src.write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["convert", "--from", "bin", str(src), "--out", str(tmp_path / "out")])
    assert cli.run(args) == 0
    pairs = load_pairs(tmp_path / "out" / "lfw.pairs.npz")
    assert pairs.images == bins and pairs.issame.tolist() == [True, False]


def _convert(src: Path, out: Path) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["convert", "--from", "bin", str(src), "--out", str(out)]))


@pytest.mark.parametrize("kind", ["truncated", "empty", "not-a-pickle"])
def test_unreadable_bin_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    whole = pickle.dumps((_jpegs(4), [True, False]), protocol=2)
    body = {"truncated": whole[: len(whole) // 2], "empty": b"", "not-a-pickle": b"PK\x03\x04 a zip, not a pickle"}[kind]
    path = tmp_path / "lfw.bin"
    path.write_bytes(body)
    expected = {"truncated": r"ends early after \d+ bytes \(truncated\?\)", "empty": r"is empty \(0 bytes\)",
                "not-a-pickle": "is not a pickle"}[kind]
    with pytest.raises(ValueError, match=f"^{path} {expected}"):
        read_insightface_bin(path)
    assert _convert(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_refused_pickle_is_a_value_error_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(b"\x80\x02cos\nsystem\nU\x04trueb\x85R.")
    with pytest.raises(ValueError, match=f"^{path}: refusing to load global os.system"):
        read_insightface_bin(path)  # a ValueError: the CLI prints it as one line
    assert _convert(path, tmp_path / "out") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_bin_whose_jpegs_do_not_decode_fails_at_conversion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bins = _jpegs(4)
    bins[3] = bins[3][:40] + bytes(len(bins[3]) - 42) + b"\xff\xd9"  # intact header, body zeroed
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    assert _convert(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{path}: image 3 (pair 1) does not decode" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "agedb_30.pairs.npz").exists()
    # read as is (train-time verification), the set names itself at the image that fails
    with pytest.raises(ValueError, match=r"^agedb_30.bin: image 3 \(pair 1\) does not decode"):
        read_insightface_bin(path).image(3)
