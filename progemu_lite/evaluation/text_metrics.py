"""Corpus-level text metrics for generated interpretations: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

Why these implementations
-------------------------
The scores come from ``pycocoevalcap`` 1.2, the COCO caption evaluation code that report
generation papers (and ProgEmu's reported BLEU-3 / METEOR / ROUGE-L) use, so numbers are
comparable with the literature:

* BLEU-1..4: ``pycocoevalcap.bleu`` at corpus level (n-gram counts summed over all cases, one
  brevity penalty for the corpus, closest reference length). BLEU-3 is the one the paper reports.
* METEOR: METEOR 1.5 (``meteor-1.5.jar`` shipped inside pycocoevalcap, English, ``-norm``, with
  its bundled paraphrase table), driven through pycocoevalcap's wrapper. It needs a Java runtime
  (Debian ``default-jre-headless``). The JVM starts ONCE per :func:`corpus_text_metrics` call and
  loads the paraphrase table (a few seconds); every case then goes through the same process. The
  corpus METEOR is the jar's own aggregate over all cases' statistics.
* ROUGE-L: ``pycocoevalcap.rouge``: per case the LCS-based F-measure with beta = 1.2 (recall
  weighted), best over a case's references, then the mean over cases.
* CIDEr: ``pycocoevalcap.cider`` (the COCO version, i.e. CIDEr-D: clipped counts, Gaussian length
  penalty sigma = 6, x10), with document frequencies taken from the evaluated corpus's
  references. CIDEr is only meaningful over a corpus: on a single case the IDF weights are all
  zero and it is 0.

Why not the others: NLTK's METEOR needs WordNet data that ``nltk.download`` cannot fetch here,
and it is not the METEOR the captioning literature reports; sacrebleu and rouge-score tokenise
and smooth differently from pycocoevalcap, so their numbers would not compare with the paper.

Tokenisation (done here, in Python, instead of pycocoevalcap's Stanford PTB tokenizer, which
would start a second JVM on every call): Unicode NFKC normalisation, lowercase, then tokens are
runs of letters/digits, keeping intra-word hyphens, apostrophes, slashes and decimal points
(``right-sided``, ``1.5``, ``a/p``) as one token, like the PTB tokenizer does; every other
punctuation mark is dropped, as the COCO pipeline drops punctuation after PTB tokenisation.
Tokens are joined by single spaces. Text in any script tokenises the same way (``\\w`` is
Unicode-aware), so an interpretation in another language simply shares no n-grams with an English
reference and scores near 0; an empty candidate scores 0 on every metric.
"""

from __future__ import annotations

import math
import re
import shutil
import unicodedata
from collections.abc import Sequence

METRIC_NAMES: tuple[str, ...] = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider",
)

_TOKEN = re.compile(r"\w+(?:[-'./]\w+)*")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens of ``text`` with punctuation removed (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).lower()
    # "_" counts as a word character for \w; it is punctuation in prose.
    return _TOKEN.findall(text.replace("_", " "))


def normalize_text(text: str) -> str:
    """The tokenised text as the scorers see it: tokens joined by single spaces."""
    return " ".join(tokenize(text))


def corpus_text_metrics(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    include_meteor: bool = True,
    per_case: bool = False,
) -> dict:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``candidates`` against ``references``.

    ``references[i]`` is one reference string or a list of them for case ``i``. Returns a dict
    with the keys of :data:`METRIC_NAMES` (METEOR only when ``include_meteor``) and ``n_cases``;
    with ``per_case`` also ``"per_case"``: each metric's list of case scores (BLEU per case is
    pycocoevalcap's sentence BLEU, CIDEr per case uses the corpus's IDF).
    Raises ValueError when the two lists differ in length or a case has no reference, and
    FileNotFoundError when METEOR is asked for and no ``java`` is on PATH.
    """
    candidates = list(candidates)
    references = list(references)
    if len(candidates) != len(references):
        raise ValueError(
            f"{len(candidates)} candidates but {len(references)} references: one per case needed"
        )
    if not candidates:
        raise ValueError("no cases to score: candidates and references are empty")
    res: dict[int, list[str]] = {}
    gts: dict[int, list[str]] = {}
    for i, (cand, refs) in enumerate(zip(candidates, references, strict=True)):
        if cand is None:
            cand = ""
        ref_list = [refs] if isinstance(refs, str) else list(refs)
        if not ref_list:
            raise ValueError(f"case {i} has no reference text")
        res[i] = [normalize_text(cand)]
        gts[i] = [normalize_text(r) for r in ref_list]

    scores: dict = {}
    cases: dict[str, list[float]] = {}
    for name, (corpus, each) in _bleu(gts, res).items():
        scores[name], cases[name] = corpus, each
    if include_meteor:
        scores["meteor"], cases["meteor"] = _meteor(gts, res)
    scores["rouge_l"], cases["rouge_l"] = _rouge_l(gts, res)
    scores["cider"], cases["cider"] = _cider(gts, res)
    scores["n_cases"] = len(candidates)
    if per_case:
        scores["per_case"] = cases
    return scores


def _import_error(err: ImportError) -> ImportError:
    return ImportError(
        "text metrics need pycocoevalcap (pip install 'progemu-lite[course]'): " + str(err)
    )


Scored = tuple[float, list[float]]  # (corpus score, case scores)


def _bleu(gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, Scored]:
    try:
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    except ImportError as err:
        raise _import_error(err) from err
    scorer = BleuScorer(n=4)
    for i in res:
        scorer += (res[i][0], gts[i])
    corpus, each = scorer.compute_score(option="closest", verbose=0)
    # pycocoevalcap adds 1e-9 smoothing to every count, so a perfect match reads 0.9999999996.
    return {
        f"bleu_{n + 1}": (_clean(value), [_clean(v) for v in each[n]])
        for n, value in enumerate(corpus)
    }


def _rouge_l(gts: dict[int, list[str]], res: dict[int, list[str]]) -> Scored:
    try:
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise _import_error(err) from err
    scorer = Rouge()
    per_case = []
    for i in res:
        # pycocoevalcap splits "" into one empty token, which would match an empty reference.
        per_case.append(0.0 if not res[i][0] else scorer.calc_score(res[i], gts[i]))
    return _clean(sum(per_case) / len(per_case)), [_clean(v) for v in per_case]


def _cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> Scored:
    try:
        from pycocoevalcap.cider.cider_scorer import CiderScorer
    except ImportError as err:
        raise _import_error(err) from err
    if not any(r for refs in gts.values() for r in refs):
        return 0.0, [0.0] * len(res)  # no reference n-grams, no document frequencies
    scorer = CiderScorer(n=4, sigma=6.0)
    for i in res:
        scorer += (res[i][0], gts[i])
    corpus, each = scorer.compute_score()
    return _clean(corpus), [_clean(v) for v in each]


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> Scored:
    if shutil.which("java") is None:
        raise FileNotFoundError(
            "METEOR runs METEOR 1.5 in Java and no `java` is on PATH: install a Java runtime "
            "(Debian: apt-get install default-jre-headless) or pass include_meteor=False"
        )
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as err:
        raise _import_error(err) from err
    # The jar's line protocol uses "|||" as a separator and one line per case; tokenised text
    # holds neither, and an empty hypothesis is sent as one space (the jar scores it 0).
    res = {i: [c[0] or " "] for i, c in res.items()}
    gts = {i: [r or " " for r in refs] for i, refs in gts.items()}
    meteor = Meteor()  # one JVM for the whole corpus
    try:
        corpus, each = meteor.compute_score(gts, res)
    except ValueError as err:
        stderr = b""
        if meteor.meteor_p.poll() is not None and meteor.meteor_p.stderr is not None:
            stderr = meteor.meteor_p.stderr.read()
        raise RuntimeError(
            f"the METEOR jar stopped answering ({err}); its stderr: "
            f"{stderr.decode(errors='replace').strip()[-500:]!r}"
        ) from err
    finally:
        _close_meteor(meteor)
    return _clean(corpus), [_clean(v) for v in each]


def _close_meteor(meteor) -> None:
    """Stop the JVM now instead of whenever the wrapper is garbage-collected."""
    proc = meteor.meteor_p
    with meteor.lock:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _clean(value: float) -> float:
    """A plain float; rounding away the 1e-9 smoothing residue of pycocoevalcap's BLEU."""
    value = float(value)
    if not math.isfinite(value):
        return 0.0
    return round(value, 9)
