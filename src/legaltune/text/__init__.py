"""Vietnamese legal text on its own: tone marks and legacy encodings, syllables, citations of laws.

The ground floor of everything that reads or scores Vietnamese text (data preparation, the law
corpus, evaluation, rewards); it imports nothing else of legaltune."""
