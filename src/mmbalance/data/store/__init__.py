"""The feature store: every clip decoded once (`features`), and the frozen
encoders' embeddings of the Conformer backbone (`embeddings`)."""
