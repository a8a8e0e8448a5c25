"""Labelling a dataset: the rank loop with resume (`runner`), the one per-image path (`labeller`),
reading and writing overlapped with compute (`prefetch`), the output layout and documents
(`outputs`), the glibc heap setting (`heap`) and the promptable predictor (`predictor`)."""
