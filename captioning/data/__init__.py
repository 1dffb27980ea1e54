"""Datasets in the COCO captioning layout. Imports point one way, down this list:

    images        image_from_url: a dataset image as an array (for notebooks)
    default       the folder used when none is given ($CAPTION_DATA or the built-in set)
    shapes        the built-in dataset          annotations   raw captions -> the layout
    writer        writes a folder in the layout
    reader        reads and checks a folder     vocab         text <-> word indices
    pca           chunked PCA of feature files      features      other feature files
    layout        file names, splits, special tokens, the word-index rule

This file imports none of them, so each module can be imported on its own.
"""
