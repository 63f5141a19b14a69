"""The tests' tiny random Llama (nmx.model.tiny: a transformers config and a character tokenizer built in
place, the real model code paths in milliseconds, no download) and a text to run it on."""

from nmx.model.tiny import char_tokenizer, tiny_llama  # noqa: F401  (imported from here by the tests)

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
) * 40
