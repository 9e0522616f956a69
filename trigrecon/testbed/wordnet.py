"""Read Debian's `wordnet-base` (WordNet 3.0) with NLTK's WordNetCorpusReader, offline.

The Debian package lacks the `lexnames` file NLTK insists on, and NLTK only reads folders on its
data path, so the reader opens a shadow folder (copies of the package's files plus `lexnames`)
under the testbed cache. Only the build needs WordNet; tests use the committed word lists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from trigrecon.core.errors import WeightsNotFoundError

WORDNET_DIR = Path(os.environ.get("TRIGRECON_WORDNET", "/usr/share/wordnet"))
_NOUN = [
    "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication",
    "event", "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon",
    "plant", "possession", "process", "quantity", "relation", "shape", "state", "substance", "time"]
_VERB = ["body", "change", "cognition", "communication", "competition", "consumption", "contact",
         "creation", "emotion", "motion", "perception", "possession", "social", "stative", "weather"]
LEXNAMES = ([("adj.all", 3), ("adj.pert", 3), ("adv.all", 4)] + [(f"noun.{n}", 1) for n in _NOUN]
            + [(f"verb.{v}", 2) for v in _VERB] + [("adj.ppl", 3)])


def open_wordnet(cache: Path | None = None) -> Any:
    """An NLTK WordNetCorpusReader over the Debian WordNet files."""
    if not (WORDNET_DIR / "data.noun").is_file():
        raise WeightsNotFoundError(f"WordNet is not installed at {WORDNET_DIR}: `apt-get install "
                                   "wordnet-base` (or set $TRIGRECON_WORDNET to a WordNet 3.0 dict folder)")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from trigrecon.testbed.smollm2 import default_cache_dir

    shadow = (cache or default_cache_dir().parent) / "wordnet"
    shadow.mkdir(parents=True, exist_ok=True)
    for f in WORDNET_DIR.iterdir():
        copy = shadow / f.name  # a copy: NLTK rejects symlinks that leave its root
        if f.is_file() and not copy.exists():
            shutil.copyfile(f, copy)
    (shadow / "lexnames").write_text(
        "".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES)))
    if str(shadow) not in nltk.data.path:
        nltk.data.path.append(str(shadow))

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # this is WordNet 3.0 itself: no mapping (NLTK would look for its own copy)

    return _Reader(str(shadow), None)
