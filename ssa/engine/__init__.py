"""The open-vocabulary engine (`ssa engine`): free-form names for every mask, from close-set
OneFormer votes, BLIP captions, CLIP ranking and CLIPSeg, each stage batched over an image's
masks. See `labeller.py` for the per-image flow and `runner.py` for the folder loop."""
