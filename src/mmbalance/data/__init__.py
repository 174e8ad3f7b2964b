"""From raw media to the arrays a training job reads.

    registry.py   the dataset keys of the config, one line each
    datasets/     one module per dataset: its download, split files and checks
    fetching/     HTTP downloads (resume, mirrors, checksums) and archive extraction
    catalog.py    the one form every dataset's clips, labels and folds take, and the
                  checks they share (split sizes, missing clips, validation carving)
    media.py      decoding audio and video with PyAV, spectrograms with torchaudio
    recipes.py    the preprocessing presets of the papers' loaders
    store/        the feature store (decoded once per dataset) and frozen embeddings
    synthetic.py  the generator of the embedded default dataset
"""
