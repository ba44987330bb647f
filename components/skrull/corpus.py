"""A real long-tail corpus built offline: the source files of the installed Python packages.

Every ``.py`` file under the environment's ``site-packages`` is a document (notes §6.5: Python
sources are a genuine long-tail text corpus). Selection is deterministic (sorted paths, seeded
sample), a byte-level BPE is trained locally with ``tokenizers`` (no download), and every
document is tokenised in full. On disk (one folder, written by the data stage):

``tokenizer.json``  the trained BPE
``tokens.npy``      all documents' token ids, concatenated (uint16 when the vocabulary allows)
``offsets.npy``     int64, document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``
``files.txt``       the documents' paths relative to the corpus root, in order
``manifest.json``   selection parameters, counts and the Table-1-style length CDF
"""
from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from components.base import InputError
from components.skrull.lengths import cdf_table

Progress = Callable[..., None]


def default_root() -> Path:
    """The running interpreter's ``site-packages`` (what the repo's venv installs)."""
    return Path(sysconfig.get_paths()["purelib"])


def list_source_files(root: Path, min_bytes: int = 1) -> list[Path]:
    """Sorted ``.py`` files under ``root`` (no ``__pycache__``), at least ``min_bytes`` long."""
    if not root.is_dir():
        raise InputError(f"corpus root {root}: not a directory; expected a folder of Python sources "
                         f"(skrull.data.corpus.root)")
    files = [p for p in root.rglob("*.py")
             if "__pycache__" not in p.parts and p.is_file() and p.stat().st_size >= min_bytes]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def select_files(files: Sequence[Path], max_files: int, seed: int) -> list[Path]:
    """A seeded sample of ``max_files`` paths, kept in sorted order (all of them when fewer)."""
    if len(files) <= max_files:
        return list(files)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(files), size=max_files, replace=False))
    return [files[i] for i in idx]


def train_bpe(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenisation) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def build_corpus(out_dir: Path, *, root: Path | None, max_files: int, min_bytes: int, vocab_size: int,
                 bpe_train_mb: float, seed: int, progress: Progress | None = None) -> dict:
    """Select, train the BPE, tokenise and write the corpus into ``out_dir``; return the manifest."""
    say = progress or (lambda *a: None)
    root = Path(root) if root else default_root()
    files = list_source_files(root, min_bytes)
    if not files:
        raise InputError(f"corpus root {root}: no .py files of at least {min_bytes} bytes")
    chosen = select_files(files, max_files, seed)
    say("corpus: %d of %d source files under %s", len(chosen), len(files), root)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in chosen]
    budget, train_texts = bpe_train_mb * 1e6, []        # bytes (UTF-8), not characters
    for t in texts:
        if budget <= 0:
            break
        train_texts.append(t)
        budget -= len(t.encode("utf-8"))
    tok = train_bpe(train_texts, vocab_size)
    say("corpus: byte-level BPE with %d tokens trained on %d files", tok.get_vocab_size(), len(train_texts))
    ids = [e.ids for e in tok.encode_batch(texts)]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    dtype = np.uint16 if tok.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.uint32
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=dtype, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    np.save(out_dir / "tokens.npy", tokens)
    np.save(out_dir / "offsets.npy", offsets)
    rel = [p.relative_to(root).as_posix() for p in chosen]
    (out_dir / "files.txt").write_text("\n".join(rel) + "\n")
    manifest = {
        "documents": len(chosen), "candidates": len(files), "tokens": int(lengths.sum()),
        "bytes": int(sum(len(t.encode("utf-8")) for t in texts)), "vocab_size": tok.get_vocab_size(),
        "bpe_train_files": len(train_texts), "seed": seed, "min_bytes": min_bytes,
        "files_sha256": hashlib.sha256("\n".join(rel).encode()).hexdigest(),
        "length_cdf": cdf_table(lengths),
        "length_percentiles": {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 99)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say("corpus: %d documents, %d tokens, p50 %.0f / p99 %.0f / max %d tokens", len(chosen),
        manifest["tokens"], manifest["length_percentiles"]["p50"], manifest["length_percentiles"]["p99"],
        manifest["length_cdf"]["longest"])
    return manifest


@dataclass
class Corpus:
    """A tokenised corpus on disk (see the module docstring)."""

    tokens: np.ndarray
    offsets: np.ndarray
    vocab_size: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int, max_tokens: int | None = None) -> np.ndarray:
        """Token ids of document ``i`` (its first ``max_tokens`` when given), as int64."""
        end = self.offsets[i + 1] if max_tokens is None else min(self.offsets[i + 1], self.offsets[i] + max_tokens)
        return self.tokens[self.offsets[i]:end].astype(np.int64)


def load_corpus(path: Path) -> Corpus:
    """Read a corpus folder; a missing or inconsistent file raises :class:`InputError`."""
    path = Path(path)
    need = ["tokens.npy", "offsets.npy", "manifest.json"]
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise InputError(f"corpus {path}: missing {missing}; expected the output of `python -m flows skrull data`")
    tokens = np.load(path / "tokens.npy")
    offsets = np.load(path / "offsets.npy")
    manifest = json.loads((path / "manifest.json").read_text())
    vocab = int(manifest.get("vocab_size", 0))
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens) \
            or np.any(np.diff(offsets) < 0):
        raise InputError(f"{path / 'offsets.npy'}: expected non-decreasing offsets from 0 to len(tokens)="
                         f"{len(tokens)}, got {len(offsets)} offsets ending at {offsets[-1] if len(offsets) else None}")
    if vocab <= 0 or (len(tokens) and int(tokens.max()) >= vocab):
        raise InputError(f"{path / 'manifest.json'}: vocab_size={vocab} does not cover the token ids "
                         f"(max {int(tokens.max()) if len(tokens) else None})")
    return Corpus(tokens=tokens, offsets=offsets, vocab_size=vocab)

