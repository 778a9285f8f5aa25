"""evals/amber_words.py's lemmas against NLTK's WordNetLemmatizer on AMBER's vocabulary: every vocabulary word, its
regular plural(s) and WordNet's irregular plurals of it. Needs nltk and WordNet 3.0 (NLTK's data, or Debian's
wordnet-base + wordnet-sense-index laid out as nltk_data/corpora/wordnet with a lexnames file); no project runtime
dependency. Prints the forms where the two disagree.

    NLTK_DATA=DIR python bench/amber_lemmas.py AMBER/data/relation.json
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nltk.corpus import wordnet  # noqa: E402
from nltk.stem import WordNetLemmatizer  # noqa: E402

from evals.amber_words import lemma  # noqa: E402

rel = json.load(open(sys.argv[1]))
vocab = set(rel) | {w for ws in rel.values() for w in ws}
forms = set(vocab)
for w in vocab:
    forms.add(w + "es" if w.endswith(("s", "x", "z", "ch", "sh")) else
              w[:-1] + "ies" if w.endswith("y") and w[-2:-1] not in "aeiou" else w + "s")
    forms.update({w[:-1] + "ves"} if w.endswith("f") else set())
    forms.update({w[:-2] + "ves"} if w.endswith("fe") else set())
    forms.update({w[:-3] + "men"} if w.endswith("man") else set())
with open(os.path.join(wordnet.root.path, "noun.exc")) as f:
    for line in f:
        infl, *lemmas = line.split()
        if any(x in vocab for x in lemmas):
            forms.add(infl)
lem = WordNetLemmatizer()
diff = [(f, lem.lemmatize(f), lemma(f, vocab)) for f in sorted(forms)
        if (lem.lemmatize(f) if lem.lemmatize(f) in vocab else None) != lemma(f, vocab)]
print(f"{len(forms)} forms, {len(diff)} disagree (WordNet {wordnet.get_version()})")
for d in diff:
    print("  %s: nltk %s, builtin %s" % d)
