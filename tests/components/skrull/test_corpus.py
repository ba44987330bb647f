"""The local corpus: deterministic selection and tokenisation, clear errors on bad files."""
import json

import numpy as np
import pytest

from components.base import InputError
from components.skrull.corpus import build_corpus, list_source_files, load_corpus, select_files


@pytest.fixture
def sources(tmp_path):
    root = tmp_path / "site"
    rng = np.random.default_rng(0)
    for i in range(40):
        pkg = root / f"pkg{i % 5}"
        pkg.mkdir(parents=True, exist_ok=True)
        n = int(rng.pareto(1.2) * 20) + 1                               # long-tail file sizes
        body = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(n))
        (pkg / f"mod{i}.py").write_text(body)
    (root / "pkg0" / "__init__.py").write_text("")                      # too short: skipped
    (root / "pkg0" / "__pycache__").mkdir()
    (root / "pkg0" / "__pycache__" / "x.py").write_text("ignored = 1\n" * 10)
    return root


def test_build_is_deterministic_and_complete(sources, tmp_path):
    kw = dict(root=sources, max_files=25, min_bytes=16, vocab_size=300, bpe_train_mb=0.05, seed=3)
    m1 = build_corpus(tmp_path / "a", **kw)
    m2 = build_corpus(tmp_path / "b", **kw)
    assert m1 == m2
    for name in ("tokens.npy", "offsets.npy", "files.txt", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    corpus = load_corpus(tmp_path / "a")
    assert len(corpus) == 25 and m1["candidates"] == 40
    assert "__pycache__" not in (tmp_path / "a" / "files.txt").read_text()
    assert corpus.lengths.sum() == m1["tokens"] and corpus.lengths.max() > 5 * np.median(corpus.lengths)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json"))
    first = (sources / (tmp_path / "a" / "files.txt").read_text().split()[0]).read_text()
    assert tok.decode(corpus.document(0).tolist()) == first            # byte-level BPE round-trips
    assert len(corpus.document(0, max_tokens=3)) == 3


def test_selection_is_sorted_and_seeded(sources):
    files = list_source_files(sources, 16)
    assert files == sorted(files, key=lambda p: p.relative_to(sources).as_posix())
    assert select_files(files, 10, 1) == select_files(files, 10, 1) != select_files(files, 10, 2)


def test_bad_corpus_inputs(tmp_path, sources):
    with pytest.raises(InputError, match="not a directory"):
        build_corpus(tmp_path / "o", root=tmp_path / "nope", max_files=5, min_bytes=1, vocab_size=300,
                     bpe_train_mb=0.1, seed=0)
    with pytest.raises(InputError, match="missing"):
        load_corpus(tmp_path / "empty")
    build_corpus(tmp_path / "c", root=sources, max_files=5, min_bytes=16, vocab_size=300, bpe_train_mb=0.05, seed=0)
    np.save(tmp_path / "c" / "offsets.npy", np.array([0, 5, 3]))
    with pytest.raises(InputError, match="offsets.npy"):
        load_corpus(tmp_path / "c")
    build_corpus(tmp_path / "d", root=sources, max_files=5, min_bytes=16, vocab_size=300, bpe_train_mb=0.05, seed=0)
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({**m, "vocab_size": 3}))
    with pytest.raises(InputError, match="vocab_size=3"):
        load_corpus(tmp_path / "d")
