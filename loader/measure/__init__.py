"""Measuring inputs: digests of files and trees, OCI images, hashing progress.

The lowest wing of the loader: used by the boot (staging), the verifier (replay) and the parties
(dataset digests). It imports nothing of the loader but `loader.errors`.
"""
