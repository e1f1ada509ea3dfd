"""Data augmentation: EDA word operations with a corpus-built synonym list (:mod:`.eda`), LM sampling
(:mod:`.lm`), consistency/confidence filters (:mod:`.filters`) and the ``augment`` corpus step (:mod:`.steps`)."""
