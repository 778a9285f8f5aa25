"""AMBER's built-in noun matcher: the official scorer's noun extraction (NLTK word_tokenize -> pos_tag -> NN* ->
WordNetLemmatizer) re-done without NLTK or its data, for AMBER's closed vocabulary only (relation.json's 418 words:
a noun outside it is dropped by the official scorer anyway). Used by evals/amber.py when the official path is not
installed; its similarity is equality (the official one is spaCy en_core_web_lg cosine > 0.8).

  tokens    NLTK's word_tokenize cuts (`tokenize`): at spaces, punctuation, quotes and a sentence's final period; not at
            a hyphen, a slash or an inner period ("e-book", "sky/grass", "dog.The" stay whole); a possessive "'s" is
            split off; case is kept (the official match is case-sensitive: "Dog" at a sentence start is not "dog").
  lemmas    a word of the vocabulary is itself; a regular plural (-s, -es, -oes, -ies, -ves, -men) of a
            vocabulary word is that word; EXCEPTIONS override both. EXCEPTIONS holds every form, among the vocabulary
            words and their plurals and WordNet's irregular plurals of them, where WordNetLemmatizer (NLTK 3.10.3,
            WordNet 3.0) says otherwise: it turns "men" into "men" and "leaves" into "leaf" (neither is in the
            vocabulary), "sunglasses" into "sunglass", "vases" into "vas", and leaves the plural of a word WordNet
            does not know ("cooktops") as it is. With it, the lemmas agree with NLTK's on 850 of 855 such forms, the
            other 5 being non-words built by the plural rules ("girafves"): bench/amber_lemmas.py checks it.
  nouns     every vocabulary lemma counts as a noun except where a tagger would not tag it NN*: "can" unless a
            determiner or number comes before it (else the modal), "hot" (an adjective: "hot dog"), and a word
            right after "to", a modal, or a subject pronoun ("to watch", "they ring"): verbs.
The tagging rules are the approximate part: NLTK's averaged-perceptron tagger is not on any package registry, so
they cannot be checked against it here (docs/amber.md lists the cases).
"""
from __future__ import annotations

import re

DESCRIPTION = "builtin: evals/amber_words.py nouns (WordNet lemmas exact on the vocabulary, approximate tags), " \
              "similarity = equality (official: spaCy en_core_web_lg > 0.8); not comparable with published numbers"

# WordNetLemmatizer (NLTK 3.10.3, WordNet 3.0) where the plural rules below say otherwise; None = no vocabulary word
EXCEPTIONS: dict[str, str | None] = {
    "men": None, "leaves": None, "vases": None, "caves": None, "TVs": None,
    "sunglasses": None, "earrings": None, "slippers": None, "chopsticks": None,
    "children": "child", "geese": "goose", "mice": "mouse", "busses": "bus", "camerae": "camera", "tapes": "tape",
    # plurals of words WordNet does not know stay as they are, so they never reach the vocabulary
    "air-conditionings": None, "baconics": None, "bedsheets": None, "canns": None, "catholes": None,
    "closestools": None, "cooktops": None, "dogholes": None, "e-books": None, "ebooks": None, "earings": None,
    "electrombiles": None, "kiwifruits": None, "paragliders": None, "pissoirs": None, "rpoes": None,
    "sanitizers": None, "scoons": None, "seegulls": None, "showerpuffs": None, "streetlamps": None,
    "waterfonts": None, "hots": None,
}
PLURALS = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("men", "man"), ("oes", "o"), ("ches", "ch"), ("shes", "sh"),
           ("ses", "s"), ("xes", "x"), ("zes", "z"), ("s", ""))
DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "one", "two", "three", "four", "five", "some",
               "each", "every", "his", "her", "its", "their", "our", "my", "your", "another", "any", "no", "A", "An",
               "The", "This", "That", "One", "Two", "Some", "Each", "Every", "His", "Her", "Its", "Their"}
VERB_CONTEXT = {"to", "can", "could", "will", "would", "may", "might", "must", "should", "shall", "I", "you", "we",
                "they", "he", "she", "You", "We", "They", "He", "She"}
NEVER_NOUNS = {"hot"}
# Where NLTK's word_tokenize (Punkt sentences, then its Treebank rules) cuts a text: whitespace; , and : unless a digit
# follows; ; @ # $ % & ? ! * and brackets; quotes (straight, curly, guillemets, backticks); -- and dashes; runs of
# periods; and a period that ends a sentence (followed by closing quotes or brackets at most, then a space or the end).
_CUT = re.compile(r"""\s+|[:,](?!\d)|[;@#$%&?!*()\[\]{}<>"`\u00ab\u00bb\u201c\u201d\u2018\u2019\u201e\u2012-\u2015]"""
                  r"""|--|\.{2,}|\.(?=[\]\)}>"'\u00bb\u201d\u2019]*(?:\s|$))""")
_OPENING_QUOTE = re.compile(r"^'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", re.I)  # 'dog -> dog; 's stays whole
_CLITIC = re.compile(r"(?:'[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T|')$")  # dog's -> dog ('s a token of its own)


def tokenize(text: str) -> list[str]:
    """Word tokens as NLTK's word_tokenize cuts them (_CUT), with the pieces it splits off a word (punctuation, a
    clitic such as 's or n't) dropped: they are never a noun of the vocabulary. A period inside a token stays
    ("dog.The"), as does a hyphen or a slash ("e-book", "sky/grass"), as in NLTK."""
    out = []
    for t in _CUT.split(text):
        t = _CLITIC.sub("", _OPENING_QUOTE.sub("", t)) if "'" in t else t
        if t:
            out.append(t)
    return out


def lemma(token: str, vocabulary: set[str]) -> str | None:
    """The vocabulary word WordNetLemmatizer would turn `token` into, or None."""
    if token in EXCEPTIONS:
        return EXCEPTIONS[token]
    if token in vocabulary:
        return token
    for suffix, repl in PLURALS:
        if token.endswith(suffix) and token[:-len(suffix)] + repl in vocabulary:
            return token[:-len(suffix)] + repl
    return None


def is_noun(toks: list[str], i: int, vocabulary: set[str]) -> bool:
    """The built-in tagger: False where NLTK's tagger would not tag toks[i] NN* (module docstring), else True.
    bench/eval_parity.py gives the official script this rule in place of the tagger's model."""
    t = toks[i]
    w = lemma(t, vocabulary)
    if w in NEVER_NOUNS:
        return False
    prev = toks[i - 1] if i else ""
    if w == "can" and t == "can" and prev not in DETERMINERS:
        return False  # the modal: "can be seen"
    if prev in VERB_CONTEXT and t == w and w != "can":
        return False  # "to watch", "they ring": a verb
    return True


def noun_finder(vocabulary: set[str]):
    """nouns(text) -> the vocabulary lemmas that count as nouns, in order, repeats kept."""
    def nouns(text: str) -> list[str]:
        toks = tokenize(text)
        return [w for i, t in enumerate(toks)
                if (w := lemma(t, vocabulary)) is not None and is_noun(toks, i, vocabulary)]
    return nouns
