"""A rule-based clinical finding labeler for chest X-ray interpretations and reports.

It reads free text and returns one :class:`LabeledFinding` per finding mentioned: which finding
(the names of :mod:`progemu_lite.phantom.findings`), where, in which direction it changed, how
severe it is said to be, and whether the statement is definite or hedged. No model, no network:
regular expressions plus a NegEx-style scope rule, so it runs anywhere and is easy to read.

How a sentence is read
----------------------
1. The report is split into sentences (``.``, ``!``, ``?``, new lines; section headers such as
   ``IMPRESSION:`` and list numbers are dropped), each sentence into clauses at words that end a
   NegEx scope (``;``, ``but``, ``however``, ``although``, ``whereas``, ``except`` ...).
2. In a clause, *mentions* of findings are found with synonym patterns (``pleural fluid`` ->
   pleural_effusion, ``airspace opacity``/``pneumonia`` -> consolidation, ``vascular
   congestion`` -> pulmonary_edema, ``collapse``/``plate-like opacity`` -> atelectasis,
   ``mass``/``nodular opacity`` -> nodule ...). A bare ``opacity`` is consolidation unless the
   clause says what it represents (``left basilar opacity, likely atelectasis`` is atelectasis at
   the left lower lobe). ``heart size``/``cardiac silhouette`` is cardiomegaly when called
   enlarged, absent when called normal, and no claim otherwise.
3. *Triggers* are found: negation (``no``, ``without``, ``negative for``, ``not seen``),
   uncertainty (``possible``, ``likely``, ``cannot exclude``, ``may represent``, ``versus``) and
   direction (new / worse / better / resolved / stable: ``new since prior``, ``slightly
   increased``, ``improving``, ``no longer seen``, ``interval resolution of``, ``unchanged``,
   ``redemonstrated``, ``persistent`` ...). Longer phrases win over their parts (``no longer
   seen`` is a resolution, not a negation; ``cannot be excluded`` is uncertainty).
4. Each trigger attaches to the nearest mention in its reading direction: phrases that precede a
   finding (``no``, ``new``) to the next mention within a few words, phrases that follow it
   (``has resolved``, ``is unchanged``) to the previous one; words that can do both (``stable``,
   ``increased``) precede when a mention follows closely with no ``and``/``,`` in between. A
   trigger then spreads over a coordinated list (``no pneumothorax, effusion, or
   consolidation``; ``the effusion and atelectasis have resolved``) but not past a word that
   asserts something else (a severity word, another trigger).
5. Location comes from the words in the finding's own phrase (before it back to the previous
   ``and``/``,``/``with``, after it up to the next one): sides, lobes (also ``RLL``),
   ``lung base`` -> that side's lower lobe, ``lingula``, ``retrocardiac`` -> left lower lobe,
   ``bibasilar``/``bilateral`` -> bilateral. A finding with no stated place takes it from a
   finding it is coordinated with (``left lower lobe atelectasis and adjacent consolidation``).
   Pleural findings keep only the side; plural ``effusions`` with no side are bilateral.
6. Severity words are mapped onto the finding's own scale (``trace`` effusion -> small,
   ``markedly enlarged`` heart -> severe); ``from small to moderate`` and ``previously small``
   give the severity before and after. Adverbs of change (``slightly increased``) are not severity.

Direction ``None`` means "present, no comparison stated"; ``absent`` is a pertinent negative.

Known limits: places and findings are read within one clause (``... left lung base; residual
atelectasis is seen`` gives atelectasis with no place), there is no coreference across sentences
(``It has increased``), a side implied only by a device (``right chest tube``) is not taken, and
``heart size is stable`` is no claim either way. Words outside the vocabulary (scarring,
fractures, devices) are ignored.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field

from progemu_lite.phantom.findings import FINDINGS, LOCATION_TEXT, laterality

DIRECTIONS = ("new", "worse", "better", "resolved", "stable", "absent")
CERTAINTIES = ("definite", "uncertain")


@dataclass(frozen=True)
class LabeledFinding:
    """One finding as a sentence states it."""

    finding: str
    location: str | None  # a key of LOCATION_TEXT, or None when no place is stated
    direction: str | None  # one of DIRECTIONS, or None: present, no comparison stated
    certainty: str  # "definite" or "uncertain"
    severity_words: tuple[str, ...] = ()  # the finding's own severity words, in text order
    severity_before: str | None = None
    severity_after: str | None = None
    sentence: str = ""

    @property
    def laterality(self) -> str | None:
        return laterality(self.location)

    @property
    def is_claim(self) -> bool:
        """A statement that the finding is (or was) there: everything but a pertinent negative."""
        return self.direction != "absent"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["severity_words"] = list(self.severity_words)
        d["laterality"] = self.laterality
        return d


# ----------------------------------------------------------------------------------------------
# Finding mentions. kind: "specific"; "sign" (an opacity or a blunted angle: the finding given
# here unless the clause says what it represents); "cardiac" (heart size: cardiomegaly only if
# called enlarged); "ignore" (phrases that contain a synonym but are not the finding).
_OPACITY = r"opacit(?:y|ies)|opacification|densit(?:y|ies)"
_MENTIONS: list[tuple[str, str | None, str]] = [
    # not findings of ours, though they contain our words
    (
        r"soft[- ]tissue (?:edema|mass(?:es)?|swelling)|subcutaneous (?:edema|emphysema)",
        None,
        "ignore",
    ),
    (
        r"mass effect|(?:calcified )?granulomas?|interstitial (?:opacit(?:y|ies)|markings?)",
        None,
        "ignore",
    ),
    (
        r"(?:osseous|bony|bone|lytic|sclerotic) lesions?|reticular (?:opacit(?:y|ies))",
        None,
        "ignore",
    ),
    (
        r"hydropneumothora(?:x|ces)|pneumothora(?:x|ces)|ptx|(?:intra)?pleural air(?: collections?)?",
        "pneumothorax",
        "specific",
    ),
    (
        r"(?:pleural )?effusions?|pleural fluid(?: collections?)?|hydrothorax",
        "pleural_effusion",
        "specific",
    ),
    (r"(?:layering )?fluid (?:with)?in the (?:\w+ )?pleural space", "pleural_effusion", "specific"),
    (r"blunting of the (?:\w+ )?costophrenic (?:angles?|sulcus|sulci)", "pleural_effusion", "sign"),
    (
        r"(?:costophrenic (?:angle|sulcus) )blunting|blunted (?:\w+ )?costophrenic (?:angles?|sulc(?:us|i))",
        "pleural_effusion",
        "sign",
    ),
    (
        r"cardiomegaly|cardiac enlargement|enlarged (?:cardiac silhouette|heart(?: size)?|cardiac size)",
        "cardiomegaly",
        "specific",
    ),
    (r"enlargement of the (?:cardiac silhouette|heart)", "cardiomegaly", "specific"),
    (
        r"heart size|cardiac (?:silhouette|size|contours?)|cardiomediastinal (?:silhouette|contours?)|size of the heart|heart",
        "cardiomegaly",
        "cardiac",
    ),
    (
        r"(?:pulmonary |interstitial |alveolar |perihilar )?(?:o)?edema",
        "pulmonary_edema",
        "specific",
    ),
    (
        r"(?:pulmonary )?(?:vascular|venous) (?:congestion|engorgement|redistribution|plethora)",
        "pulmonary_edema",
        "specific",
    ),
    (
        r"(?:pulmonary |central )?congestion|fluid overload|kerley b lines|cephalization",
        "pulmonary_edema",
        "specific",
    ),
    (
        r"atelectas[ie]s|atelectatic (?:changes?|opacit(?:y|ies)|lung)|atelectatic",
        "atelectasis",
        "specific",
    ),
    (r"(?:lobar |segmental |subsegmental )?collapse|volume loss", "atelectasis", "specific"),
    (
        rf"(?:linear|plate[- ]?like|band[- ]?like|discoid|streaky|subsegmental) (?:{_OPACITY})",
        "atelectasis",
        "sign",
    ),
    (
        r"consolidations?|consolidative (?:opacit(?:y|ies)|changes?|process)",
        "consolidation",
        "specific",
    ),
    (r"air[- ]?space (?:disease|consolidation|process)", "consolidation", "specific"),
    (rf"air[- ]?space (?:{_OPACITY})", "consolidation", "sign"),
    (r"pneumonias?|infiltrates?|infiltration", "consolidation", "specific"),
    (rf"(?:nodular|mass[- ]?like|rounded) (?:{_OPACITY}|lesions?)", "nodule", "sign"),
    (
        r"nodules?|(?:lung |pulmonary )?mass(?:es)?|(?:lung |pulmonary )lesions?",
        "nodule",
        "specific",
    ),
    (_OPACITY, "consolidation", "sign"),
]

# ----------------------------------------------------------------------------------------------
# Triggers: (pattern, category, form). form: "pre" precedes its finding, "post" follows it,
# "both" either way, "bi" applies to the findings on both sides ("atelectasis versus pneumonia").
_ADV = r"(?:(?:slight|slightly|mild|mildly|minimal|minimally|marked|markedly|significant|significantly|substantial|substantially|moderately|considerably|somewhat|further|overall|interval|subtle|subtly|much|continued) ){0,2}"
_VERB_AUX = r"(?:has|have|had|is|are|was|were)(?: (?:also|now|since|further|slightly|mildly|markedly|significantly|somewhat|substantially|minimally|overall))?"
_SEEN = r"(?:seen|visible|visualized|present|evident|identified|appreciated|demonstrated|apparent|detected|noted)"
_TRIGGERS: list[tuple[str, str, str]] = [
    # resolution (partial resolution is improvement)
    (
        r"(?:partially|partly|nearly|almost(?: completely)?|mostly|largely|incompletely|near[- ]completely|near[- ]totally) (?:resolv(?:ed|ing)|re-?expanded)",
        "better",
        "both",
    ),
    (r"(?:partial|near[- ]complete|incomplete) resolution (?:of|in)", "better", "pre"),
    (r"resolving", "better", "both"),
    (rf"no longer {_SEEN}|(?:is|are) no longer (?:{_SEEN}|there)", "resolved", "post"),
    (r"no longer (?:any )?(?:\w+ )?(?:evidence|signs?) (?:of|for)", "resolved", "pre"),
    (r"(?:has|have) (?:since |now )?re-?expanded|re-?expansion of", "resolved", "both"),
    (
        r"(?:interval |complete |total )?resolution (?:of|in)|(?:interval(?:ly)? )?resolved|no residual|(?:has|have) (?:completely |since |now )?(?:resolved|cleared|disappeared)",
        "resolved",
        "both",
    ),
    (r"(?:is|are) gone|disappeared|cleared", "resolved", "post"),
    # stable
    (
        r"(?:is|are|has|have|was|were)?\s*(?:not|without) (?:(?:significantly|substantially|appreciably|significant|substantial|appreciable|interval|any|definite) ){0,2}(?:changed|change)",
        "stable",
        "both",
    ),
    (
        r"no (?:significant |appreciable |substantial |definite |real )?(?:interval )?(?:change|increase|decrease|progression|improvement)(?: (?:in|of))?",
        "stable",
        "both",
    ),
    (
        r"(?:essentially |grossly |largely |otherwise |overall |basically )?(?:unchanged|stable|stably|constant)(?: (?:in|of) (?:size|appearance|extent))?",
        "stable",
        "both",
    ),
    (
        r"persistent(?:ly)?|persists?|persisting|(?:again|still) (?:seen|noted|present|demonstrated|visualized|identified|evident|visible)|re-?demonstrat(?:ed|es|ion of)|re-?identified",
        "stable",
        "both",
    ),
    (
        r"similar(?: in (?:size|appearance|extent))?(?: (?:to|compared (?:to|with)) (?:the )?(?:prior|previous)(?: (?:study|exam|examination|radiograph|film))?)?",
        "stable",
        "both",
    ),
    (r"remains?|remained|remaining|unaltered", "stable", "both"),
    # new
    (
        r"new(?:ly)?(?: (?:since|compared (?:to|with)|from|relative to) (?:the )?(?:prior|previous|last)(?: (?:study|exam|examination|radiograph|film|image))?)?",
        "new",
        "both",
    ),
    (
        r"interval (?:development|appearance) of|(?:has|have) (?:since )?(?:developed|appeared)|developed|developing|emerging|de novo|now (?:seen|present|evident|apparent)|(?:is|are) new",
        "new",
        "both",
    ),
    # worse
    (
        rf"{_ADV}(?:increased|increasing|increase (?:in|of)|worse|worsened|worsening|enlarging|larger|bigger|progressed|progressing|progression of|progressive|more (?:prominent|extensive|conspicuous|pronounced|confluent|dense|opaque)|grown|expanded|extension of|accumulat(?:ed|ing))(?: in (?:size|extent))?",
        "worse",
        "both",
    ),
    (
        rf"{_VERB_AUX} (?:increased|worsened|progressed|become (?:larger|more \w+))(?: in (?:size|extent))?",
        "worse",
        "post",
    ),
    # "has enlarged" is a change, "is enlarged" a state (heart size)
    (
        r"(?:has|have)(?: \w+ly)? (?:enlarged|grown|expanded|extended)(?: in (?:size|extent))?",
        "worse",
        "post",
    ),
    # better
    (
        rf"{_ADV}(?:decreased|decreasing|decrease (?:in|of)|smaller|improved|improving|improvement (?:in|of)|reduced|reducing|reduction (?:in|of)|diminished|diminishing|lessened|regressed|regressing|regression of|clearing|less (?:prominent|extensive|conspicuous|pronounced|dense|opaque|confluent)|shrunk|shrinking)(?: in (?:size|extent))?",
        "better",
        "both",
    ),
    (
        rf"{_VERB_AUX} (?:decreased|improved|diminished|regressed|lessened|reduced|shrunk|become (?:smaller|less \w+))(?: in (?:size|extent))?",
        "better",
        "post",
    ),
    # uncertainty
    (
        r"cannot (?:be )?(?:entirely |completely |definitely )?(?:excluded|exclude|ruled out|rule out)|can ?not (?:entirely |completely )?(?:exclude|rule out)|can't (?:be )?(?:excluded|exclude|ruled out|rule out)",
        "unc",
        "both",
    ),
    (
        r"(?:is |are )?not (?:entirely |completely )?(?:excluded|ruled out)|difficult to exclude|(?:is |are )?(?:possible|suspected|questioned|likely|probable)(?= *(?:$|[.,;]))",
        "unc",
        "both",
    ),
    (
        r"(?:most |more )?likely|probabl[ey]|possibl[ey]|questionabl[ey]|question of|suspicious for|suspected|suggestive of|suggesting|suggests|concerning for|worrisome for|equivocal|presumed|presumably|borderline",
        "unc",
        "both",
    ),
    (
        r"(?:may|might|could) (?:represent|reflect|be|indicate|have|correspond to)|(?:differential|ddx)(?: diagnosis)? (?:includes|include)",
        "unc",
        "both",
    ),
    (r"versus|vs\.?|and/or", "unc", "bi"),
    # negation
    (
        r"no (?:\w+ )?evidence (?:of|for)|no (?:radiographic |definite |convincing )?signs? of|negative for|absence of|free of|clear of|without(?: (?:evidence|signs?) of)?|neither|nor|no",
        "neg",
        "pre",
    ),
    (
        rf"(?:is|are|was|were) not {_SEEN}|not {_SEEN}|(?:is|are) absent|(?:has|have) been excluded|(?:is|are) excluded|(?:is|are) ruled out",
        "neg",
        "post",
    ),
]

_SEVERITY_LEVEL: dict[str, int] = {
    "tiny": 1, "trace": 1, "minimal": 1, "small": 1, "small-volume": 1, "small-sized": 1,
    "mild": 1, "mildly": 1, "slight": 1, "slightly": 1, "minor": 1, "subtle": 1, "patchy": 1,
    "subcentimeter": 1, "subcentimetric": 1,
    "moderate": 2, "moderately": 2, "moderate-sized": 2, "moderate-size": 2, "medium": 2,
    "medium-sized": 2, "intermediate": 2,
    "large": 3, "large-volume": 3, "large-sized": 3, "massive": 3, "severe": 3, "severely": 3,
    "marked": 3, "markedly": 3, "extensive": 3, "sizable": 3, "sizeable": 3, "substantial": 3,
    "widespread": 3,
}  # fmt: skip
_SEVERITY_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _SEVERITY_LEVEL), key=len, reverse=True)) + r")\b"
)
_SEV = "(" + "|".join(sorted(map(re.escape, _SEVERITY_LEVEL), key=len, reverse=True)) + ")"
_FROM_TO = re.compile(
    rf"\bfrom (?:a |an )?{_SEV}(?: \w+)?(?: (?:in size|in extent))? to (?:a |an )?{_SEV}\b"
)
_BEFORE = re.compile(
    rf"\b(?:previously|formerly|prior|was|were|previous(?:ly)? described as) (?:a |an )?{_SEV}\b"
)
_NOW = re.compile(rf"\bnow (?:a |an )?{_SEV}\b")

# Locations: (pattern, side, zone). side: left/right/both/None (taken from the match group).
_LOCATIONS: list[tuple[str, str | None, str | None]] = [
    (r"(right|left) (upper|middle|lower) lobes?", None, None),
    (r"(rul|rml|rll|lul|lll)", None, None),
    (r"lingula(?:r)?", "left", "lingula"),
    (r"retrocardiac", "left", "lower"),
    (r"bibasilar|bibasal|bibasally|(?:both|bilateral) (?:lung )?bases|(?:both|bilateral) lower (?:lobes?|lungs?|zones?)|(?:lung )?bases", "both", "lower"),
    (r"bilateral(?:ly)?|both (?:lungs|sides|hemithoraces)|biapical|bi-?lateral", "both", None),
    (r"(right|left)(?:-sided| sided)? (?:lung )?(?:base|basilar|basal|basally|basis|lower (?:lung|zone|hemithorax|chest))", None, "lower"),
    (r"base of the (right|left)(?: lung)?|(right|left) lung base", None, "lower"),
    (r"(right|left)(?:-sided| sided)? (?:lung )?(?:apex|apical|apically|upper (?:lung|zone|hemithorax|chest))", None, "upper"),
    (r"(right) (?:mid|middle)[- ](?:lung|zone)", None, "middle"),
    (r"(right|left)(?:-sided| sided)?", None, None),
]  # fmt: skip
_LOBE_ABBREV = {
    "rul": ("right", "upper"),
    "rml": ("right", "middle"),
    "rll": ("right", "lower"),
    "lul": ("left", "upper"),
    "lll": ("left", "lower"),
}

_CLAUSE_BREAK = re.compile(
    r";|\b(?:but|however|although|though|whereas|while|except(?: for)?|aside from|apart from|"
    r"other than|otherwise)\b"
)
_CONNECTOR = re.compile(r",|\band\b|\bwith\b|\bor\b|\bplus\b|\bwithout\b|\bnor\b|;")
_HEADER = re.compile(
    r"^\s*(?:(?:findings|impression|conclusions?|comparison|interpretation|summary|history|"
    r"indication|technique|changes?(?: of findings)?|report)\s*:\s*)+",
    re.IGNORECASE,
)
_LIST_NUMBER = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+")
# Gaps that keep a coordinated list going ("no pneumothorax, effusion, or consolidation").
_LIST_GAP = re.compile(
    r"^[\s,]*(?:(?:,|or|and|nor|and/or|/|as well as|either|with)[\s,]*)+"
    r"(?:(?:the|a|an|any|focal|definite|significant|sizable|sizeable|large|pleural|new|acute|"
    r"appreciable|evident|adjacent|associated|overlying|underlying|compressive|subjacent|"
    r"left|right|bilateral|lower|"
    r"upper|middle|lobe|lung|base|basilar|lingular|retrocardiac|pulmonary|other)\s+)*$"
)
_SEVERITY_IN_GAP = re.compile(_SEVERITY_RE.pattern)
# What a bare opacity can be said to represent ("opacity, likely atelectasis").
_REPRESENTS = re.compile(
    r"(?:most |more )?likely|probabl[ey]|possibl[ey]|(?:may|might|could) (?:represent|reflect|be)|"
    r"consistent with|compatible with|suggestive of|suspicious for|concerning for|worrisome for|"
    r"represent(?:s|ing)?|reflect(?:s|ing)?|due to|favou?r(?:ed|s|ing)?|in keeping with|"
    r"suggesting|which|versus|vs\.?|either|(?:atelectasis|consolidation) (?:or|and/or)"
)
_CARDIAC_NORMAL = re.compile(
    r"\bnormal\b|within normal limits|\bnot enlarged\b|\bunremarkable\b|upper limits? of normal|"
    r"top[- ]normal|\bnormal in size\b|\bnot (?:significantly )?(?:enlarged|increased)\b"
)
_CARDIAC_ENLARGED = re.compile(
    r"\benlarge(?:d|ment)\b|\bcardiomegaly\b|\bprominent\b|\blarge\b|\bincreased in size\b"
)


def _compile(patterns):
    return [(re.compile(r"(?<![\w-])(?:" + p + r")(?![\w-])"), *rest) for p, *rest in patterns]


_MENTION_RES = _compile(_MENTIONS)
# "?" is not a word character, so it is matched without the word-boundary guards.
_TRIGGER_RES = _compile(_TRIGGERS) + [(re.compile(r"\?"), "unc", "both")]
_LOCATION_RES = [(re.compile(r"\b(?:" + p + r")\b"), side, zone) for p, side, zone in _LOCATIONS]
_WORD = re.compile(r"[\w-]+|\?")


@dataclass
class _Mention:
    start: int
    end: int
    finding: str
    kind: str
    text: str = ""
    neg: str | None = None  # "direct" / "list"
    unc: str | None = None
    directions: list = field(default_factory=list)  # (category, "direct"/"list", form)
    location: str | None = None
    severity_words: tuple[str, ...] = ()
    severity_before: str | None = None
    severity_after: str | None = None
    per_side: dict | None = None  # {"left": word, "right": word} for "small left and large right"
    dropped: bool = False


@dataclass
class _Trigger:
    start: int
    end: int
    category: str
    form: str


# ----------------------------------------------------------------------------------------------
def split_sentences(text: str) -> list[str]:
    """Sentences of a report, with headers and list numbers removed."""
    text = unicodedata.normalize("NFKC", text)
    out = []
    for line in re.split(r"[\r\n]+", text):
        line = _LIST_NUMBER.sub("", _HEADER.sub("", line.strip()))
        # a period ends a sentence unless it sits inside a number ("1.5 cm")
        for piece in re.split(r"(?<=[.!?])\s+|(?<=[a-z\)])\.(?=[A-Z])", line):
            piece = _LIST_NUMBER.sub("", _HEADER.sub("", piece.strip()))
            if re.search(r"[^\W\d_]", piece):  # a letter, not a lone list number
                out.append(piece.strip())
    return out


def label_report(text: str) -> list[LabeledFinding]:
    """All findings stated in a report or interpretation, in text order.

    The same finding stated twice with the same place and direction is kept once. Text with no
    recognisable finding (empty, another language) gives an empty list. Raises TypeError for a
    non-string.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise TypeError(f"a report must be a string, got {type(text).__name__}")
    seen = set()
    out = []
    for sentence in split_sentences(text):
        for f in label_sentence(sentence):
            key = (f.finding, f.location, f.direction, f.certainty)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def label_sentence(sentence: str) -> list[LabeledFinding]:
    """The findings one sentence states (see the module docstring for the rules)."""
    original = sentence.strip()
    text = unicodedata.normalize("NFKC", original).lower()
    text = re.sub(r"[\u2010-\u2015]", "-", text)
    text = re.sub(r"\s+", " ", text)
    results: list[LabeledFinding] = []
    pos = 0
    for m in _CLAUSE_BREAK.finditer(text):
        results.extend(_label_clause(text[pos : m.start()], original))
        pos = m.end()
    results.extend(_label_clause(text[pos:], original))
    return results


# ----------------------------------------------------------------------------------------------
def _find_spans(regexes, text):
    """Non-overlapping matches, longer first, then earlier."""
    found = []
    for item in regexes:
        regex, *rest = item
        for m in regex.finditer(text):
            if m.end() > m.start():
                found.append((m.start(), m.end(), *rest))
    found.sort(key=lambda t: (-(t[1] - t[0]), t[0]))
    taken: list[tuple] = []
    used = bytearray(len(text))  # characters already covered by an accepted match
    for cand in found:
        if not any(used[cand[0] : cand[1]]):
            used[cand[0] : cand[1]] = b"\x01" * (cand[1] - cand[0])
            taken.append(cand)
    taken.sort(key=lambda t: t[0])
    return taken


def _words(text: str) -> int:
    """Words in a gap; counted on its first 400 characters only, since every rule asks about a
    handful of words and degenerate generated text can hold very long clauses."""
    return len(_WORD.findall(text[:400]))


def _label_clause(clause: str, sentence: str) -> list[LabeledFinding]:
    mentions = [
        _Mention(s, e, finding, kind, clause[s:e])
        for s, e, finding, kind in _find_spans(_MENTION_RES, clause)
        if kind != "ignore"
    ]
    if not mentions:
        return []
    spans = [(m.start, m.end) for m in mentions]
    triggers = [
        _Trigger(s, e, cat, form)
        for s, e, cat, form in _find_spans(_TRIGGER_RES, clause)
        if all(e <= ms or s >= me for ms, me in spans)
    ]
    _attach(mentions, triggers, clause)
    _spread_over_lists(mentions, triggers, clause)
    for i, m in enumerate(mentions):
        _read_place_and_severity(m, i, mentions, clause, triggers)
    _resolve_signs(mentions, clause)
    _share_locations(mentions, clause)
    out = []
    for m in mentions:
        if m.dropped:
            continue
        finding = _finish(m, clause)
        if finding is not None and m.per_side and finding[1] != "absent":
            for side in ("left", "right"):
                sev = m.per_side[side]
                out.append(
                    LabeledFinding(
                        finding=m.finding,
                        location=side,
                        direction=finding[1],
                        certainty=finding[2],
                        severity_words=(sev,) if sev else (),
                        severity_after=sev,
                        sentence=sentence,
                    )
                )
        elif finding is not None:
            out.append(
                LabeledFinding(
                    finding=m.finding,
                    location=finding[0],
                    direction=finding[1],
                    certainty=finding[2],
                    severity_words=m.severity_words,
                    severity_before=m.severity_before,
                    severity_after=m.severity_after,
                    sentence=sentence,
                )
            )
    return out


def _attach(mentions: list[_Mention], triggers: list[_Trigger], clause: str) -> None:
    for t in triggers:
        nxt = next((m for m in mentions if m.start >= t.end), None)
        prv = next((m for m in reversed(mentions) if m.end <= t.start), None)
        gap_next = clause[t.end : nxt.start] if nxt else ""
        gap_prev = clause[prv.end : t.start] if prv else ""
        close_next = nxt is not None and _words(gap_next) <= 6 and not _CONNECTOR.search(gap_next)
        close_prev = prv is not None and _words(gap_prev) <= 10
        targets: list[_Mention] = []
        if t.form == "bi":
            targets = [m for m in (prv, nxt) if m is not None]
        elif t.form == "pre":
            if nxt is not None and _words(gap_next) <= 6:
                targets = [nxt]
        elif t.form == "post":
            if close_prev:
                targets = [prv]
        else:  # both
            if close_next and _words(gap_next) <= 5:
                targets = [nxt]
            elif close_prev:
                targets = [prv]
            elif nxt is not None and _words(gap_next) <= 6:
                targets = [nxt]
        for m in targets:
            _mark(m, t.category, "direct", t.form)


def _mark(m: _Mention, category: str, how: str, form: str) -> None:
    if category == "neg":
        m.neg = m.neg or how
    elif category == "unc":
        m.unc = m.unc or how
    else:
        m.directions.append((category, how, form))


def _spread_over_lists(mentions: list[_Mention], triggers: list[_Trigger], clause: str) -> None:
    """Carry negation, uncertainty and direction along a coordinated list of findings."""
    for forward in (True, False):
        order = range(len(mentions) - 1) if forward else range(len(mentions) - 1, 0, -1)
        for i in order:
            src = mentions[i]
            dst = mentions[i + 1] if forward else mentions[i - 1]
            lo, hi = (src.end, dst.start) if forward else (dst.end, src.start)
            gap = clause[lo:hi]
            if not _LIST_GAP.match(gap) or any(lo <= t.start < hi for t in triggers):
                continue
            want = "pre" if forward else "post"
            has_severity = bool(_SEVERITY_IN_GAP.search(gap))
            if forward and src.neg and not dst.neg:
                dst.neg = "list"
            if src.unc and not dst.unc and not has_severity:
                dst.unc = "list"
            carried = [(c, "list", f) for c, how, f in src.directions if f in (want, "both")]
            if carried and not dst.directions and not has_severity:
                dst.directions.extend(carried)


_PHRASE_CHARS = 120
_PAIRED_SIDE = re.compile(r"(?:\b[\w-]+\s+)?\b(?:right|left)(?:-sided)?\s*(?:,|and|or)\s*$")


def _phrase_bounds(i: int, mentions: list[_Mention], clause: str) -> tuple[int, int, int]:
    """(start of the words before mention i, end of the words after it, end before next one)."""
    m = mentions[i]
    lo = mentions[i - 1].end if i > 0 else 0
    before = clause[lo : m.start]
    cuts = list(_CONNECTOR.finditer(before))
    pre_start = lo + cuts[-1].end() if cuts else lo
    # "moderate right and small left effusions": both sides belong to the one mention
    paired = _PAIRED_SIDE.search(clause[lo:pre_start])
    if paired:
        pre_start = lo + paired.start()
    hi = mentions[i + 1].start if i + 1 < len(mentions) else len(clause)
    after = clause[m.end : hi]
    cut = _CONNECTOR.search(after)
    post_end = m.end + cut.start() if cut else hi
    # a finding's own phrase is short; the bound keeps degenerate text linear
    return max(pre_start, m.start - _PHRASE_CHARS), min(post_end, m.end + _PHRASE_CHARS), hi


def _read_place_and_severity(
    m: _Mention, i: int, mentions: list[_Mention], clause: str, triggers: list[_Trigger]
) -> None:
    pre_start, post_end, hi = _phrase_bounds(i, mentions, clause)
    phrase = clause[pre_start:post_end]
    m.location = _location_of(phrase)
    spec = FINDINGS[m.finding]
    words = []
    for w in _SEVERITY_RE.finditer(phrase):
        # an adverb that is part of a change phrase ("slightly increased", "slight interval
        # decrease") is no severity
        at = pre_start + w.start()
        if any(t.start <= at < t.end for t in triggers):
            continue
        if re.match(r"\s*(?:increased|decreased|improved|worse|larger|smaller)", phrase[w.end() :]):
            continue
        words.append(spec.severity_words[_SEVERITY_LEVEL[w.group(1)] - 1])
    m.severity_words = tuple(words)
    tail = clause[m.end : hi]
    ft = _FROM_TO.search(tail)
    if ft:
        m.severity_before = _scale(spec, ft.group(1))
        m.severity_after = _scale(spec, ft.group(2))
    else:
        before = _BEFORE.search(tail)
        now = _NOW.search(tail)
        if before:
            m.severity_before = _scale(spec, before.group(1))
        if now:
            m.severity_after = _scale(spec, now.group(1))
        else:
            rest = [w for w in words if not before or w != m.severity_before]
            if rest:
                m.severity_after = rest[-1]
    if m.severity_before or m.severity_after:
        extra = [w for w in (m.severity_before, m.severity_after) if w and w not in words]
        m.severity_words = tuple(words + extra)
    if set(spec.locations) <= {"left", "right"}:
        pairs = {side: sev for sev, side in _SIDE_SEVERITY.findall(phrase)}
        if set(pairs) == {"left", "right"} and any(pairs.values()):
            m.per_side = {side: _scale(spec, sev) if sev else None for side, sev in pairs.items()}


_SIDE_SEVERITY = re.compile(rf"(?:\b{_SEV}\s+)?\b(right|left)\b")


def _scale(spec, word: str) -> str:
    return spec.severity_words[_SEVERITY_LEVEL[word] - 1]


def _location_of(phrase: str) -> str | None:
    sides: set[str] = set()
    zones: list[str] = []
    for side, zone in _location_hits(phrase):
        sides.add(side)
        if zone:
            zones.append(zone)
    if not sides:
        return None
    if "both" in sides or {"left", "right"} <= sides:
        return "bilateral"
    side = next(iter(sides))
    if zones:
        zone = zones[0]
        key = "lingula" if zone == "lingula" else f"{side}_{zone}_lobe"
        if key in LOCATION_TEXT:
            return key
    return side


def _location_hits(phrase: str) -> list[tuple[str, str | None]]:
    hits = []
    taken: list[tuple[int, int]] = []
    for regex, side, zone in _LOCATION_RES:
        for m in regex.finditer(phrase):
            if any(not (m.end() <= a or m.start() >= b) for a, b in taken):
                continue
            taken.append((m.start(), m.end()))
            groups = [g for g in m.groups() if g]
            if groups and groups[0] in _LOBE_ABBREV:
                hits.append(_LOBE_ABBREV[groups[0]])
                continue
            hit_side = side or (groups[0] if groups else None)
            hit_zone = zone or (groups[1] if len(groups) > 1 else None)
            if hit_side:
                hits.append((hit_side, hit_zone))
    return hits


_HEDGED_LINK = re.compile(
    r"likely|possibl|probabl|may|might|could|suspicious|concern|worrisome|suggest|question|"
    r"versus|vs|either|favou?r"
)


def _resolve_signs(mentions: list[_Mention], clause: str) -> None:
    """A sign said to represent a finding ("opacity, likely atelectasis") is that finding, and a
    finding restated as its cause ("consolidation concerning for pneumonia") is stated once."""
    for i, m in enumerate(mentions):
        if m.dropped or i + 1 >= len(mentions):
            continue
        nxt = mentions[i + 1]
        gap = clause[m.end : nxt.start]
        if not _REPRESENTS.search(gap) or _words(gap) > 10:
            continue
        if m.kind == "specific" and nxt.finding == m.finding:
            nxt.dropped = True
            m.location = m.location or nxt.location
            continue
        if m.kind != "sign" or nxt.kind != "specific":
            continue
        m.dropped = True
        hedged = bool(m.unc or _HEDGED_LINK.search(gap))
        # the sign's place, direction, severity and hedging carry over to what it represents,
        # and to the alternatives listed with it ("may represent atelectasis or pneumonia")
        prev = nxt
        for other in mentions[i + 1 :]:
            if other.kind != "specific" or (
                other is not nxt and not _LIST_GAP.match(clause[prev.end : other.start])
            ):
                break
            other.location = other.location or m.location
            if not other.directions:
                other.directions = list(m.directions)
            if hedged:
                other.unc = other.unc or "direct"
            if not other.severity_words and m.severity_words:
                scale = FINDINGS[other.finding].severity_words
                levels = [FINDINGS[m.finding].severity_words.index(w) for w in m.severity_words]
                other.severity_words = tuple(scale[k] for k in levels)
                other.severity_after = other.severity_after or other.severity_words[-1]
            prev = other


_ADJACENT = re.compile(r"\b(?:adjacent|associated|compressive|underlying|subjacent|overlying)\b")


def _share_locations(mentions: list[_Mention], clause: str) -> None:
    """A finding with no stated place coordinated with one that has it shares that place."""
    live = [m for m in mentions if not m.dropped]
    for a, b in zip(live, live[1:], strict=False):
        gap = clause[a.end : b.start]
        if _words(gap) > 6 or not re.search(
            r",|\b(?:and|with|or|versus|vs)\b|adjacent|associated", gap
        ):
            continue
        if re.search(r"\b(?:no|without|new|increased|decreased)\b", gap) and not (a.neg and b.neg):
            continue
        if b.location is None and a.location and b.finding != "cardiomegaly":
            b.location = a.location
            # atelectasis next to an effusion lies in the lower lobe on that side
            lobar = "lingula" in FINDINGS[b.finding].locations
            lobar = lobar or "right_lower_lobe" in FINDINGS[b.finding].locations
            if (
                lobar
                and a.finding == "pleural_effusion"
                and a.location in ("left", "right")
                and _ADJACENT.search(gap)
            ):
                b.location = f"{a.location}_lower_lobe"
        elif a.location is None and b.location and a.finding != "cardiomegaly":
            a.location = b.location


_DIRECTION_PRIORITY = ("resolved", "better", "worse", "new", "stable")


def _finish(m: _Mention, clause: str) -> tuple[str | None, str | None, str] | None:
    """(location, direction, certainty) of a mention, or None when it is no statement."""
    spec = FINDINGS[m.finding]
    cats = {c for c, how, form in m.directions}
    direct = {c for c, how, form in m.directions if how == "direct"}
    pool = direct or cats
    direction = next((d for d in _DIRECTION_PRIORITY if d in pool), None)
    if m.kind == "cardiac":
        lo = max((0,) + tuple(x.end() for x in _CONNECTOR.finditer(clause[: m.start])))
        nxt = _CONNECTOR.search(clause, m.end)
        region = clause[lo : nxt.start() if nxt else len(clause)]
        if _CARDIAC_NORMAL.search(region):
            return (None, "absent", "definite")
        if not _CARDIAC_ENLARGED.search(region) and direction not in ("worse", "better", "new"):
            return None
        if not m.severity_words:
            adv = re.search(r"\b(mildly|moderately|severely|markedly|slightly)\s+enlarged", region)
            if adv:
                m.severity_words = (spec.severity_words[_SEVERITY_LEVEL[adv.group(1)] - 1],)
                m.severity_after = m.severity_words[0]
    if m.neg and direction != "resolved":
        direction = "absent"
    if direction is None and m.severity_before and m.severity_after:
        before = spec.severity_words.index(m.severity_before) + 1
        after = spec.severity_words.index(m.severity_after) + 1
        if before != after:
            direction = "worse" if after > before else "better"
    certainty = "uncertain" if m.unc and direction != "absent" else "definite"
    return (_normalise_location(m, spec), direction, certainty)


def _normalise_location(m: _Mention, spec) -> str | None:
    allowed = set(spec.locations)
    if allowed == {None}:
        return None
    loc = m.location
    if len(allowed) == 1 and loc in (None, "bilateral"):
        return next(iter(allowed))  # pulmonary edema: always both lungs
    if allowed <= {"left", "right"}:
        if loc is None:
            plural = re.search(r"(?:effusions|pneumothoraces)$", m.text)
            return "bilateral" if plural else None
        return laterality(loc)
    return loc
